//! Rewriting server messages whose values the hooks filter (masking): DataRow bodies, COPY
//! data in its three layouts, error and notice fields, notifications. Codec only: what a value
//! becomes is the filter's to say ([`ResultFilter`]); here values are found and messages
//! rebuilt with their lengths recomputed, so the protocol stays valid.

use crate::{
    pg::frame::put_message,
    session::hooks::{CopyLayout, ResultFilter, Rewrite},
};

/// A DataRow (its body) rewritten as a whole message appended to `out`; false (and `out` as
/// it was) when nothing changed or the body is malformed (the state machine refuses those).
pub fn data_row_into(body: &[u8], filter: &dyn ResultFilter, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    if rewrite_row(body, filter, out).is_none() || out.len() == start {
        out.truncate(start);
        return false;
    }
    let len = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    true
}

/// Appends the rewritten message ('D', length to fill in, body) to `out` once a value changes;
/// appends nothing when none does. `None`: malformed.
fn rewrite_row(body: &[u8], filter: &dyn ResultFilter, out: &mut Vec<u8>) -> Option<()> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let begin = out.len();
    let mut started = false;
    let mut pos = 2;
    for i in 0..count {
        let start = pos;
        let len = i32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        let value = if len < 0 {
            None
        } else {
            let v = body.get(pos..pos + len as usize)?;
            pos += len as usize;
            Some(v)
        };
        let Some(v) = value.filter(|_| filter.rewrites(i)) else {
            if started {
                out.extend_from_slice(&body[start..pos]);
            }
            continue;
        };
        if !started {
            started = true;
            out.push(b'D');
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&body[..start]);
        }
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        match filter.rewrite(i, v, out) {
            Rewrite::Keep => {
                out.truncate(at);
                out.extend_from_slice(&body[start..pos]);
            }
            Rewrite::Null => {
                out.truncate(at);
                out.extend_from_slice(&(-1i32).to_be_bytes());
            }
            Rewrite::Written => {
                let n = (out.len() - at - 4) as i32;
                out[at..at + 4].copy_from_slice(&n.to_be_bytes());
            }
        }
    }
    if pos != body.len() {
        out.truncate(begin);
        return None;
    }
    // Nothing rewritten (every value kept): no message.
    if started && out[begin + 5..] == body[..] {
        out.truncate(begin);
    }
    Some(())
}

/// An ErrorResponse ('E') or NoticeResponse ('N') with these fields.
pub fn fields_message(tag: u8, fields: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (code, text) in fields {
        body.push(*code);
        // A NUL inside would end the field early: dropped.
        body.extend(text.iter().copied().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 5);
    put_message(&mut out, tag, &body);
    out
}

/// A NotificationResponse.
pub fn notification(pid: i32, channel: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    body.extend(channel.iter().copied().filter(|b| *b != 0));
    body.push(0);
    body.extend(payload.iter().copied().filter(|b| *b != 0));
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 5);
    put_message(&mut out, b'A', &body);
    out
}

