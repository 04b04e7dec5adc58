//! The parameters of COM_STMT_EXECUTE, for the records and the hooks: read from the binary
//! protocol (a NULL bitmap, the types when the client binds new ones, then each value in its
//! type's binary form) into a form that decodes without the statement's context.
//!
//! The form: per parameter, one byte (0 NULL, 1 text, 2 bytes) and, unless NULL, a u32 length
//! (little-endian) and the value: numbers and dates are rendered as text, strings kept as sent,
//! anything else as its bytes. A value sent before as long data (COM_STMT_SEND_LONG_DATA) is the
//! text `(long data)`.

use super::packet;

const NULL: u8 = 0;
const TEXT: u8 = 1;
const BYTES: u8 = 2;

/// A parameter's type as the client bound it: MySQL's type code and whether it is unsigned.
pub type ParamType = (u8, bool);

/// Reads the parameters of an execute's payload (from its command byte) for a statement of
/// `count` parameters; `types` holds the types bound last and is updated when the client binds
/// new ones; `long_data`, the parameters sent as long data. `None`: the packet does not read
/// as an execute of that many parameters.
pub fn normalise(payload: &[u8], count: usize, types: &mut Vec<ParamType>, long_data: &[u16]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    if count == 0 {
        return Some(out);
    }
    // Command, statement id, flags, iteration count.
    let mut rest = payload.get(10..)?;
    let bitmap = rest.get(..count.div_ceil(8))?;
    rest = &rest[bitmap.len()..];
    let (&bound, after) = rest.split_first()?;
    rest = after;
    if bound == 1 {
        let raw = rest.get(..2 * count)?;
        rest = &rest[2 * count..];
        *types = raw.chunks(2).map(|t| (t[0], t[1] & 0x80 != 0)).collect();
    }
    if types.len() != count {
        return None;
    }
    for (i, &(kind, unsigned)) in types.iter().enumerate() {
        // The server binds long data first, whatever the NULL bitmap says.
        if long_data.contains(&(i as u16)) {
            put(&mut out, TEXT, b"(long data)");
            continue;
        }
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            out.push(NULL);
            continue;
        }
        let (form, value) = value(kind, unsigned, &mut rest)?;
        put(&mut out, form, &value);
    }
    Some(out)
}

/// One value at the front of `rest`, advancing it: its form and bytes.
fn value(kind: u8, unsigned: bool, rest: &mut &[u8]) -> Option<(u8, Vec<u8>)> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let v = rest.get(..n)?;
        *rest = &rest[n..];
        Some(v)
    };
    let text = |s: String| Some((TEXT, s.into_bytes()));
    match kind {
        0x06 => Some((NULL, Vec::new())),
        0x01 => {
            let b = take(1)?[0];
            text(if unsigned { b.to_string() } else { (b as i8).to_string() })
        }
        0x02 | 0x0d => {
            let v = u16::from_le_bytes(take(2)?.try_into().ok()?);
            text(if unsigned { v.to_string() } else { (v as i16).to_string() })
        }
        0x03 | 0x09 => {
            let v = u32::from_le_bytes(take(4)?.try_into().ok()?);
            text(if unsigned { v.to_string() } else { (v as i32).to_string() })
        }
        0x08 => {
            let v = u64::from_le_bytes(take(8)?.try_into().ok()?);
            text(if unsigned { v.to_string() } else { (v as i64).to_string() })
        }
        0x04 => text(f32::from_le_bytes(take(4)?.try_into().ok()?).to_string()),
        0x05 => text(f64::from_le_bytes(take(8)?.try_into().ok()?).to_string()),
        // DATE, DATETIME, TIMESTAMP: length, then year, month, day [, h, m, s [, µs]].
        0x07 | 0x0a | 0x0c => {
            let n = usize::from(take(1)?[0]);
            let b = take(n)?;
            let at = |i: usize| b.get(i).copied().unwrap_or(0);
            let year = u16::from_le_bytes([at(0), at(1)]);
            let mut s = format!("{year:04}-{:02}-{:02}", at(2), at(3));
            if n >= 7 {
                s.push_str(&format!(" {:02}:{:02}:{:02}", at(4), at(5), at(6)));
            }
            if n >= 11 {
                s.push_str(&format!(".{:06}", u32::from_le_bytes([at(7), at(8), at(9), at(10)])));
            }
            text(s)
        }
        // TIME: length, then sign, days, h, m, s [, µs].
        0x0b => {
            let n = usize::from(take(1)?[0]);
            let b = take(n)?;
            let at = |i: usize| b.get(i).copied().unwrap_or(0);
            let days = u32::from_le_bytes([at(1), at(2), at(3), at(4)]);
            let hours = u64::from(days) * 24 + u64::from(at(5));
            let mut s = format!("{}{hours:02}:{:02}:{:02}", if at(0) == 1 { "-" } else { "" }, at(6), at(7));
            if n >= 12 {
                s.push_str(&format!(".{:06}", u32::from_le_bytes([at(8), at(9), at(10), at(11)])));
            }
            text(s)
        }
        // Strings, decimals, JSON, blobs, BIT, GEOMETRY: length-encoded.
        _ => {
            let v = packet::lenenc_bytes(rest)?;
            let form = if std::str::from_utf8(v).is_ok() { TEXT } else { BYTES };
            Some((form, v.to_vec()))
        }
    }
}

