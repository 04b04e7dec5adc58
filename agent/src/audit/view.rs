//! The operator's view of statements: the ring holds a `statement` record when a statement is
//! forwarded and a `statement_end` record when its outcome is known (or one `statement` record
//! carrying the outcome's fields, when the statement ended before the writer wrote it); tail,
//! query, show, replay and export show one statement with its outcome merged in (`outcome`,
//! `rows`, `command_tag`, `duration_us`, `error`). A statement with no outcome in the ring says `"pending"`: still
//! running, or the agent stopped before the server answered. `export --raw` gives the records
//! as written.

use std::collections::HashMap;

use serde_json::Value;

use super::cli::Entry;

/// Merges each `statement_end` into its `statement` (same session, statement and part).
/// Outcomes whose statement is no longer in the ring (overwritten) are kept as they are.
pub fn merged(entries: Vec<Entry>) -> Vec<Entry> {
    let mut merging = Merging::default();
    for entry in entries {
        merging.push(entry, |_| true);
    }
    merging.finish()
}

/// A statement's session, number and part: what joins its outcome to it.
pub type Key = (u64, u64, u64);

pub fn key(v: &Value) -> Option<Key> {
    Some((v["session"].as_u64()?, v["statement"].as_u64()?, v["part"].as_u64()?))
}

/// `merged`, one record at a time, keeping only the entries a filter accepts: what a reader of
/// a large ring holds is what it shows. The filter sees a statement before its outcome is
/// merged in, so it must judge only what the statement record itself says (every filter of
/// `query` does). An outcome whose statement was not kept goes with it.
#[derive(Default)]
pub struct Merging {
    /// Kept statements by key: where their outcomes go.
    index: HashMap<Key, usize>,
    /// Statements not kept, by key: their outcomes are dropped, not shown alone (a key kept
    /// again later is found in `index` first).
    dropped: std::collections::HashSet<Key>,
    out: Vec<Entry>,
}

impl Merging {
    pub fn push(&mut self, entry: Entry, mut keep: impl FnMut(&Entry) -> bool) {
        match entry.value["kind"].as_str() {
            Some("statement") => {
                let mut entry = entry;
                let refused = entry.value["verdict"]["decision"] == "deny";
                if let Value::Object(map) = &mut entry.value {
                    // Written with its outcome (it ended before the writer took it), or not yet.
                    if !map.contains_key("outcome") {
                        map.insert("outcome".into(), Value::from(if refused { "refused" } else { "pending" }));
                        map.insert("rows".into(), Value::from(0u64));
                        map.insert("duration_us".into(), Value::from(0u64));
                    } else if let (Some(at), Some(us)) =
                        (map.get("at_ms").and_then(Value::as_u64), map.get("duration_us").and_then(Value::as_u64))
                    {
                        map.insert("ended_at_ms".into(), Value::from(at + us / 1000));
                    }
                    map.entry("command_tag").or_insert(Value::Null);
                    map.entry("error").or_insert(Value::Null);
                }
                // Statement 0 is a refusal that never got a number: nothing to merge into it.
                // The newest statement of a key is the one its later outcomes belong to.
                let key = key(&entry.value).filter(|k| k.1 != 0);
                if keep(&entry) {
                    if let Some(k) = key {
                        self.index.insert(k, self.out.len());
                    }
                    self.out.push(entry);
                } else if let Some(k) = key {
                    self.index.remove(&k);
                    self.dropped.insert(k);
                }
            }
            Some("statement_end") => {
                let k = key(&entry.value);
                match k.and_then(|k| self.index.get(&k).copied()) {
                    Some(i) => merge_end(&mut self.out[i].value, &entry.value),
                    None if k.is_some_and(|k| self.dropped.contains(&k)) => {}
                    None if keep(&entry) => self.out.push(entry),
                    None => {}
                }
            }
            _ if keep(&entry) => self.out.push(entry),
            _ => {}
        }
    }

    pub fn finish(self) -> Vec<Entry> {
        self.out
    }
}