/// The signature that opens binary COPY data.
const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Rewrites a COPY OUT stream: rows are found across CopyData messages (a row split over two
/// is held until it is complete), each value passed through the filter.
pub struct CopyRewriter {
    layout: CopyLayout,
    filter: Box<dyn ResultFilter>,
    carry: Vec<u8>,
    /// Binary: the header is not read yet. CSV: the header line is not passed yet.
    header_pending: bool,
    /// Binary: the trailer was read (anything after it passes).
    done: bool,
}

impl CopyRewriter {
    pub fn new(layout: CopyLayout, filter: Box<dyn ResultFilter>) -> Self {
        let header_pending = matches!(layout, CopyLayout::Binary | CopyLayout::Csv { header: true });
        CopyRewriter { layout, filter, carry: Vec::new(), header_pending, done: false }
    }

    /// One CopyData's bytes: the CopyData message(s) to send instead (empty: nothing yet).
    pub fn data(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.carry.extend_from_slice(chunk);
        let mut out = Vec::new();
        let used = match self.layout {
            CopyLayout::Text => self.lines(&mut out, false),
            CopyLayout::Csv { .. } => self.lines(&mut out, true),
            CopyLayout::Binary => self.binary(&mut out),
        };
        self.carry.drain(..used);
        message(out)
    }

    /// The end of the data: what is held is sent (a last row without its newline).
    pub fn finish(&mut self) -> Vec<u8> {
        if self.carry.is_empty() {
            return Vec::new();
        }
        let rest = std::mem::take(&mut self.carry);
        let mut out = Vec::new();
        match self.layout {
            CopyLayout::Text => self.text_row(&rest, &mut out),
            CopyLayout::Csv { .. } => self.csv_row(&rest, &mut out),
            // An incomplete binary tuple cannot be read: withheld.
            CopyLayout::Binary => {}
        }
        message(out)
    }

    /// Complete lines of text or CSV rows; returns the bytes used.
    fn lines(&mut self, out: &mut Vec<u8>, csv: bool) -> usize {
        let data = std::mem::take(&mut self.carry);
        let mut start = 0;
        let mut quoted = false;
        for (i, &b) in data.iter().enumerate() {
            if csv && b == b'"' {
                quoted = !quoted;
            }
            if b == b'\n' && !quoted {
                let line = &data[start..i];
                if self.header_pending {
                    self.header_pending = false;
                    out.extend_from_slice(line);
                } else if csv {
                    self.csv_row(line, out);
                } else {
                    self.text_row(line, out);
                }
                out.push(b'\n');
                start = i + 1;
            }
        }
        self.carry = data;
        start
    }

    fn text_row(&self, line: &[u8], out: &mut Vec<u8>) {
        // A trailing \r (never produced by the server) stays with the last field.
        for (i, field) in line.split(|&b| b == b'\t').enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            if field == b"\\N" || !self.filter.rewrites(i) {
                out.extend_from_slice(field);
                continue;
            }
            let mut v = Vec::new();
            match self.filter.rewrite(i, &unescape_text(field), &mut v) {
                Rewrite::Keep => out.extend_from_slice(field),
                Rewrite::Null => out.extend_from_slice(b"\\N"),
                Rewrite::Written => escape_text(&v, out),
            }
        }
    }

    fn csv_row(&self, line: &[u8], out: &mut Vec<u8>) {
        let mut written = Vec::new();
        for (i, (raw, value)) in csv_fields(line).into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match value {
                Some(v) if self.filter.rewrites(i) => match self.filter.rewrite(i, &v, &mut written) {
                    Rewrite::Keep => out.extend_from_slice(raw),
                    Rewrite::Null => {}
                    Rewrite::Written => {
                        let v = std::mem::take(&mut written);
                        out.push(b'"');
                        for b in v {
                            if b == b'"' {
                                out.push(b'"');
                            }
                            out.push(b);
                        }
                        out.push(b'"');
                    }
                },
                _ => out.extend_from_slice(raw),
            }
        }
    }

    /// Complete binary units (header, tuples, trailer); returns the bytes used.
    fn binary(&mut self, out: &mut Vec<u8>) -> usize {
        let data = std::mem::take(&mut self.carry);
        let mut pos = 0;
        if self.header_pending {
            let Some(ext) = data.get(15..19) else {
                self.carry = data;
                return 0;
            };
            let ext = u32::from_be_bytes(ext.try_into().unwrap_or([0; 4])) as usize;
            if data.len() < 19 + ext {
                self.carry = data;
                return 0;
            }
            if !data.starts_with(BINARY_SIGNATURE) {
                // Not binary COPY data as the server writes it: nothing of it is passed.
                self.done = true;
                return data.len();
            }
            out.extend_from_slice(&data[..19 + ext]);
            pos = 19 + ext;
            self.header_pending = false;
        }
        while !self.done {
            let Some(count) = data.get(pos..pos + 2) else { break };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count < 0 {
                out.extend_from_slice(&data[pos..pos + 2]);
                pos += 2;
                self.done = true;
                break;
            }
            // The whole tuple must be here.
            let mut end = pos + 2;
            let mut complete = true;
            for _ in 0..count {
                match data.get(end..end + 4) {
                    Some(l) => {
                        let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
                        end += 4 + len.max(0) as usize;
                        if end > data.len() {
                            complete = false;
                            break;
                        }
                    }
                    None => {
                        complete = false;
                        break;
                    }
                }
            }
            if !complete {
                break;
            }
            out.extend_from_slice(&data[pos..pos + 2]);
            let mut at = pos + 2;
            for i in 0..count as usize {
                let len = i32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
                at += 4;
                if len < 0 {
                    out.extend_from_slice(&(-1i32).to_be_bytes());
                    continue;
                }
                let value = &data[at..at + len as usize];
                at += len as usize;
                let mut v = Vec::new();
                let rewrite =
                    if self.filter.rewrites(i) { self.filter.rewrite(i, value, &mut v) } else { Rewrite::Keep };
                match rewrite {
                    Rewrite::Keep => {
                        out.extend_from_slice(&len.to_be_bytes());
                        out.extend_from_slice(value);
                    }
                    Rewrite::Null => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Rewrite::Written => {
                        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        out.extend_from_slice(&v);
                    }
                }
            }
            pos = end;
        }
        if self.done {
            // After the trailer nothing more is expected; whatever comes passes as it is.
            out.extend_from_slice(&data[pos..]);
            pos = data.len();
        }
        self.carry = data;
        pos
    }
}

