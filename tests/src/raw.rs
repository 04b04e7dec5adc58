//! A raw PostgreSQL protocol client, for tests that send exactly the messages an attacker
//! would (pipelines no driver sends, malformed or reordered messages).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = vec![0, 3, 0, 0];
    for (k, v) in params {
        body.extend(k.as_bytes());
        body.push(0);
        body.extend(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend(((body.len() + 4) as u32).to_be_bytes());
    m.extend(body);
    m
}

/// A raw protocol client.
pub struct Raw(pub TcpStream);

impl Raw {
    pub fn connect(addr: &str) -> Self {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Raw(s)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).expect("send");
    }

    /// One message (tag, body); tag 0 at end of stream.
    pub fn message(&mut self) -> (u8, Vec<u8>) {
        let mut header = [0u8; 5];
        if self.0.read_exact(&mut header).is_err() {
            return (0, Vec::new());
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        self.0.read_exact(&mut body).expect("message body");
        (header[0], body)
    }

    /// Messages up to and including ReadyForQuery (or the end of the stream).
    pub fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let m = self.message();
            let tag = m.0;
            out.push(m);
            if tag == b'Z' || tag == 0 {
                return out;
            }
        }
    }

    pub fn login(addr: &str) -> Self {
        let mut raw = Raw::connect(addr);
        raw.send(&startup_packet(&[("user", "postgres"), ("database", "postgres")]));
        let answer = raw.until_ready();
        assert_eq!(answer.last().map(|m| m.0), Some(b'Z'), "login failed: {answer:?}");
        raw
    }
}

pub fn sqlstate(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

pub fn errors(messages: &[(u8, Vec<u8>)]) -> Vec<String> {
    messages.iter().filter(|m| m.0 == b'E').map(|m| sqlstate(&m.1)).collect()
}

/// Parse: a statement `name` (empty: the unnamed one) of `sql`, no parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    body.extend(sql.as_bytes());
    body.extend([0, 0, 0]);
    message(b'P', &body)
}

/// Bind: `portal` from `statement` with text parameters, text results.
pub fn bind(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = portal.as_bytes().to_vec();
    body.push(0);
    body.extend(statement.as_bytes());
    body.push(0);
    body.extend(0u16.to_be_bytes());
    body.extend((params.len() as u16).to_be_bytes());
    for p in params {
        body.extend((p.len() as i32).to_be_bytes());
        body.extend(p.as_bytes());
    }
    body.extend(0u16.to_be_bytes());
    message(b'B', &body)
}

/// Execute: every row of `portal`.
pub fn execute(portal: &str) -> Vec<u8> {
    let mut body = portal.as_bytes().to_vec();
    body.extend([0, 0, 0, 0, 0]);
    message(b'E', &body)
}

/// A simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}
