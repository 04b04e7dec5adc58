//! Result sets as masking sees them: a column definition's origin and type, and rows (text or
//! binary) rewritten through a [`ResultFilter`].
//!
//! A text row is one length-encoded string per column (0xfb: NULL). A binary row (of
//! COM_STMT_EXECUTE and COM_STMT_FETCH) is a 0x00 header, a NULL bitmap offset by two bits,
//! then each non-NULL value in its type's binary form: fixed-width numbers, a length byte and
//! that many bytes for temporal values, a length-encoded string for everything else.

use super::packet;
use crate::session::{
    ResultColumn,
    hooks::{ResultFilter, Rewrite},
};

/// The binary character set: a string of it is bytes, not text.
const BINARY_CHARSET: u16 = 63;

/// One column definition, as far as masking reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub schema: Vec<u8>,
    /// The table the value is read from (empty: computed) and its column there.
    pub org_table: Vec<u8>,
    pub org_name: Vec<u8>,
    pub charset: u16,
    pub kind: u8,
}

/// A column definition packet (CLIENT_PROTOCOL_41), or `None` when it is malformed.
pub fn definition(p: &[u8]) -> Option<Definition> {
    let mut rest = p;
    let _catalog = packet::lenenc_bytes(&mut rest)?;
    let schema = packet::lenenc_bytes(&mut rest)?.to_vec();
    let _table = packet::lenenc_bytes(&mut rest)?;
    let org_table = packet::lenenc_bytes(&mut rest)?.to_vec();
    let _name = packet::lenenc_bytes(&mut rest)?;
    let org_name = packet::lenenc_bytes(&mut rest)?.to_vec();
    let fixed = packet::lenenc_int(&mut rest)?;
    if fixed < 10 || rest.len() < 10 {
        return None;
    }
    Some(Definition { schema, org_table, org_name, charset: u16::from_le_bytes([rest[0], rest[1]]), kind: rest[6] })
}

impl Definition {
    /// Whether its values are strings (a length-encoded string in both row forms).
    fn is_string(&self) -> bool {
        // VARCHAR, JSON, ENUM, SET, the BLOB/TEXT family, VAR_STRING, STRING, GEOMETRY, DECIMAL
        // and BIT are length-encoded strings; of them, only text and JSON are masked as text.
        matches!(self.kind, 0x0f | 0xf5 | 0xf7 | 0xf8 | 0xf9..=0xfe)
    }

    /// The column as the hooks see it: its origin (`origin`: relation and attribute numbers),
    /// and its type as the PostgreSQL type of the same form (text, bytea, json, int4, int8;
    /// 0 for anything only NULL can stand in for).
    pub fn result_column(&self, origin: Option<(u32, i16)>, binary_row: bool) -> ResultColumn {
        let (table_oid, attnum) = origin.unwrap_or((0, 0));
        let type_oid = match self.kind {
            0xf5 => 114,
            0x0f | 0xf9..=0xfe if self.charset == BINARY_CHARSET => 17,
            0x0f | 0xf7 | 0xf8 | 0xf9..=0xfe => 25,
            // Integers in text form (a binary row holds them little-endian, of MySQL's widths).
            0x03 if !binary_row => 23,
            0x08 if !binary_row => 20,
            _ => 0,
        };
        // A binary row's strings are their bytes, as a text row's are: read as text.
        let binary = binary_row && !self.is_string();
        ResultColumn { table_oid, attnum, type_oid, binary }
    }