/// `bytes` as one CopyData message (nothing when empty).
fn message(bytes: Vec<u8>) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len() + 5);
    put_message(&mut out, b'd', &bytes);
    out
}

/// A text-format COPY field's value (backslash escapes resolved).
fn unescape_text(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 >= field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = field[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut n = 1;
                while n < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    v = v * 8 + u32::from(field[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    v = v * 16 + (field[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                if n == 0 {
                    out.push(b'x');
                } else {
                    out.push(v as u8);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// A value escaped for a text-format COPY field.
fn escape_text(value: &[u8], out: &mut Vec<u8>) {
    for &b in value {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
}

/// A CSV line's fields: (raw bytes, value; `None` for NULL, an unquoted empty field).
fn csv_fields(line: &[u8]) -> Vec<(&[u8], Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut quoted = false;
    let mut value = Vec::new();
    let mut was_quoted = false;
    while i <= line.len() {
        if i == line.len() || (!quoted && line[i] == b',') {
            let raw = &line[start..i];
            let v = if raw.is_empty() && !was_quoted { None } else { Some(std::mem::take(&mut value)) };
            out.push((raw, v));
            value.clear();
            was_quoted = false;
            start = i + 1;
            i += 1;
            continue;
        }
        let b = line[i];
        if b == b'"' {
            if quoted && line.get(i + 1) == Some(&b'"') {
                value.push(b'"');
                i += 2;
                continue;
            }
            quoted = !quoted;
            was_quoted = true;
        } else {
            value.push(b);
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Masks column 1 with `****`, keeps the others.
    struct Second;
    impl ResultFilter for Second {
        fn rewrites(&self, index: usize) -> bool {
            index == 1
        }
        fn rewrite(&self, _index: usize, _value: &[u8], out: &mut Vec<u8>) -> Rewrite {
            out.extend_from_slice(b"****");
            Rewrite::Written
        }
    }

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut body = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v);
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        body
    }

    #[test]
    fn a_data_row_gets_its_values_and_lengths_rewritten() {
        let body = row(&[Some(b"1"), Some(b"alice@example.com"), None]);
        let mut out = Vec::new();
        assert!(data_row_into(&body, &Second, &mut out), "rewritten");
        let expected = row(&[Some(b"1"), Some(b"****"), None]);
        assert_eq!(out[0], b'D');
        assert_eq!(u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize, expected.len() + 4);
        assert_eq!(&out[5..], &expected[..]);
        // NULL stays NULL; nothing to rewrite: None.
        let mut none = Vec::new();
        assert!(!data_row_into(&row(&[Some(b"1"), None]), &Second, &mut none));
        assert!(none.is_empty());
        // Appended after what the buffer holds.
        let mut arena = b"xyz".to_vec();
        assert!(data_row_into(&body, &Second, &mut arena));
        assert_eq!(&arena[3..], &out[..]);
    }

    #[test]
    fn copy_text_csv_and_binary_rows_are_rewritten_across_messages() {
        let mut text = CopyRewriter::new(CopyLayout::Text, Box::new(Second));
        let a = text.data(b"1\tal\\tice@x.com\tz\n2\t");
        assert_eq!(&a[5..], b"1\t****\tz\n");
        let b = text.data(b"\\N\tq\n");
        assert_eq!(&b[5..], b"2\t\\N\tq\n");
        let mut csv = CopyRewriter::new(CopyLayout::Csv { header: true }, Box::new(Second));
        let c = csv.data(b"id,email\n1,\"a,\"\"b\"\"\n@x\",\n2,,x\n");
        assert_eq!(&c[5..], b"id,email\n1,\"****\",\n2,,x\n");
        let mut bin = CopyRewriter::new(CopyLayout::Binary, Box::new(Second));
        let mut data = BINARY_SIGNATURE.to_vec();
        data.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        data.extend_from_slice(&[0, 2, 0, 0, 0, 1, b'7', 0, 0, 0, 3, b'a', b'b']);
        let d = bin.data(&data);
        let e = bin.data(&[b'c', 0xff, 0xff]);
        let mut expected = BINARY_SIGNATURE.to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&d[5..], &expected[..]);
        assert_eq!(&e[5..], &[0, 2, 0, 0, 0, 1, b'7', 0, 0, 0, 4, b'*', b'*', b'*', b'*', 0xff, 0xff][..]);
    }
}