fn merge_end(statement: &mut Value, end: &Value) {
    let Value::Object(map) = statement else { return };
    // A suspended portal runs again: rows and time add up over its executions.
    let resumed = map.get("outcome").and_then(Value::as_str) == Some("suspended");
    let add = |map: &serde_json::Map<String, Value>, k: &str| {
        let before = if resumed { map.get(k).and_then(Value::as_u64).unwrap_or(0) } else { 0 };
        Value::from(before + end[k].as_u64().unwrap_or(0))
    };
    let rows = add(map, "rows");
    let duration = add(map, "duration_us");
    map.insert("rows".into(), rows);
    map.insert("duration_us".into(), duration);
    map.insert("outcome".into(), end["outcome"].clone());
    map.insert("command_tag".into(), end["command_tag"].clone());
    map.insert("error".into(), end["error"].clone());
    if end["stopped"].is_object() {
        map.insert("stopped".into(), end["stopped"].clone());
    }
    if let Some(at) = end["at_ms"].as_u64() {
        map.insert("ended_at_ms".into(), Value::from(at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seq: u64, v: Value) -> Entry {
        Entry { seq, value: v }
    }

    #[test]
    fn outcomes_merge_into_their_statements() {
        let entries = vec![
            e(
                1,
                serde_json::json!({"kind": "statement", "session": 7, "statement": 1, "part": 0, "text": "delete ..."}),
            ),
            e(2, serde_json::json!({"kind": "statement", "session": 7, "statement": 1, "part": 1, "text": "select ?"})),
            e(
                3,
                serde_json::json!({"kind": "statement_end", "session": 7, "statement": 1, "part": 0,
                "outcome": "completed", "rows": 5, "command_tag": "DELETE 5", "duration_us": 10, "error": null}),
            ),
            e(
                4,
                serde_json::json!({"kind": "statement_end", "session": 7, "statement": 1, "part": 1,
                "outcome": "failed", "rows": 0, "command_tag": null, "duration_us": 3, "error": "42P01"}),
            ),
            e(5, serde_json::json!({"kind": "statement", "session": 7, "statement": 2, "part": 0, "text": "select ?"})),
            e(
                6,
                serde_json::json!({"kind": "statement_end", "session": 7, "statement": 2, "part": 0,
                "outcome": "suspended", "rows": 100, "command_tag": null, "duration_us": 5, "error": null}),
            ),
            e(
                7,
                serde_json::json!({"kind": "statement_end", "session": 7, "statement": 2, "part": 0,
                "outcome": "completed", "rows": 20, "command_tag": "SELECT 20", "duration_us": 5, "error": null}),
            ),
            e(8, serde_json::json!({"kind": "statement", "session": 7, "statement": 3, "part": 0, "text": "select ?"})),
            // Written with their outcomes: one completed, one suspended and resumed later.
            e(
                10,
                serde_json::json!({"kind": "statement", "session": 9, "statement": 1, "part": 0, "text": "select ?",
                "at_ms": 1000, "outcome": "completed", "rows": 1, "command_tag": "SELECT 1", "duration_us": 2500,
                "error": null}),
            ),
            e(
                11,
                serde_json::json!({"kind": "statement", "session": 9, "statement": 2, "part": 0, "text": "select ?",
                "outcome": "suspended", "rows": 10, "command_tag": null, "duration_us": 5, "error": null}),
            ),
            e(
                12,
                serde_json::json!({"kind": "statement_end", "session": 9, "statement": 2, "part": 0,
                "outcome": "completed", "rows": 3, "command_tag": "SELECT 3", "duration_us": 5, "error": null}),
            ),
            e(
                9,
                serde_json::json!({"kind": "statement_end", "session": 8, "statement": 9, "part": 0, "outcome": "unknown"}),
            ),
        ];
        let view = merged(entries);
        let seqs: Vec<u64> = view.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 5, 8, 10, 11, 9], "ends merge away unless their statement is gone");
        assert_eq!((view[0].value["outcome"].as_str(), view[0].value["rows"].as_u64()), (Some("completed"), Some(5)));
        assert_eq!(view[1].value["error"], "42P01");
        assert_eq!(view[2].value["rows"], 120, "rows of a resumed portal add up");
        assert_eq!(view[2].value["command_tag"], "SELECT 20");
        assert_eq!(view[3].value["outcome"], "pending");
        assert_eq!((view[4].value["outcome"].as_str(), view[4].value["rows"].as_u64()), (Some("completed"), Some(1)));
        assert_eq!(view[4].value["ended_at_ms"], 1002);
        assert_eq!((view[5].value["outcome"].as_str(), view[5].value["rows"].as_u64()), (Some("completed"), Some(13)));
    }
}
