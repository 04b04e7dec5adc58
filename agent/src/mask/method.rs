//! Masking methods: what a protected value becomes. A masked value must still parse as its
//! column's type (a client decodes it by the column's type OID and format), so each method is
//! defined per class of type; where it has no sound form for a type the value becomes NULL,
//! which every type accepts.
//!
//! | method             | text-like types                        | integers        | uuid        | json/jsonb        | other |
//! |--------------------|----------------------------------------|-----------------|-------------|-------------------|-------|
//! | `redact`           | `****` (length hidden)                 | NULL            | NULL        | `"****"`          | NULL  |
//! | `partial` (last N) | `*` for all but the last N characters  | NULL            | NULL        | NULL              | NULL  |
//! | `token`            | `tok1_` + 24 hex (keyed, deterministic) | keyed integer   | keyed uuid  | `"tok1_..."`      | NULL  |
//! | `format_preserving`| same shape: emails stay emails, cards stay Luhn-valid cards of the same brand digit, letters stay letters, digits digits | keyed integer | keyed uuid | NULL | NULL |
//! | `null`             | NULL                                   | NULL            | NULL        | NULL              | NULL  |
//!
//! Tokens and format-preserving values are keyed (tokens: SipHash-2-4-128 under a key derived
//! from the mask key; the rest HMAC-SHA-256, `keys.rs`): the same value gives
//! the same mask under the same key version, so joins and GROUP BY still work, and nobody
//! without the key can tell which value it was (a dictionary attack needs the key). A token
//! names its key version (`tok1_`), so a rotation is visible.

use super::keys::Key;

/// What a protected value becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Redact,
    /// Keep the last `keep_last` characters (never the whole value).
    Partial {
        keep_last: u8,
    },
    Token,
    FormatPreserving,
    Null,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Redact => "redact",
            Method::Partial { .. } => "partial",
            Method::Token => "token",
            Method::FormatPreserving => "format_preserving",
            Method::Null => "null",
        }
    }
}

/// How a column's type constrains its masked values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeClass {
    /// text, varchar, bpchar, name, "char", unknown: any string parses.
    Text,
    /// json (`jsonb: false`) or jsonb: the value must stay JSON.
    Json {
        jsonb: bool,
    },
    /// int2, int4, int8 (width in bytes).
    Integer {
        width: u8,
    },
    Uuid,
    /// Everything else: only NULL is sure to parse.
    Other,
}

impl TypeClass {
    /// The class of a PostgreSQL type OID.
    pub fn of(type_oid: u32) -> TypeClass {
        match type_oid {
            18 | 19 | 25 | 705 | 1042 | 1043 => TypeClass::Text,
            114 => TypeClass::Json { jsonb: false },
            3802 => TypeClass::Json { jsonb: true },
            21 => TypeClass::Integer { width: 2 },
            23 => TypeClass::Integer { width: 4 },
            20 => TypeClass::Integer { width: 8 },
            2950 => TypeClass::Uuid,
            _ => TypeClass::Other,
        }
    }
}

/// A masked value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masked {
    Value(Vec<u8>),
    Null,
}

/// [`mask_text`], the masked value appended to `out`: false when it is NULL (nothing appended).
/// The common methods write without allocating.
pub fn mask_text_into(method: Method, value: &[u8], class: TypeClass, key: &Key, out: &mut Vec<u8>) -> bool {
    match (method, class) {
        (Method::Redact, TypeClass::Text) => {
            out.extend_from_slice(b"****");
            true
        }
        (Method::Token, TypeClass::Text) => {
            token_into(value, key, out);
            true
        }
        _ => match mask_text(method, value, class, key) {
            Masked::Value(v) => {
                out.extend_from_slice(&v);
                true
            }
            Masked::Null => false,
        },
    }
}

/// [`mask_binary`], appended to `out` likewise.
pub fn mask_binary_into(method: Method, value: &[u8], class: TypeClass, key: &Key, out: &mut Vec<u8>) -> bool {
    match class {
        TypeClass::Text | TypeClass::Json { jsonb: false } => mask_text_into(method, value, class, key, out),
        _ => match mask_binary(method, value, class, key) {
            Masked::Value(v) => {
                out.extend_from_slice(&v);
                true
            }
            Masked::Null => false,
        },
    }
}