    /// The length of a binary row's value of this type at the front of `rest`: (header, body).
    fn binary_len(&self, rest: &[u8]) -> Option<(usize, usize)> {
        let fixed = match self.kind {
            0x06 => 0,
            0x01 => 1,
            0x02 | 0x0d => 2,
            0x03 | 0x09 | 0x04 => 4,
            0x08 | 0x05 => 8,
            // DATE, TIME, DATETIME, TIMESTAMP (and their internal variants): a length byte.
            0x07 | 0x0a | 0x0b | 0x0c | 0x0e | 0x11 | 0x12 | 0x13 => {
                return rest.first().map(|&n| (1, usize::from(n)));
            }
            _ => {
                let mut r = rest;
                let n = packet::lenenc_int(&mut r)?;
                return Some((rest.len() - r.len(), usize::try_from(n).ok()?));
            }
        };
        Some((0, fixed))
    }
}

/// A filter for a result with columns in a character set that is not ASCII-compatible (UCS-2,
/// UTF-16, UTF-32, by the session's character_set_results or the column's own): a value of
/// them that would be rewritten or looked at is withheld (the detectors read ASCII-compatible
/// text, and a masked form written in ASCII would not be text of that set).
pub struct WideWithheld {
    pub inner: Box<dyn ResultFilter>,
    pub wide: Vec<bool>,
}

impl ResultFilter for WideWithheld {
    fn rewrites(&self, index: usize) -> bool {
        self.inner.rewrites(index)
    }

    fn rewrite(&self, index: usize, value: &[u8], out: &mut Vec<u8>) -> Rewrite {
        if self.wide.get(index).copied().unwrap_or(true) {
            return Rewrite::Null;
        }
        self.inner.rewrite(index, value, out)
    }
}

/// A row that does not read as its definitions say: the server's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sent a row that does not match its column definitions ({0})")]
pub struct BadRow(&'static str);

/// Rewrites a text row into `out` (cleared first).
pub fn rewrite_text(row: &[u8], columns: usize, filter: &dyn ResultFilter, out: &mut Vec<u8>) -> Result<(), BadRow> {
    out.clear();
    let mut rest = row;
    let mut scratch = Vec::new();
    for i in 0..columns {
        if rest.first() == Some(&0xfb) {
            out.push(0xfb);
            rest = &rest[1..];
            continue;
        }
        let value = packet::lenenc_bytes(&mut rest).ok_or(BadRow("a value runs past the row"))?;
        if !put_value(i, value, filter, &mut scratch, out) {
            out.push(0xfb);
        }
    }
    if !rest.is_empty() {
        return Err(BadRow("more values than columns"));
    }
    Ok(())
}

/// Rewrites a binary row into `out` (cleared first).
pub fn rewrite_binary(
    row: &[u8],
    columns: &[Definition],
    filter: &dyn ResultFilter,
    out: &mut Vec<u8>,
) -> Result<(), BadRow> {
    out.clear();
    let bitmap_len = (columns.len() + 7 + 2) / 8;
    if row.first() != Some(&0x00) || row.len() < 1 + bitmap_len {
        return Err(BadRow("a binary row without its header and NULL bitmap"));
    }
    out.extend_from_slice(&row[..1 + bitmap_len]);
    let mut rest = &row[1 + bitmap_len..];
    let mut scratch = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        let bit = i + 2;
        if row[1 + bit / 8] & (1 << (bit % 8)) != 0 {
            continue;
        }
        let (header, len) = c.binary_len(rest).ok_or(BadRow("a value runs past the row"))?;
        let whole = rest.get(..header + len).ok_or(BadRow("a value runs past the row"))?;
        rest = &rest[header + len..];
        if !filter.rewrites(i) {
            out.extend_from_slice(whole);
            continue;
        }
        if c.is_string() {
            if !put_value(i, &whole[header..], filter, &mut scratch, out) {
                // NULL: marked in the bitmap, no bytes.
                out[1 + bit / 8] |= 1 << (bit % 8);
            }
            continue;
        }
        scratch.clear();
        match filter.rewrite(i, &whole[header..], &mut scratch) {
            Rewrite::Keep => out.extend_from_slice(whole),
            // A number or a date is never rewritten in place: withheld.
            Rewrite::Null | Rewrite::Written => out[1 + bit / 8] |= 1 << (bit % 8),
        }
    }
    if !rest.is_empty() {
        return Err(BadRow("more values than columns"));
    }
    Ok(())
}

