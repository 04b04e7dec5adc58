//! Messages from the client (frontend), decoded by borrowing from the read buffer.

use super::{DecodeError, Reader, frame};

/// A start-up packet (the first message on a connection, and again after an SSL/GSS refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup<'a> {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        key: &'a [u8],
    },
    Startup {
        version: i32,
        params: Vec<(&'a [u8], &'a [u8])>,
    },
    /// A start-up packet of a protocol other than 3.x (to the server, any other code is one).
    Unsupported {
        major: u16,
        minor: u16,
    },
}

impl<'a> Startup<'a> {
    /// Decodes a whole start-up packet (length prefix included).
    pub fn decode(packet: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b'0', packet.get(4..).unwrap_or_default());
        let code = r.i32("protocol code")?;
        match code {
            frame::SSL_REQUEST => r.finish().map(|()| Self::Ssl),
            frame::GSSENC_REQUEST => r.finish().map(|()| Self::GssEnc),
            frame::CANCEL_REQUEST => {
                let pid = r.i32("process id")?;
                // Protocol 3.2 (PostgreSQL 18) allows secret keys of up to 256 bytes.
                let key = r.remaining();
                if !(4..=256).contains(&key.len()) {
                    return Err(DecodeError::Invalid { tag: '0', what: format!("cancel key of {} bytes", key.len()) });
                }
                Ok(Self::Cancel { pid, key })
            }
            v if v >> 16 == 3 => {
                let mut params = Vec::new();
                loop {
                    let name = r.cstr("parameter name")?;
                    if name.is_empty() {
                        break;
                    }
                    params.push((name, r.cstr("parameter value")?));
                }
                r.finish()?;
                Ok(Self::Startup { version: v, params })
            }
            other => Ok(Self::Unsupported { major: (other as u32 >> 16) as u16, minor: other as u16 }),
        }
    }
}

/// The parts of a Bind message the proxy needs, with the parameters left encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Parameter format codes (0 text, 1 binary), big-endian i16 each.
    pub param_formats: &'a [u8],
    pub param_count: u16,
    /// The encoded parameter values (each an i32 length, -1 for NULL, then bytes).
    params: &'a [u8],
    /// The whole message body (for keeping the parameters with their portal).
    pub body: &'a [u8],
}

