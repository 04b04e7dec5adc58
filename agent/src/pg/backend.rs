//! Messages from the server (backend), decoded by borrowing from the read buffer. DataRow and
//! CopyData are never decoded on the relay path; their bodies are only exposed for hooks.

use super::{DecodeError, Reader};

/// One column of a RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a [u8],
    /// OID of the table the column comes from (0 if it is not a plain table column).
    pub table_oid: u32,
    /// Attribute number within that table (0 if none).
    pub column: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// A RowDescription, validated at decode, its fields read on demand (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowDescription<'a> {
    count: u16,
    /// The field entries (after the count).
    fields: &'a [u8],
}

impl<'a> RowDescription<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let n = r.i16("field count")?;
        if n < 0 {
            return Err(DecodeError::Invalid { tag: 'T', what: format!("field count {n}") });
        }
        let fields = r.remaining();
        for _ in 0..n {
            read_field(r)?;
        }
        r.finish()?;
        Ok(Self { count: n as u16, fields })
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn fields(&self) -> impl Iterator<Item = Field<'a>> + 'a {
        let mut r = Reader::new(b'T', self.fields);
        // Validated at decode: every read succeeds.
        (0..self.count).filter_map(move |_| read_field(&mut r).ok())
    }
}

fn read_field<'a>(r: &mut Reader<'a>) -> Result<Field<'a>, DecodeError> {
    Ok(Field {
        name: r.cstr("field name")?,
        table_oid: r.i32("table oid")? as u32,
        column: r.i16("column number")?,
        type_oid: r.i32("type oid")? as u32,
        type_size: r.i16("type size")?,
        type_modifier: r.i32("type modifier")?,
        format: r.i16("format code")?,
    })
}

/// Authentication request codes.
pub const AUTH_OK: i32 = 0;
pub const AUTH_SASL: i32 = 10;
/// SASL's last word (the server's signature): no answer is expected from the client.
pub const AUTH_SASL_FINAL: i32 = 12;

