//! Name patterns of policy rules: `schema.name` for relations and functions, and plain globs
//! for database roles. `*` matches any run of characters (none included), `?` exactly one.
//!
//! A relation or function pattern must name its schema (`public.t`, `*.t`): an unqualified
//! pattern would have to guess the session's search_path, which is the client's to change. Each
//! part is read as PostgreSQL reads an identifier, so a pattern and an [`ObjectName`] compare
//! as the server would: unquoted parts fold to lower case, quoted parts (`"My Schema".t`) are
//! verbatim and literal (a `*` inside quotes is a star, not a glob).

use std::fmt;

use crate::sql::ObjectName;

/// PostgreSQL cuts identifiers to NAMEDATALEN - 1 bytes: a longer literal never matches.
const MAX_IDENTIFIER: usize = 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    Char(char),
    /// `?`
    One,
    /// `*`
    Any,
}

/// A compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Glob {
    /// `*`: everything.
    Everything,
    /// No wildcard: compared as a string.
    Exact(String),
    Wild(Vec<Token>),
}

impl Glob {
    /// Compiles `*` and `?` as wildcards; every other character is literal.
    pub fn new(pattern: &str) -> Glob {
        if pattern == "*" {
            return Glob::Everything;
        }
        if !pattern.contains(['*', '?']) {
            return Glob::Exact(pattern.to_string());
        }
        Glob::Wild(
            pattern
                .chars()
                .map(|c| match c {
                    '*' => Token::Any,
                    '?' => Token::One,
                    c => Token::Char(c),
                })
                .collect(),
        )
    }

    pub fn matches(&self, text: &str) -> bool {
        match self {
            Glob::Everything => true,
            Glob::Exact(s) => s == text,
            Glob::Wild(tokens) => wild_match(tokens, text),
        }
    }
}

/// Iterative glob matching with one backtrack point (the last `*`): linear in practice, and
/// never exponential, whatever the pattern.
fn wild_match(tokens: &[Token], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let (mut t, mut s) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while s < text.len() {
        match tokens.get(t) {
            Some(Token::Any) => {
                star = Some((t, s));
                t += 1;
            }
            Some(Token::One) => {
                t += 1;
                s += 1;
            }
            Some(Token::Char(c)) if *c == text[s] => {
                t += 1;
                s += 1;
            }
            _ => match star {
                // Let the last star swallow one more character and retry from there.
                Some((st, ss)) => {
                    t = st + 1;
                    s = ss + 1;
                    star = Some((st, ss + 1));
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::Any)
}

/// A `schema.name` pattern of a relation or function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectPattern {
    /// As written (for messages and explanations).
    pub text: String,
    pub schema: Glob,
    pub name: Glob,
}

impl fmt::Display for ObjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// How a candidate name with no schema (unresolved) is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unresolved {
    /// It could be in any schema: it matches if its name does (deny-type rules).
    MayMatch,
    /// Only a pattern for every schema (`*.name`) can be sure of it (allow rules).
    MustMatch,
}

impl ObjectPattern {
    /// Parses `schema.name`, saying what is wrong and what was expected.
    pub fn parse(text: &str) -> Result<ObjectPattern, String> {
        let parts = split_parts(text)?;
        match parts.as_slice() {
            [schema, name] => Ok(ObjectPattern { text: text.to_string(), schema: schema.glob(), name: name.glob() }),
            [name] => Err(format!(
                "pattern `{text}` has no schema; write it as `schema.name`, e.g. `public.{0}` or `*.{0}`",
                name.display()
            )),
            _ => Err(format!(
                "pattern `{text}` has {} dot-separated parts; expected `schema.name` (quote a part that contains \
                 a dot: `\"my.schema\".t`)",
                parts.len()
            )),
        }
    }

    /// Whether `candidate` is matched by this pattern.
    pub fn matches(&self, candidate: &ObjectName, unresolved: Unresolved) -> bool {
        if !self.name.matches(&candidate.name) {
            return false;
        }
        match &candidate.schema {
            Some(schema) => self.schema.matches(schema),
            None => unresolved == Unresolved::MayMatch || self.schema == Glob::Everything,
        }
    }

    /// Whether every name this pattern matches is matched by `other` too (conservatively: only
    /// equal patterns and `*.*` are known to cover).
    pub fn covered_by(&self, other: &ObjectPattern) -> bool {
        (other.schema == Glob::Everything && other.name == Glob::Everything)
            || (self.schema == other.schema && self.name == other.name)
    }
}

/// A `schema.table.column` pattern of a masking rule or classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColumnPattern {
    pub text: String,
    pub schema: Glob,
    pub table: Glob,
    pub column: Glob,
}