impl<'a> Bind<'a> {
    /// Each parameter's value (`None` for SQL NULL) and whether it is in binary format.
    pub fn params(&self) -> impl Iterator<Item = (Option<&'a [u8]>, bool)> + 'a {
        let formats = self.param_formats;
        let nformats = formats.len() / 2;
        let mut rest = self.params;
        (0..self.param_count as usize).map(move |i| {
            let format = match nformats {
                0 => 0,
                1 => i16::from_be_bytes([formats[0], formats[1]]),
                _ => i16::from_be_bytes([formats[2 * i], formats[2 * i + 1]]),
            };
            // Validated at decode: lengths are in bounds.
            let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            rest = &rest[4..];
            let value = if len < 0 {
                None
            } else {
                let (v, r) = rest.split_at(len as usize);
                rest = r;
                Some(v)
            };
            (value, format == 1)
        })
    }
}

/// A regular message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend<'a> {
    Query(&'a [u8]),
    Parse {
        name: &'a [u8],
        sql: &'a [u8],
        param_types: Vec<u32>,
    },
    Bind(Bind<'a>),
    /// `kind` is b'S' (statement) or b'P' (portal).
    Describe {
        kind: u8,
        name: &'a [u8],
    },
    Execute {
        portal: &'a [u8],
        max_rows: i32,
    },
    Close {
        kind: u8,
        name: &'a [u8],
    },
    Sync,
    Flush,
    Terminate,
    CopyData(&'a [u8]),
    CopyDone,
    CopyFail(&'a [u8]),
    FunctionCall {
        function_oid: u32,
    },
    /// PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse: opaque, never logged.
    AuthResponse(&'a [u8]),
}

impl<'a> Frontend<'a> {
    /// Decodes a message body given its type byte.
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(tag, body);
        let msg = match tag {
            b'Q' => {
                let sql = r.cstr("query")?;
                r.finish()?;
                Self::Query(sql)
            }
            b'P' => {
                let name = r.cstr("statement name")?;
                let sql = r.cstr("query")?;
                // Counts are unsigned 16-bit to the server (up to 65,535 parameters).
                let n = r.i16("parameter type count")? as u16;
                let mut param_types = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    param_types.push(r.i32("parameter type")? as u32);
                }
                r.finish()?;
                Self::Parse { name, sql, param_types }
            }
            b'B' => Self::Bind(decode_bind(&mut r)?),
            b'D' | b'C' => {
                let kind = r.u8("kind")?;
                if kind != b'S' && kind != b'P' {
                    return Err(invalid(tag, format!("kind {:?} is neither 'S' nor 'P'", kind as char)));
                }
                let name = r.cstr("name")?;
                r.finish()?;
                if tag == b'D' { Self::Describe { kind, name } } else { Self::Close { kind, name } }
            }
            b'E' => {
                let portal = r.cstr("portal name")?;
                let max_rows = r.i32("row limit")?;
                r.finish()?;
                Self::Execute { portal, max_rows }
            }
            b'S' => r.finish().map(|()| Self::Sync)?,
            b'H' => r.finish().map(|()| Self::Flush)?,
            // The server never reads the body of these three (a CopyFail's reason only to
            // quote it in the error that ends the COPY).
            b'X' => Self::Terminate,
            b'd' => Self::CopyData(body),
            b'c' => Self::CopyDone,
            b'f' => Self::CopyFail(body.split(|&b| b == 0).next().unwrap_or_default()),
            b'F' => Self::FunctionCall { function_oid: r.i32("function oid")? as u32 },
            b'p' => Self::AuthResponse(body),
            other => return Err(DecodeError::UnknownTag(other as char)),
        };
        Ok(msg)
    }
}

fn invalid(tag: u8, what: String) -> DecodeError {
    DecodeError::Invalid { tag: tag as char, what }
}

fn decode_bind<'a>(r: &mut Reader<'a>) -> Result<Bind<'a>, DecodeError> {
    let tag = b'B';
    let body = r.remaining();
    let portal = r.cstr("portal name")?;
    let statement = r.cstr("statement name")?;
    // Counts are unsigned 16-bit to the server (up to 65,535 parameters).
    let nformats = r.i16("parameter format count")? as u16;
    let param_formats = r.bytes(2 * nformats as usize, "parameter formats")?;
    for f in param_formats.chunks_exact(2) {
        let f = i16::from_be_bytes([f[0], f[1]]);
        if f != 0 && f != 1 {
            return Err(invalid(tag, format!("parameter format code {f}")));
        }
    }
    let nparams = r.i16("parameter count")? as u16;
    if nformats > 1 && nformats != nparams {
        return Err(invalid(tag, format!("{nformats} format codes for {nparams} parameters")));
    }
    let start = r.remaining();
    for _ in 0..nparams {
        let len = r.i32("parameter length")?;
        if len < -1 {
            return Err(invalid(tag, format!("parameter length {len}")));
        }
        if len > 0 {
            r.bytes(len as usize, "parameter value")?;
        }
    }
    let params = &start[..start.len() - r.remaining().len()];
    let nresults = r.i16("result format count")? as u16;
    r.bytes(2 * nresults as usize, "result formats")?;
    r.finish()?;
    Ok(Bind { portal, statement, param_formats, param_count: nparams, params, body })
}

/// The result format codes at the end of a Bind body (`None`: a malformed body).
pub fn bind_result_formats(body: &[u8]) -> Option<Vec<i16>> {
    fn cstr(b: &[u8]) -> Option<&[u8]> {
        let end = b.iter().position(|&c| c == 0)?;
        Some(&b[end + 1..])
    }
    fn i16_at(b: &[u8]) -> Option<(i16, &[u8])> {
        Some((i16::from_be_bytes(b.get(..2)?.try_into().ok()?), &b[2..]))
    }
    let rest = cstr(cstr(body)?)?;
    let (nformats, mut rest) = i16_at(rest)?;
    rest = rest.get(2 * usize::try_from(nformats).ok()?..)?;
    let (nparams, mut rest) = i16_at(rest)?;
    for _ in 0..nparams {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len > 0 {
            rest = rest.get(len as usize..)?;
        }
    }
    let (nresults, mut rest) = i16_at(rest)?;
    let mut out = Vec::with_capacity(usize::try_from(nresults).ok()?);
    for _ in 0..nresults {
        let (f, r) = i16_at(rest)?;
        out.push(f);
        rest = r;
    }
    rest.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind_body(formats: &[i16], params: &[Option<&[u8]>], results: &[i16]) -> Vec<u8> {
        let mut b = b"p1\0s1\0".to_vec();
        b.extend((formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend(f.to_be_bytes());
        }
        b.extend((params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                None => b.extend((-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend(*v);
                }
            }
        }
        b.extend((results.len() as i16).to_be_bytes());
        for f in results {
            b.extend(f.to_be_bytes());
        }
        b
    }

    #[test]
    fn counts_are_unsigned_as_the_server_reads_them() {
        let nulls = vec![None; 40_000];
        let body = bind_body(&[], &nulls, &[]);
        let Ok(Frontend::Bind(b)) = Frontend::decode(b'B', &body) else { panic!("40,000 parameters") };
        assert_eq!((b.param_count, b.params().count()), (40_000, 40_000));
    }

    #[test]
    fn startup_packets() {
        let mut p = vec![0, 0, 0, 0, 0, 3, 0, 0];
        p.extend(b"user\0alice\0database\0db\0\0");
        let len = p.len() as u32;
        p[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            Startup::decode(&p),
            Ok(Startup::Startup {
                version: 196_608,
                params: vec![(&b"user"[..], &b"alice"[..]), (&b"database"[..], &b"db"[..])]
            })
        );
        assert_eq!(Startup::decode(&[0, 0, 0, 8, 4, 210, 22, 47]), Ok(Startup::Ssl));
        assert_eq!(Startup::decode(&[0, 0, 0, 8, 4, 210, 22, 48]), Ok(Startup::GssEnc));
        assert_eq!(
            Startup::decode(&[0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 7, 1, 2, 3, 4]),
            Ok(Startup::Cancel { pid: 7, key: &[1, 2, 3, 4] })
        );
        assert_eq!(Startup::decode(&[0, 0, 0, 8, 0, 2, 0, 0]), Ok(Startup::Unsupported { major: 2, minor: 0 }));
        assert_eq!(Startup::decode(&[0, 0, 0, 8, 0, 4, 0, 1]), Ok(Startup::Unsupported { major: 4, minor: 1 }));
        assert!(Startup::decode(&[0, 0, 0, 10, 0, 3, 0, 0, b'u', b's']).is_err(), "unterminated");
    }

    #[test]
    fn bind_round_trips_parameters() {
        let body = bind_body(&[1], &[Some(b"\0\0\0\x2a"), None, Some(b"")], &[0]);
        let Frontend::Bind(b) = Frontend::decode(b'B', &body).unwrap() else { panic!() };
        assert_eq!((b.portal, b.statement, b.param_count), (&b"p1"[..], &b"s1"[..], 3));
        let params: Vec<_> = b.params().collect();
        assert_eq!(params, vec![(Some(&b"\0\0\0\x2a"[..]), true), (None, true), (Some(&b""[..]), true)]);
    }

    #[test]
    fn malformed_bind_is_rejected_not_panicking() {
        let good = bind_body(&[0, 1], &[Some(b"1"), Some(b"2")], &[]);
        for cut in 0..good.len() {
            assert!(Frontend::decode(b'B', &good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Frontend::decode(b'B', &bind_body(&[0, 1, 0], &[Some(b"1")], &[])).is_err());
        assert!(Frontend::decode(b'B', &bind_body(&[7], &[Some(b"1")], &[])).is_err());
        let mut huge = bind_body(&[], &[Some(b"1")], &[]);
        huge[10..14].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(Frontend::decode(b'B', &huge).is_err());
    }

    #[test]
    fn messages() {
        assert_eq!(Frontend::decode(b'Q', b"select 1\0"), Ok(Frontend::Query(b"select 1")));
        assert!(Frontend::decode(b'Q', b"select 1").is_err(), "missing NUL");
        // Text in a non-UTF-8 client encoding is relayed as it is.
        assert_eq!(Frontend::decode(b'Q', b"select '\xe9'\0"), Ok(Frontend::Query(b"select '\xe9'")));
        assert_eq!(
            Frontend::decode(b'P', b"s\0select $1\0\0\x01\0\0\0\x17"),
            Ok(Frontend::Parse { name: b"s", sql: b"select $1", param_types: vec![23] })
        );
        assert_eq!(Frontend::decode(b'E', b"\0\0\0\0\0"), Ok(Frontend::Execute { portal: b"", max_rows: 0 }));
        assert_eq!(Frontend::decode(b'D', b"Sname\0"), Ok(Frontend::Describe { kind: b'S', name: b"name" }));
        assert!(Frontend::decode(b'D', b"Xname\0").is_err());
        assert_eq!(Frontend::decode(b'S', b""), Ok(Frontend::Sync));
        assert!(Frontend::decode(b'S', b"x").is_err());
        assert_eq!(Frontend::decode(b'?', b""), Err(DecodeError::UnknownTag('?')));
    }
}