fn put(out: &mut Vec<u8>, form: u8, value: &[u8]) {
    out.push(form);
    if form != NULL {
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
}

/// Decodes the form [`normalise`] writes: each parameter (`None`: NULL) and whether it is bytes.
pub fn decode(message: &[u8]) -> Vec<(Option<&[u8]>, bool)> {
    let mut out = Vec::new();
    let mut rest = message;
    while let Some((&form, after)) = rest.split_first() {
        rest = after;
        if form == NULL {
            out.push((None, false));
            continue;
        }
        let Some(len) = rest.get(..4).map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize) else { break };
        let Some(value) = rest.get(4..4 + len) else { break };
        rest = &rest[4 + len..];
        out.push((Some(value), form == BYTES));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executes_parameters_are_read_with_the_types_bound_last() {
        // id 1, flags 0, iterations 1; 4 parameters: INT -7, NULL, VARCHAR 'ann', DATETIME.
        let mut p = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0];
        p.push(0b0000_0010);
        p.push(1);
        p.extend_from_slice(&[0x03, 0, 0xfd, 0, 0xfd, 0, 0x0c, 0]);
        p.extend_from_slice(&(-7i32).to_le_bytes());
        p.extend_from_slice(b"\x03ann");
        p.extend_from_slice(&[7, 0xe8, 0x07, 11, 29, 20, 5, 9]);
        let mut types = Vec::new();
        let message = normalise(&p, 4, &mut types, &[]).unwrap();
        let values = decode(&message);
        let shown: Vec<Option<&str>> = values.iter().map(|(v, _)| v.map(|b| std::str::from_utf8(b).unwrap())).collect();
        assert_eq!(shown, [Some("-7"), None, Some("ann"), Some("2024-11-29 20:05:09")]);
        // Executed again without new types: the same ones; the third sent as long data.
        let mut again = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0b0000_0010, 0];
        again.extend_from_slice(&5i32.to_le_bytes());
        again.extend_from_slice(&[4, 0xe8, 0x07, 1, 2]);
        let message = normalise(&again, 4, &mut types, &[2]).unwrap();
        let shown: Vec<Option<Vec<u8>>> = decode(&message).into_iter().map(|(v, _)| v.map(<[u8]>::to_vec)).collect();
        assert_eq!(shown, [Some(b"5".to_vec()), None, Some(b"(long data)".to_vec()), Some(b"2024-01-02".to_vec())]);
        // Long data wins over the NULL bit, as the server binds it.
        let message = normalise(&again, 4, &mut types, &[1, 2]).unwrap();
        assert_eq!(decode(&message)[1].0, Some(&b"(long data)"[..]));
        assert_eq!(decode(&message)[3].0, Some(&b"2024-01-02"[..]));
        // Truncated: not read.
        assert!(normalise(&p[..p.len() - 3], 4, &mut Vec::new(), &[]).is_none());
        assert!(normalise(&again, 3, &mut vec![(3, false)], &[]).is_none());
    }
}