/// Appends column `i`'s value as a length-encoded string, rewritten as the filter says; false
/// (nothing appended) when it becomes NULL.
fn put_value(i: usize, value: &[u8], filter: &dyn ResultFilter, scratch: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    scratch.clear();
    let rewrite = if filter.rewrites(i) { filter.rewrite(i, value, scratch) } else { Rewrite::Keep };
    match rewrite {
        Rewrite::Keep => put_lenenc(out, value),
        Rewrite::Null => return false,
        Rewrite::Written => put_lenenc(out, scratch),
    }
    true
}

fn put_lenenc(out: &mut Vec<u8>, value: &[u8]) {
    let n = value.len() as u64;
    match n {
        0..=250 => out.push(n as u8),
        251..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Masks column 1 as "****", withholds column 2, keeps the rest.
    struct Filter;

    impl ResultFilter for Filter {
        fn rewrites(&self, index: usize) -> bool {
            matches!(index, 1 | 2)
        }

        fn rewrite(&self, index: usize, _value: &[u8], out: &mut Vec<u8>) -> Rewrite {
            if index == 1 {
                out.extend_from_slice(b"****");
                Rewrite::Written
            } else {
                Rewrite::Null
            }
        }
    }

    fn column(kind: u8) -> Definition {
        Definition { schema: vec![], org_table: vec![], org_name: vec![], charset: 45, kind }
    }

    #[test]
    fn a_column_definition_names_its_origin_and_type() {
        let p = b"\x03def\x03crm\x01p\x06people\x01s\x03ssn\x0c\x2d\x00\x00\x01\x00\x00\xfd\x00\x00\x00\x00\x00";
        let d = definition(p).unwrap();
        assert_eq!(
            (&d.schema[..], &d.org_table[..], &d.org_name[..], d.kind, d.charset),
            (&b"crm"[..], &b"people"[..], &b"ssn"[..], 0xfd, 45)
        );
        assert_eq!(
            d.result_column(Some((7, 2)), true),
            ResultColumn { table_oid: 7, attnum: 2, type_oid: 25, binary: false }
        );
        assert_eq!(column(0x03).result_column(None, false).type_oid, 23);
        assert_eq!(
            column(0x03).result_column(None, true),
            ResultColumn { table_oid: 0, attnum: 0, type_oid: 0, binary: true }
        );
        assert!(definition(&p[..p.len() - 4]).is_none());
    }

    #[test]
    fn a_text_row_is_rewritten_value_by_value() {
        let row = b"\x011\x0b857-31-9042\x03abc\xfb";
        let mut out = Vec::new();
        rewrite_text(row, 4, &Filter, &mut out).unwrap();
        assert_eq!(out, b"\x011\x04****\xfb\xfb");
        assert!(rewrite_text(row, 3, &Filter, &mut out).is_err(), "more values than columns");
        assert!(rewrite_text(b"\x05ab", 1, &Filter, &mut out).is_err());
    }

    /// Looks at every value and finds nothing (the detectors on text they cannot read).
    struct KeepAll;

    impl ResultFilter for KeepAll {
        fn rewrites(&self, _index: usize) -> bool {
            true
        }

        fn rewrite(&self, _index: usize, _value: &[u8], _out: &mut Vec<u8>) -> Rewrite {
            Rewrite::Keep
        }
    }

    #[test]
    fn values_in_a_wide_character_set_that_would_be_looked_at_are_withheld() {
        // "857" in UTF-16: the detectors would see no digits run.
        let row = b"\x06\x008\x005\x007\x03abc";
        let filter = WideWithheld { inner: Box::new(KeepAll), wide: vec![true, false] };
        let mut out = Vec::new();
        rewrite_text(row, 2, &filter, &mut out).unwrap();
        assert_eq!(out, b"\xfb\x03abc");
    }

    #[test]
    fn a_binary_row_keeps_numbers_masks_strings_and_withholds_in_the_bitmap() {
        // id INT = 7, ssn VARCHAR, n BIGINT (withheld: not a string), d DATETIME NULL.
        let columns = [column(0x03), column(0xfd), column(0x08), column(0x0c)];
        let mut row = vec![0x00, 0b0010_0000];
        row.extend_from_slice(&7u32.to_le_bytes());
        row.extend_from_slice(b"\x0b857-31-9042");
        row.extend_from_slice(&42u64.to_le_bytes());
        let mut out = Vec::new();
        rewrite_binary(&row, &columns, &Filter, &mut out).unwrap();
        let mut expected = vec![0x00, 0b0011_0000];
        expected.extend_from_slice(&7u32.to_le_bytes());
        expected.extend_from_slice(b"\x04****");
        assert_eq!(out, expected);
        assert!(rewrite_binary(&row[..8], &columns, &Filter, &mut out).is_err());
    }
}

#[cfg(test)]
mod garbage {
    use super::*;

    /// Masks every value (text: "****", otherwise withheld).
    struct All;

    impl ResultFilter for All {
        fn rewrites(&self, _index: usize) -> bool {
            true
        }

        fn rewrite(&self, index: usize, _value: &[u8], out: &mut Vec<u8>) -> Rewrite {
            if index.is_multiple_of(2) {
                out.extend_from_slice(b"****");
                Rewrite::Written
            } else {
                Rewrite::Null
            }
        }
    }

    #[test]
    fn arbitrary_bytes_are_refused_or_read_never_a_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let kinds = [
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0f, 0xf5, 0xfc, 0xfd, 0xfe,
        ];
        let mut out = Vec::new();
        for _ in 0..50_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0
                && let Some(first) = bytes.first_mut()
            {
                // A binary row's header.
                *first = 0;
            }
            let _ = definition(&bytes);
            let columns: Vec<Definition> = (0..(next() % 12))
                .map(|_| Definition {
                    schema: vec![],
                    org_table: vec![],
                    org_name: vec![],
                    charset: 45,
                    kind: kinds[(next() % kinds.len() as u64) as usize],
                })
                .collect();
            let _ = rewrite_text(&bytes, columns.len(), &All, &mut out);
            let _ = rewrite_binary(&bytes, &columns, &All, &mut out);
            let mut types = Vec::new();
            let _ = super::super::params::normalise(&bytes, (next() % 9) as usize, &mut types, &[1]);
            let _ = super::super::params::decode(&bytes);
            let _ = super::super::refusal::read_err(&bytes);
            let _ = super::super::refusal::with_message(&bytes, "m");
        }
        // The answer state machine, fed arbitrary packets against every shape.
        use super::super::state::{Answer, Owed, Shape};
        let shapes = [
            Shape::Results { binary: false },
            Shape::Results { binary: true },
            Shape::Prepare,
            Shape::Fetch,
            Shape::FieldList,
            Shape::Status,
            Shape::Any,
        ];
        for _ in 0..2_000 {
            let mut owed = Owed::new(next() % 2 == 0);
            for _ in 0..4 {
                owed.push(Answer::Server { shape: shapes[(next() % shapes.len() as u64) as usize], tag: () });
            }
            for _ in 0..40 {
                let len = (next() % 24) as usize;
                let payload: Vec<u8> = (0..len)
                    .map(|_| [0x00, 0x01, 0x02, 0xfe, 0xff, 0xfb, next() as u8][(next() % 7) as usize])
                    .collect();
                let p = packet::Packet { seq: 1, fragments: 1, payload: bytes::BytesMut::from(&payload[..]) };
                if owed.on_server(&p).is_err() || owed.is_empty() {
                    break;
                }
            }
        }
    }
}
