//! A small YAML tree that remembers where each node was written, built from saphyr-parser's
//! events. Policy files are validated against it by hand (`load.rs`) rather than deserialised
//! with serde, because serde stops at the first mistake and we want every mistake of every file,
//! each with its line and column.
//!
//! Scalars keep their text and whether they were quoted; their type is resolved with the YAML
//! 1.2 core schema (so `yes` is a string, as it is to saphyr, and `"true"` is never a boolean).
//! Duplicate keys are reported here, with both positions. Aliases are expanded within a node
//! budget (a "billion laughs" file must not exhaust the agent), and nesting is bounded, since
//! policy files are read by the agent itself on reload.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Nodes an alias may expand to, per file (far above any real policy file).
const MAX_EXPANDED: usize = 100_000;
/// Collections nested deeper than this are refused (the format needs six levels).
const MAX_DEPTH: usize = 64;

/// A position in a file: line and column, both 1-based (as editors count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    fn of(span: Span) -> Pos {
        // saphyr counts lines from 1 and columns (in characters) from 0.
        Pos { line: span.start.line() as u32, column: span.start.col() as u32 + 1 }
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A scalar's type under the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarType {
    Null,
    Bool(bool),
    Int,
    Float,
    Str,
}

/// A node and where it starts.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Scalar {
        text: String,
        kind: ScalarType,
    },
    Seq(Vec<Node>),
    /// Keys in the order written; duplicates were dropped (and reported).
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// What the node is, for "expected X, found Y".
    pub fn describe(&self) -> &'static str {
        match &self.value {
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Scalar { kind, .. } => match kind {
                ScalarType::Null => "nothing (null)",
                ScalarType::Bool(_) => "a boolean",
                ScalarType::Int => "an integer",
                ScalarType::Float => "a number",
                ScalarType::Str => "a string",
            },
        }
    }

    /// The text of a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, kind: ScalarType::Str } => Some(text),
            _ => None,
        }
    }

    /// Whether this is the null scalar (an empty document, `key:` with nothing after it).
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Scalar { kind: ScalarType::Null, .. })
    }

    /// The source text of any scalar (for messages about a number given where a string was
    /// expected).
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    fn size(&self) -> usize {
        match &self.value {
            Value::Scalar { .. } => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Value::Map(pairs) => 1 + pairs.iter().map(|(k, v)| k.size() + v.size()).sum::<usize>(),
        }
    }
}

/// The core schema's resolution of a plain (unquoted, untagged) scalar.
fn resolve_plain(text: &str) -> ScalarType {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return ScalarType::Null,
        "true" | "True" | "TRUE" => return ScalarType::Bool(true),
        "false" | "False" | "FALSE" => return ScalarType::Bool(false),
        ".nan" | ".NaN" | ".NAN" => return ScalarType::Float,
        _ => {}
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if digits(unsigned, 10)
        || text.strip_prefix("0o").is_some_and(|s| digits(s, 8))
        || text.strip_prefix("0x").is_some_and(|s| digits(s, 16))
    {
        return ScalarType::Int;
    }
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") {
        return ScalarType::Float;
    }
    // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((whole, frac)) => {
            (whole.is_empty() && digits(frac, 10)) || (digits(whole, 10) && (frac.is_empty() || digits(frac, 10)))
        }
        None => digits(mantissa, 10),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e), 10));
    if mantissa_ok && exponent_ok { ScalarType::Float } else { ScalarType::Str }
}

/// A collection being built.
enum Frame {
    Seq { pos: Pos, anchor: usize, items: Vec<Node> },
    Map { pos: Pos, anchor: usize, pairs: Vec<(Node, Node)>, key: Option<Node> },
}