impl ColumnPattern {
    /// Parses `schema.table.column` (each part a glob, or quoted and literal).
    pub fn parse(text: &str) -> Result<ColumnPattern, String> {
        let parts = split_parts(text)?;
        match parts.as_slice() {
            [schema, table, column] => Ok(ColumnPattern {
                text: text.to_string(),
                schema: schema.glob(),
                table: table.glob(),
                column: column.glob(),
            }),
            _ => Err(format!(
                "column pattern `{text}` has {} dot-separated parts; expected `schema.table.column`, e.g. \
                 `crm.customers.email` or `*.*.email`",
                parts.len()
            )),
        }
    }

    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        self.schema.matches(schema) && self.table.matches(table) && self.column.matches(column)
    }
}

/// One part of a pattern, as written.
#[derive(Debug)]
struct Part {
    text: String,
    quoted: bool,
}

impl Part {
    fn glob(&self) -> Glob {
        if self.quoted { Glob::Exact(self.text.clone()) } else { Glob::new(&self.text) }
    }

    fn display(&self) -> String {
        if self.quoted { format!("\"{}\"", self.text.replace('"', "\"\"")) } else { self.text.clone() }
    }
}

/// Splits at dots outside quotes, folding unquoted parts to lower case as PostgreSQL does
/// (ASCII only: the server folds nothing else in a multi-byte encoding).
fn split_parts(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut part = Part { text: String::new(), quoted: false };
        if chars.peek() == Some(&'"') {
            chars.next();
            part.quoted = true;
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.text.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.text.push(c),
                    None => return Err(format!("pattern `{text}`: a quoted part is not closed")),
                }
            }
            if part.text.is_empty() {
                return Err(format!("pattern `{text}`: a quoted part is empty (PostgreSQL has no empty names)"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' {
                    return Err(format!("pattern `{text}`: a quote may only enclose a whole part (`\"My Schema\".t`)"));
                }
                if !(c.is_alphanumeric() || matches!(c, '_' | '$' | '*' | '?')) {
                    return Err(format!(
                        "pattern `{text}`: `{c}` cannot appear in an unquoted name; quote the part \
                         (`\"...\"`) or use `*` and `?` as wildcards"
                    ));
                }
                part.text.push(c.to_ascii_lowercase());
                chars.next();
            }
            if part.text.is_empty() {
                return Err(format!("pattern `{text}`: an empty part; expected `schema.name`"));
            }
        }
        // A literal part longer than a name can be never matches (a glob may be longer).
        if (part.quoted || !part.text.contains(['*', '?'])) && part.text.len() > MAX_IDENTIFIER {
            return Err(format!(
                "pattern `{text}`: `{}` is longer than {MAX_IDENTIFIER} bytes; PostgreSQL cuts names to \
                 {MAX_IDENTIFIER} bytes, so it would never match",
                part.text
            ));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => {
                return Err(format!("pattern `{text}`: `{c}` after a quoted part; expected `.` or the end"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(schema: Option<&str>, n: &str) -> ObjectName {
        ObjectName::new(schema, n)
    }

    #[test]
    fn globs() {
        for (pattern, text, expected) in [
            ("*", "", true),
            ("etl_*", "etl_", true),
            ("etl_*", "etl_nightly", true),
            ("etl_*", "etl", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*b*b*", "abxxb", true),
            ("*b*b*", "ab", false),
            ("a*b*c", "a-b-x-c", true),
            ("a*b*c", "a-c-b", false),
            ("exact", "exact", true),
            ("exact", "Exact", false),
            ("é?", "éa", true),
        ] {
            assert_eq!(Glob::new(pattern).matches(text), expected, "{pattern} vs {text}");
        }
        // A pathological pattern stays fast.
        let p = Glob::new(&"*a".repeat(30));
        assert!(!p.matches(&"a".repeat(29)));
    }

    #[test]
    fn patterns_read_names_as_postgresql_does() {
        let p = ObjectPattern::parse("Billing.*").expect("valid");
        assert!(p.matches(&name(Some("billing"), "invoices"), Unresolved::MustMatch));
        assert!(!p.matches(&name(Some("Billing"), "invoices"), Unresolved::MustMatch));

        let q = ObjectPattern::parse("\"My Schema\".t").expect("valid");
        assert!(q.matches(&name(Some("My Schema"), "t"), Unresolved::MustMatch));
        assert!(!q.matches(&name(Some("my schema"), "t"), Unresolved::MustMatch));

        let literal = ObjectPattern::parse("public.\"a*\"").expect("valid");
        assert!(literal.matches(&name(Some("public"), "a*"), Unresolved::MustMatch));
        assert!(!literal.matches(&name(Some("public"), "ab"), Unresolved::MustMatch));

        let dotted = ObjectPattern::parse("\"a.b\".\"x\"\"y\"").expect("valid");
        assert!(dotted.matches(&name(Some("a.b"), "x\"y"), Unresolved::MustMatch));

        let f = ObjectPattern::parse("pg_catalog.pg_read_*").expect("valid");
        assert!(f.matches(&name(Some("pg_catalog"), "pg_read_binary_file"), Unresolved::MustMatch));
        assert!(!f.matches(&name(Some("public"), "pg_read_file"), Unresolved::MustMatch));
    }

    #[test]
    fn unresolved_names_match_deny_patterns_only() {
        let p = ObjectPattern::parse("billing.*").expect("valid");
        let bare = name(None, "invoices");
        assert!(p.matches(&bare, Unresolved::MayMatch));
        assert!(!p.matches(&bare, Unresolved::MustMatch));
        let any = ObjectPattern::parse("*.invoices").expect("valid");
        assert!(any.matches(&bare, Unresolved::MustMatch));
    }

    #[test]
    fn bad_patterns_say_what_was_expected() {
        for (text, expected) in [
            ("orders", "write it as `schema.name`, e.g. `public.orders` or `*.orders`"),
            ("db.public.t", "has 3 dot-separated parts"),
            ("public.", "an empty part"),
            (".t", "an empty part"),
            ("\"open.t", "not closed"),
            ("pub\"lic\".t", "a quote may only enclose a whole part"),
            ("public.my table", "quote the part"),
            ("\"\".t", "empty"),
            ("\"s\"x.t", "after a quoted part"),
        ] {
            let err = ObjectPattern::parse(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
        let long = format!("public.{}", "x".repeat(64));
        assert!(ObjectPattern::parse(&long).expect_err("too long").contains("63 bytes"));
        assert!(ObjectPattern::parse(&format!("public.{}*", "x".repeat(64))).is_ok(), "a glob may be longer");
    }

    #[test]
    fn coverage_is_conservative() {
        let all = ObjectPattern::parse("*.*").expect("valid");
        let billing = ObjectPattern::parse("billing.*").expect("valid");
        let billing2 = ObjectPattern::parse("BILLING.*").expect("valid");
        assert!(billing.covered_by(&all));
        assert!(billing.covered_by(&billing2));
        assert!(!all.covered_by(&billing));
    }
}