/// A regular message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend<'a> {
    Authentication {
        code: i32,
        data: &'a [u8],
    },
    ParameterStatus {
        name: &'a [u8],
        value: &'a [u8],
    },
    BackendKeyData {
        pid: i32,
        key: &'a [u8],
    },
    ReadyForQuery {
        status: u8,
    },
    RowDescription(RowDescription<'a>),
    DataRow(&'a [u8]),
    CommandComplete {
        tag: &'a [u8],
    },
    EmptyQueryResponse,
    ErrorResponse {
        fields: Vec<(u8, &'a [u8])>,
    },
    NoticeResponse {
        fields: Vec<(u8, &'a [u8])>,
    },
    /// CopyInResponse ('G'), CopyOutResponse ('H'), CopyBothResponse ('W').
    CopyResponse {
        tag: u8,
        binary: bool,
        columns: u16,
    },
    CopyData(&'a [u8]),
    CopyDone,
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    PortalSuspended,
    ParameterDescription {
        types: Vec<u32>,
    },
    NotificationResponse {
        pid: i32,
        channel: &'a [u8],
        payload: &'a [u8],
    },
    FunctionCallResponse(&'a [u8]),
    NegotiateProtocolVersion {
        newest_minor: i32,
        unsupported: Vec<&'a [u8]>,
    },
}

impl<'a> Backend<'a> {
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(tag, body);
        let empty = |r: &Reader<'a>, m: Self| r.finish().map(|()| m);
        let msg = match tag {
            b'R' => Self::Authentication { code: r.i32("auth code")?, data: r.remaining() },
            b'S' => {
                let name = r.cstr("parameter name")?;
                let value = r.cstr("parameter value")?;
                r.finish()?;
                Self::ParameterStatus { name, value }
            }
            b'K' => {
                let pid = r.i32("process id")?;
                let key = r.remaining();
                if !(4..=256).contains(&key.len()) {
                    return Err(DecodeError::Invalid { tag: 'K', what: format!("secret key of {} bytes", key.len()) });
                }
                Self::BackendKeyData { pid, key }
            }
            b'Z' => {
                let status = r.u8("transaction status")?;
                if !matches!(status, b'I' | b'T' | b'E') {
                    return Err(DecodeError::Invalid {
                        tag: 'Z',
                        what: format!("transaction status {:?}", status as char),
                    });
                }
                r.finish()?;
                Self::ReadyForQuery { status }
            }
            b'T' => Self::RowDescription(RowDescription::decode(&mut r)?),
            b'D' => Self::DataRow(body),
            b'C' => {
                let tag = r.cstr("command tag")?;
                r.finish()?;
                Self::CommandComplete { tag }
            }
            b'I' => empty(&r, Self::EmptyQueryResponse)?,
            b'E' | b'N' => {
                let mut fields = Vec::new();
                loop {
                    let code = r.u8("field type")?;
                    if code == 0 {
                        break;
                    }
                    fields.push((code, r.cstr("field value")?));
                }
                r.finish()?;
                if tag == b'E' { Self::ErrorResponse { fields } } else { Self::NoticeResponse { fields } }
            }
            b'G' | b'H' | b'W' => {
                let format = r.u8("copy format")?;
                let columns = r.i16("column count")?;
                if columns < 0 {
                    return Err(DecodeError::Invalid { tag: tag as char, what: format!("column count {columns}") });
                }
                r.bytes(2 * columns as usize, "column formats")?;
                r.finish()?;
                Self::CopyResponse { tag, binary: format == 1, columns: columns as u16 }
            }
            b'd' => Self::CopyData(body),
            b'c' => empty(&r, Self::CopyDone)?,
            b'1' => empty(&r, Self::ParseComplete)?,
            b'2' => empty(&r, Self::BindComplete)?,
            b'3' => empty(&r, Self::CloseComplete)?,
            b'n' => empty(&r, Self::NoData)?,
            b's' => empty(&r, Self::PortalSuspended)?,
            b't' => {
                let n = r.i16("parameter count")?;
                let mut types = Vec::with_capacity(n.max(0) as usize);
                for _ in 0..n {
                    types.push(r.i32("parameter type")? as u32);
                }
                r.finish()?;
                Self::ParameterDescription { types }
            }
            b'A' => {
                let pid = r.i32("process id")?;
                let channel = r.cstr("channel")?;
                let payload = r.cstr("payload")?;
                r.finish()?;
                Self::NotificationResponse { pid, channel, payload }
            }
            b'V' => Self::FunctionCallResponse(body),
            b'v' => {
                let newest_minor = r.i32("newest minor version")?;
                let n = r.i32("option count")?;
                let mut unsupported = Vec::new();
                for _ in 0..n.max(0) {
                    unsupported.push(r.cstr("option")?);
                }
                r.finish()?;
                Self::NegotiateProtocolVersion { newest_minor, unsupported }
            }
            other => return Err(DecodeError::UnknownTag(other as char)),
        };
        Ok(msg)
    }
}

/// The SASL mechanisms of an AuthenticationSASL body (after the code).
pub fn sasl_mechanisms(data: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let mut r = Reader::new(b'R', data);
    let mut out = Vec::new();
    loop {
        let m = r.cstr("SASL mechanism")?;
        if m.is_empty() {
            break;
        }
        out.push(m);
    }
    r.finish()?;
    Ok(out)
}

/// Number of columns in a DataRow body, without decoding the values.
pub fn data_row_columns(body: &[u8]) -> Option<u16> {
    body.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// The value of an error/notice field (`b'C'` SQLSTATE, `b'M'` message, ...).
pub fn field<'a>(fields: &[(u8, &'a [u8])], code: u8) -> Option<&'a [u8]> {
    fields.iter().find(|(c, _)| *c == code).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_the_session_needs() {
        assert_eq!(Backend::decode(b'Z', b"I"), Ok(Backend::ReadyForQuery { status: b'I' }));
        assert!(Backend::decode(b'Z', b"X").is_err());
        assert_eq!(Backend::decode(b'C', b"SELECT 3\0"), Ok(Backend::CommandComplete { tag: b"SELECT 3" }));
        assert_eq!(
            Backend::decode(b'E', b"SERROR\0C42501\0Mno\0\0"),
            Ok(Backend::ErrorResponse {
                fields: vec![(b'S', &b"ERROR"[..]), (b'C', &b"42501"[..]), (b'M', &b"no"[..])]
            })
        );
        assert_eq!(Backend::decode(b'K', b"\0\0\0\x07abcd"), Ok(Backend::BackendKeyData { pid: 7, key: b"abcd" }));
        assert_eq!(
            Backend::decode(b'A', b"\0\0\0\x01chan\0hello\0"),
            Ok(Backend::NotificationResponse { pid: 1, channel: b"chan", payload: b"hello" })
        );
        let mut t = vec![0, 1];
        t.extend(b"id\0");
        t.extend(16384u32.to_be_bytes());
        t.extend(1i16.to_be_bytes());
        t.extend(23u32.to_be_bytes());
        t.extend(4i16.to_be_bytes());
        t.extend((-1i32).to_be_bytes());
        t.extend(0i16.to_be_bytes());
        let Backend::RowDescription(desc) = Backend::decode(b'T', &t).unwrap() else { panic!() };
        let fields: Vec<_> = desc.fields().collect();
        assert_eq!(desc.len(), 1);
        assert_eq!(fields[0].name, b"id");
        assert_eq!((fields[0].table_oid, fields[0].column, fields[0].type_oid), (16384, 1, 23));
        for cut in 0..t.len() {
            assert!(Backend::decode(b'T', &t[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn sasl_mechanism_list() {
        assert_eq!(
            sasl_mechanisms(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0").unwrap(),
            vec![&b"SCRAM-SHA-256-PLUS"[..], &b"SCRAM-SHA-256"[..]]
        );
        assert!(sasl_mechanisms(b"SCRAM").is_err());
    }
}