/// The documents of a file that parsed completely, and the problems found (position, message).
/// A syntax error ends the file (the rest of the stream cannot be trusted), but documents
/// before it are returned, so their mistakes are reported too.
pub(crate) fn parse_documents(text: &str) -> (Vec<Node>, Vec<(Pos, String)>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut expanded = 0usize;
    // The document being built: complete when its root node is.
    let mut root: Option<Node> = None;
    for event in Parser::new_from_str(text) {
        let (event, span) = match event {
            Ok(e) => e,
            Err(e) => {
                let m = e.marker();
                let pos = Pos { line: m.line() as u32, column: m.col() as u32 + 1 };
                errors.push((pos, format!("YAML syntax: {}", e.info())));
                return (docs, errors);
            }
        };
        let pos = Pos::of(span);
        let complete = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => continue,
            Event::DocumentStart(_) => {
                // Anchors are scoped to their document.
                anchors.clear();
                continue;
            }
            Event::DocumentEnd => {
                if let Some(node) = root.take() {
                    docs.push(node);
                }
                continue;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let kind = match (&tag, style) {
                    (Some(tag), _) if tag.is_yaml_core_schema() && tag.suffix == "str" => ScalarType::Str,
                    (Some(tag), _) => {
                        errors.push((pos, format!("YAML tag {tag} is not supported here; remove it")));
                        ScalarType::Str
                    }
                    (None, ScalarStyle::Plain) => resolve_plain(&text),
                    (None, _) => ScalarType::Str,
                };
                let node = Node { pos, value: Value::Scalar { text: text.into_owned(), kind } };
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::Alias(id) => {
                let Some(node) = anchors.get(&id) else {
                    errors.push((pos, "alias of an unknown anchor".into()));
                    return (docs, errors);
                };
                expanded += node.size();
                if expanded > MAX_EXPANDED {
                    errors.push((pos, format!("aliases expand to more than {MAX_EXPANDED} nodes")));
                    return (docs, errors);
                }
                node.clone()
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                if let Some(tag) = tag {
                    errors.push((pos, format!("YAML tag {tag} is not supported here; remove it")));
                }
                if stack.len() >= MAX_DEPTH {
                    errors.push((pos, format!("nested more than {MAX_DEPTH} levels deep")));
                    return (docs, errors);
                }
                let is_seq = matches!(event, Event::SequenceStart(..));
                stack.push(if is_seq {
                    Frame::Seq { pos, anchor, items: Vec::new() }
                } else {
                    Frame::Map { pos, anchor, pairs: Vec::new(), key: None }
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq { pos, anchor, items }) => (Node { pos, value: Value::Seq(items) }, anchor),
                    Some(Frame::Map { pos, anchor, pairs, .. }) => (Node { pos, value: Value::Map(pairs) }, anchor),
                    // The parser pairs starts and ends; nothing to close is its bug, not the file's.
                    None => continue,
                };
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
        };
        match stack.last_mut() {
            None => root = Some(complete),
            Some(Frame::Seq { items, .. }) => items.push(complete),
            Some(Frame::Map { pairs, key, .. }) => match key.take() {
                None => *key = Some(complete),
                Some(k) => {
                    let first = match &k.value {
                        Value::Scalar { text, .. } => pairs
                            .iter()
                            .find(|(other, _)| matches!(&other.value, Value::Scalar { text: t, .. } if t == text))
                            .map(|(other, _)| other.pos),
                        _ => None,
                    };
                    match first {
                        Some(first) => errors.push((
                            k.pos,
                            format!(
                                "duplicate key `{}` (first at line {}); a key may appear once in a mapping",
                                k.scalar_text().unwrap_or_default(),
                                first.line
                            ),
                        )),
                        None => {
                            let mut value = complete;
                            // `key:` with nothing after it: point at the key, not past it.
                            if matches!(&value.value, Value::Scalar { text, kind: ScalarType::Null } if text.is_empty())
                            {
                                value.pos = k.pos;
                            }
                            pairs.push((k, value));
                        }
                    }
                }
            },
        }
    }
    (docs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let (mut docs, errors) = parse_documents(text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.remove(0)
    }

    #[test]
    fn positions_are_one_based() {
        let doc = one("# comment\na: 1\nb:\n  - x\n  - 'y'\n");
        let Value::Map(pairs) = &doc.value else { panic!("a mapping: {doc:?}") };
        assert_eq!(pairs[0].0.pos, Pos { line: 2, column: 1 });
        assert_eq!(pairs[0].1.pos, Pos { line: 2, column: 4 });
        let Value::Seq(items) = &pairs[1].1.value else { panic!("a list") };
        assert_eq!(items[1].pos, Pos { line: 5, column: 5 });
        assert_eq!(items[1].as_str(), Some("y"));
    }

    #[test]
    fn scalars_resolve_by_the_core_schema() {
        for (text, kind) in [
            ("", ScalarType::Null),
            ("~", ScalarType::Null),
            ("true", ScalarType::Bool(true)),
            ("False", ScalarType::Bool(false)),
            ("yes", ScalarType::Str),
            ("12", ScalarType::Int),
            ("-0x1", ScalarType::Str),
            ("0x1F", ScalarType::Int),
            ("1.5e3", ScalarType::Float),
            (".5", ScalarType::Float),
            ("-.inf", ScalarType::Float),
            ("1.2.3", ScalarType::Str),
            ("e3", ScalarType::Str),
            ("public.t", ScalarType::Str),
        ] {
            assert_eq!(resolve_plain(text), kind, "{text:?}");
        }
        let doc = one("a: \"true\"\nb: !!str 12\n");
        let Value::Map(pairs) = &doc.value else { panic!("a mapping") };
        assert_eq!(pairs[0].1.as_str(), Some("true"));
        assert_eq!(pairs[1].1.as_str(), Some("12"));
    }

    #[test]
    fn duplicate_keys_are_reported_where_repeated() {
        let (_, errors) = parse_documents("a: 1\nb: 2\na: 3\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, Pos { line: 3, column: 1 });
        assert!(errors[0].1.contains("duplicate key `a` (first at line 1)"), "{errors:?}");
    }

    #[test]
    fn documents_before_a_syntax_error_are_kept() {
        let (docs, errors) = parse_documents("a: 1\n---\nb: [1,\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].1.starts_with("YAML syntax"), "{errors:?}");
    }

    #[test]
    fn aliases_expand_within_a_budget() {
        let doc = one("a: &x [1, 2]\nb: *x\n");
        let Value::Map(pairs) = &doc.value else { panic!("a mapping") };
        assert!(matches!(&pairs[1].1.value, Value::Seq(items) if items.len() == 2));
        // Each level doubles: 2^20 nodes from a few lines.
        let mut bomb = String::from("a0: &a0 [x, x]\n");
        for i in 1..20 {
            bomb.push_str(&format!("a{i}: &a{i} [*a{}, *a{}]\n", i - 1, i - 1));
        }
        let (_, errors) = parse_documents(&bomb);
        assert!(errors.iter().any(|(_, m)| m.contains("aliases expand")), "{errors:?}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let (_, errors) = parse_documents(&text);
        assert!(errors.iter().any(|(_, m)| m.contains("nested more than")), "{errors:?}");
    }

    #[test]
    fn unknown_tags_are_reported() {
        let (_, errors) = parse_documents("a: !custom x\n");
        assert!(errors[0].1.contains("tag"), "{errors:?}");
    }
}