/// Masks a value sent in text format.
pub fn mask_text(method: Method, value: &[u8], class: TypeClass, key: &Key) -> Masked {
    let text = String::from_utf8_lossy(value);
    match (method, class) {
        (Method::Null, _) | (_, TypeClass::Other) => Masked::Null,
        (Method::Redact, TypeClass::Text) => Masked::Value(b"****".to_vec()),
        (Method::Redact, TypeClass::Json { .. }) => Masked::Value(b"\"****\"".to_vec()),
        (Method::Partial { keep_last }, TypeClass::Text) => Masked::Value(partial(&text, keep_last).into_bytes()),
        (Method::Token, TypeClass::Text) => Masked::Value(token(value, key).into_bytes()),
        (Method::Token, TypeClass::Json { .. }) => Masked::Value(format!("\"{}\"", token(value, key)).into_bytes()),
        (Method::Token | Method::FormatPreserving, TypeClass::Integer { width }) => {
            Masked::Value(keyed_integer(value, width, key).to_string().into_bytes())
        }
        (Method::Token | Method::FormatPreserving, TypeClass::Uuid) => {
            Masked::Value(uuid_text(&keyed_uuid(value, key)))
        }
        (Method::FormatPreserving, TypeClass::Text) => Masked::Value(format_preserving(&text, key).into_bytes()),
        _ => Masked::Null,
    }
}

/// Masks a value sent in binary format.
pub fn mask_binary(method: Method, value: &[u8], class: TypeClass, key: &Key) -> Masked {
    match class {
        // The binary form of text types is their text; of json, its text; of jsonb, a version
        // byte then its text.
        TypeClass::Text | TypeClass::Json { jsonb: false } => mask_text(method, value, class, key),
        TypeClass::Json { jsonb: true } => match value.split_first() {
            Some((1, text)) => match mask_text(method, text, class, key) {
                Masked::Value(v) => Masked::Value([&[1u8][..], &v].concat()),
                Masked::Null => Masked::Null,
            },
            _ => Masked::Null,
        },
        TypeClass::Integer { width } => match method {
            Method::Token | Method::FormatPreserving => {
                let n = keyed_integer(value, width, key);
                Masked::Value(match width {
                    2 => (n as i16).to_be_bytes().to_vec(),
                    4 => (n as i32).to_be_bytes().to_vec(),
                    _ => n.to_be_bytes().to_vec(),
                })
            }
            _ => Masked::Null,
        },
        TypeClass::Uuid => match method {
            Method::Token | Method::FormatPreserving => Masked::Value(keyed_uuid(value, key).to_vec()),
            _ => Masked::Null,
        },
        TypeClass::Other => Masked::Null,
    }
}

/// All but the last `keep` characters as `*`; a value no longer than `keep` entirely.
fn partial(text: &str, keep: u8) -> String {
    let count = text.chars().count();
    let keep = usize::from(keep);
    if count <= keep {
        return "*".repeat(count.max(1));
    }
    let mut out = "*".repeat(count - keep);
    out.extend(text.chars().skip(count - keep));
    out
}

fn token(value: &[u8], key: &Key) -> String {
    let mut out = Vec::with_capacity(32);
    token_into(value, key, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// `tok<version>_` and 24 hex digits of the keyed MAC, appended to `out`.
fn token_into(value: &[u8], key: &Key, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mac = key.token_prf(value);
    out.extend_from_slice(b"tok");
    let mut n = key.version;
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.push(b'_');
    for b in &mac[..12] {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// A keyed non-negative integer that fits the type's width.
fn keyed_integer(value: &[u8], width: u8, key: &Key) -> i64 {
    let mac = key.mac("integer", value);
    let n = u64::from_be_bytes(mac[..8].try_into().expect("8 bytes"));
    match width {
        2 => (n % (i16::MAX as u64 + 1)) as i64,
        4 => (n % (i32::MAX as u64 + 1)) as i64,
        _ => (n >> 1) as i64,
    }
}

fn keyed_uuid(value: &[u8], key: &Key) -> [u8; 16] {
    let mac = key.mac("uuid", value);
    let mut id: [u8; 16] = mac[..16].try_into().expect("16 bytes");
    // A version-8 (custom) RFC 9562 UUID: clients that check the layout accept it.
    id[6] = (id[6] & 0x0f) | 0x80;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

fn uuid_text(id: &[u8; 16]) -> Vec<u8> {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]).into_bytes()
}

/// A keyed stream of bytes for `value` (as long as needed).
struct Stream<'k> {
    key: &'k Key,
    value: Vec<u8>,
    block: [u8; 32],
    used: usize,
    counter: u32,
}

impl<'k> Stream<'k> {
    fn new(key: &'k Key, purpose: &str, value: &[u8]) -> Self {
        let mut seeded = purpose.as_bytes().to_vec();
        seeded.push(0);
        seeded.extend_from_slice(value);
        Stream { key, value: seeded, block: [0; 32], used: 32, counter: 0 }
    }

    fn next(&mut self) -> u8 {
        if self.used == 32 {
            let mut input = self.value.clone();
            input.extend_from_slice(&self.counter.to_be_bytes());
            self.block = self.key.mac("stream", &input);
            self.counter += 1;
            self.used = 0;
        }
        self.used += 1;
        self.block[self.used - 1]
    }

    /// A keyed character of the same class as `c` (ASCII letters and digits; anything else
    /// kept).
    fn like(&mut self, c: char) -> char {
        match c {
            'a'..='z' => (b'a' + self.next() % 26) as char,
            'A'..='Z' => (b'A' + self.next() % 26) as char,
            '0'..='9' => (b'0' + self.next() % 10) as char,
            other if other.is_alphanumeric() => (b'a' + self.next() % 26) as char,
            other => other,
        }
    }
}

/// Same shape: an email stays an email (the domain's last label kept), a card number stays a
/// Luhn-valid number of the same length and first digit, anything else keeps its letters,
/// digits and punctuation in place.
fn format_preserving(text: &str, key: &Key) -> String {
    if let Some(card) = card_digits(text) {
        return format_preserving_card(text, card, key);
    }
    let mut stream = Stream::new(key, "fpe", text.as_bytes());
    if let Some((local, domain)) = text.rsplit_once('@')
        && let Some((labels, tld)) = domain.rsplit_once('.')
        && !local.is_empty()
        && !labels.is_empty()
    {
        let local: String = local.chars().map(|c| stream.like(c)).collect();
        let labels: String = labels.chars().map(|c| stream.like(c)).collect();
        return format!("{local}@{labels}.{tld}");
    }
    text.chars().map(|c| stream.like(c)).collect()
}

/// The digits of a card number written with optional spaces or hyphens (13 to 19 digits,
/// Luhn-valid).
fn card_digits(text: &str) -> Option<Vec<u8>> {
    if !text.chars().all(|c| c.is_ascii_digit() || c == ' ' || c == '-') {
        return None;
    }
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
    ((13..=19).contains(&digits.len()) && luhn_valid(&digits)).then_some(digits)
}

pub(crate) fn luhn_valid(digits: &[u8]) -> bool {
    luhn_sum(digits).is_multiple_of(10)
}

fn luhn_sum(digits: &[u8]) -> u32 {
    digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum()
}

fn format_preserving_card(text: &str, digits: Vec<u8>, key: &Key) -> String {
    let mut stream = Stream::new(key, "fpe-card", &digits);
    let n = digits.len();
    let mut new: Vec<u8> = Vec::with_capacity(n);
    new.push(digits[0]);
    for _ in 1..n - 1 {
        new.push(stream.next() % 10);
    }
    // The check digit that makes it Luhn-valid.
    new.push(0);
    let sum = luhn_sum(&new);
    new[n - 1] = ((10 - sum % 10) % 10) as u8;
    let mut it = new.into_iter();
    text.chars().map(|c| if c.is_ascii_digit() { char::from(b'0' + it.next().unwrap_or(0)) } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new(1, [42; 32])
    }

    fn text(m: Masked) -> String {
        match m {
            Masked::Value(v) => String::from_utf8(v).unwrap(),
            Masked::Null => "NULL".into(),
        }
    }

    #[test]
    fn redact_hides_value_and_length_and_keeps_json_valid() {
        assert_eq!(text(mask_text(Method::Redact, b"alice@example.com", TypeClass::Text, &key())), "****");
        let j = text(mask_text(Method::Redact, b"{\"a\":1}", TypeClass::of(3802), &key()));
        assert!(serde_json::from_str::<serde_json::Value>(&j).is_ok(), "{j}");
        assert_eq!(mask_text(Method::Redact, b"42", TypeClass::of(23), &key()), Masked::Null, "no sound int form");
        assert_eq!(mask_text(Method::Redact, b"2024-01-01", TypeClass::of(1082), &key()), Masked::Null);
    }

    #[test]
    fn partial_never_reveals_a_short_value_whole() {
        assert_eq!(partial("4111111111111111", 4), "************1111");
        assert_eq!(partial("ab", 4), "**");
        assert_eq!(partial("", 4), "*");
        assert_eq!(partial("héllo wörld", 3), "********rld");
    }

    #[test]
    fn tokens_are_deterministic_keyed_and_versioned() {
        let a = text(mask_text(Method::Token, b"alice", TypeClass::Text, &key()));
        assert_eq!(a, text(mask_text(Method::Token, b"alice", TypeClass::Text, &key())), "joins still match");
        assert_ne!(a, text(mask_text(Method::Token, b"bob", TypeClass::Text, &key())));
        assert!(a.starts_with("tok1_") && a.len() == 5 + 24, "{a}");
        let other = Key::new(2, [43; 32]);
        let b = text(mask_text(Method::Token, b"alice", TypeClass::Text, &other));
        assert!(b.starts_with("tok2_") && b[5..] != a[5..], "another key, another token");
        assert!(!a.contains("alice"));
    }

    #[test]
    fn masks_appended_in_place_equal_the_owned_ones() {
        for method in
            [Method::Redact, Method::Token, Method::Partial { keep_last: 3 }, Method::FormatPreserving, Method::Null]
        {
            for (class, value) in
                [(TypeClass::Text, &b"alice@example.com"[..]), (TypeClass::Integer { width: 4 }, b"42")]
            {
                let mut out = b"prefix".to_vec();
                let written = mask_text_into(method, value, class, &key(), &mut out);
                match mask_text(method, value, class, &key()) {
                    Masked::Value(v) => assert!(written && out[6..] == v[..], "{method:?} {class:?}"),
                    Masked::Null => assert!(!written && out == b"prefix", "{method:?} {class:?}"),
                }
            }
        }
    }

    #[test]
    fn integer_and_uuid_masks_parse_as_their_type_in_both_formats() {
        for (oid, width) in [(21u32, 2u8), (23, 4), (20, 8)] {
            let t = text(mask_text(Method::Token, b"12345", TypeClass::of(oid), &key()));
            let n: i64 = t.parse().unwrap();
            assert!(n >= 0);
            match width {
                2 => assert!(i16::try_from(n).is_ok()),
                4 => assert!(i32::try_from(n).is_ok()),
                _ => {}
            }
            let Masked::Value(b) =
                mask_binary(Method::Token, &12345i64.to_be_bytes()[8 - width as usize..], TypeClass::of(oid), &key())
            else {
                panic!()
            };
            assert_eq!(b.len(), width as usize);
        }
        let u = text(mask_text(Method::Token, b"6f1c5a3e-0000-4000-8000-000000000001", TypeClass::Uuid, &key()));
        assert_eq!(u.len(), 36);
        assert_eq!(u.matches('-').count(), 4);
        let Masked::Value(b) = mask_binary(Method::Token, &[1; 16], TypeClass::Uuid, &key()) else { panic!() };
        assert_eq!(b.len(), 16);
    }

    #[test]
    fn format_preserving_keeps_emails_emails_and_cards_valid_cards() {
        let e = text(mask_text(Method::FormatPreserving, b"Alice.Smith@corp.example.com", TypeClass::Text, &key()));
        assert!(e.ends_with(".com") && e.contains('@') && e.len() == "Alice.Smith@corp.example.com".len(), "{e}");
        assert!(!e.to_lowercase().contains("alice") && !e.contains("corp"), "{e}");
        let c = text(mask_text(Method::FormatPreserving, b"4111 1111 1111 1111", TypeClass::Text, &key()));
        assert_eq!(c.len(), 19);
        assert!(c.starts_with('4') && c != "4111 1111 1111 1111", "{c}");
        let digits: Vec<u8> = c.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
        assert!(luhn_valid(&digits), "{c}");
        let p = text(mask_text(Method::FormatPreserving, b"AB-123-cd", TypeClass::Text, &key()));
        assert_eq!(p.len(), 9);
        let shape = |s: &str| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_uppercase() {
                        'A'
                    } else if c.is_ascii_lowercase() {
                        'a'
                    } else if c.is_ascii_digit() {
                        '9'
                    } else {
                        c
                    }
                })
                .collect::<String>()
        };
        assert_eq!(shape(&p), "AA-999-aa");
        assert_eq!(
            p,
            text(mask_text(Method::FormatPreserving, b"AB-123-cd", TypeClass::Text, &key())),
            "deterministic"
        );
    }

    #[test]
    fn null_and_unsupported_types_become_null() {
        assert_eq!(mask_text(Method::Null, b"x", TypeClass::Text, &key()), Masked::Null);
        assert_eq!(mask_text(Method::Token, b"1.5", TypeClass::of(1700), &key()), Masked::Null);
        assert_eq!(mask_binary(Method::Redact, &[0, 0, 0, 1], TypeClass::of(23), &key()), Masked::Null);
    }

    #[test]
    fn jsonb_binary_keeps_its_version_byte() {
        let Masked::Value(v) = mask_binary(Method::Token, b"\x01{\"a\":1}", TypeClass::of(3802), &key()) else {
            panic!()
        };
        assert_eq!(v[0], 1);
        assert!(serde_json::from_slice::<serde_json::Value>(&v[1..]).is_ok());
    }
}
