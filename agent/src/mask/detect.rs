//! Value detectors: the safety net of masking.
//!
//! Masking normally knows where a value came from (its column's lineage) and masks it by rule.
//! Detectors are for the values whose lineage is unknown: a computed expression, a column the
//! analyser could not trace, and the free text of server messages (error, notice and detail
//! text, which can quote a row: `Failing row contains (...)`, `Key (email)=(...) already
//! exists`). They look for substrings that are sensitive by their shape alone (an e-mail
//! address, a payment card number that passes the Luhn check, a cloud access key, a private
//! key block, the value after `password=`...) and report each one's [`Kind`] and byte range, so
//! the caller can mask it and record which classification it masked.
//!
//! What detectors cannot do:
//! - See a value split across columns, rows or messages (a card number stored as four columns
//!   of four digits, a key continued on the next row): each text is looked at alone.
//! - See through encodings: base64, hex, URL-encoding (`%40` for `@`), bytea escapes
//!   (`\x34313131...`), compression or encryption hide a value from every pattern; so do
//!   unusual separators (`4111.1111.1111.1111`) and spelling (`alice at example dot com`).
//! - Know meaning: an arbitrary 13–19-digit number that has a card prefix and passes Luhn is
//!   reported as a card, and a genuine card number in a format not listed is missed. Lineage
//!   rules, not detectors, are how a column is reliably masked.
//!
//! The false-positive trade-off: each detector is written to be precise rather than greedy
//! (card numbers need a known IIN prefix, a brand length and Luhn; national ids only two
//! formats with their official exclusions; phones need a `+` or the North American layout;
//! cloud keys their vendors' prefixes), because a false positive corrupts a result value that
//! was not sensitive. Measured on the deterministic corpus of the test
//! `false_positive_rate_on_typical_values` (122,000 non-sensitive values: integers of many
//! sizes, decimals and full-precision floats, timestamps, UUIDs, IP and MAC addresses, order
//! numbers, ISBNs, ZIP codes, words and sentences, paths, URLs, hashes, base64 blobs, versions,
//! alphanumeric ids, JSON rows, log lines, server messages, code, 16-digit numbers that fail
//! Luhn or have no card prefix), the values with a finding, per kind: payment card 30
//! (0.025%), every one a uniformly random `i64` (30 of 2,000, 1.5%, which no shape-based
//! detector can tell from a card number); e-mail, national id, phone, cloud key, JWT, private
//! key and secret 0. A bare number of card length that starts with a card prefix passes Luhn
//! one time in ten: of uniformly random numbers, 2.9% of those of 16 digits are reported, 1.8%
//! of 19, 0.3–1.1% of 13, 14, 15, 17 and 18; ids of those lengths that start with 1 (epoch
//! milliseconds and microseconds, snowflake ids), 0, 7, 8 or 9 never are.
//!
//! Cost: detectors run on result values on the hot path. Every regular expression is compiled
//! once, in [`Detectors::new`]; a text shorter than the shortest possible finding is not looked
//! at; one pass over the bytes notes which characters occur (`@`, `+`, `-`, `=`, `:`, ...),
//! how many digits there are and the longest run of digits (single spaces or hyphens allowed),
//! and a detector runs only when its necessary characters are there (an e-mail needs `@`, a
//! card a run of at least 13 digits, ...). The patterns that start with literal prefixes
//! (cloud keys, JWTs, PEM blocks) are searched by the regex engine's own literal prefilter.

use std::ops::Range;

use regex::bytes::{Regex, RegexBuilder};

/// The classification of a sensitive substring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An e-mail address: `pii.email`.
    Email,
    /// A payment card number (PAN): `payment.card`.
    PaymentCard,
    /// A national identification number (US SSN, UK NINO): `pii.national_id`.
    NationalId,
    /// A telephone number: `pii.phone`.
    Phone,
    /// A cloud or SaaS access key or token (AWS, GCP, GitHub, Slack, Stripe, Azure):
    /// `secret.cloud_key`.
    CloudKey,
    /// A JSON Web Token: `secret.jwt`.
    Jwt,
    /// A PEM private key block: `secret.private_key`.
    PrivateKey,
    /// The value of a `password=`, `token:`, `api_key=`... pair: `secret`.
    Secret,
    /// An operator's pattern: the index into the custom patterns given to [`Detectors::new`],
    /// whose name [`Detectors::name`] gives.
    Custom(u16),
}

impl Kind {
    /// Every built-in kind, in the order that breaks ties between overlapping findings of the
    /// same length (the earlier wins).
    pub const BUILTIN: [Kind; 8] = [
        Kind::Email,
        Kind::PaymentCard,
        Kind::NationalId,
        Kind::Phone,
        Kind::CloudKey,
        Kind::Jwt,
        Kind::PrivateKey,
        Kind::Secret,
    ];

    /// The classification name. A custom pattern's name is the operator's, which only the
    /// [`Detectors`] holding it knows ([`Detectors::name`]); here it is `"custom"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Email => "pii.email",
            Kind::PaymentCard => "payment.card",
            Kind::NationalId => "pii.national_id",
            Kind::Phone => "pii.phone",
            Kind::CloudKey => "secret.cloud_key",
            Kind::Jwt => "secret.jwt",
            Kind::PrivateKey => "secret.private_key",
            Kind::Secret => "secret",
            Kind::Custom(_) => "custom",
        }
    }

    /// The built-in kind of a classification name (`"pii.email"` → [`Kind::Email`]).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::BUILTIN.into_iter().find(|k| k.as_str() == name)
    }

    /// Priority between overlapping findings of the same length: lower wins.
    fn rank(self) -> u32 {
        match self {
            Kind::Custom(i) => Kind::BUILTIN.len() as u32 + u32::from(i),
            builtin => Kind::BUILTIN.iter().position(|k| *k == builtin).unwrap_or(0) as u32,
        }
    }
}

/// One sensitive substring: its kind and its byte range in the text looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub range: Range<usize>,
}

/// A set of compiled detectors, built once (per policy) and shared: [`Detectors::find`] takes
/// `&self` and the type is `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Detectors {
    email: Option<Regex>,
    card: bool,
    national_id: Option<NationalId>,
    phone: Option<Phone>,
    cloud_key: Option<Regex>,
    jwt: Option<Regex>,
    private_key: Option<Pem>,
    secret: Option<Regex>,
    custom: Vec<CustomPattern>,
    /// The length of the shortest text any enabled detector can find something in.
    min_len: usize,
}

#[derive(Debug, Clone)]
struct NationalId {
    ssn: Regex,
    nino: Regex,
}

#[derive(Debug, Clone)]
struct Phone {
    e164: Regex,
    nanp: Regex,
}

#[derive(Debug, Clone)]
struct Pem {
    begin: Regex,
    end: Regex,
}

#[derive(Debug, Clone)]
struct CustomPattern {
    name: String,
    regex: Regex,
    /// The index of a capture group named `value`: the finding covers it instead of the match.
    value_group: Option<usize>,
}

/// E-mail: a practical subset of RFC 5322, `local@domain.tld`, case-insensitive. The local
/// part is the characters addresses use in practice (`A-Z a-z 0-9 . _ % + -`, and `'` inside
/// it, as in `o'neil`; at most 64), each domain label is letters, digits and inner hyphens,
/// and the top-level domain is two or more letters. Trade-off: quoted local parts, the rarer RFC characters (`!#$&*/=?^{|}~`),
/// IP-literal domains, internationalised addresses and addresses without a dot in the domain
/// (`root@localhost`) are missed; on the other side any `word@host.tld` is an address, so
/// `git@github.com` is reported. Asset names such as `icon@2x.png` are excluded by refusing
/// top-level domains that are common file extensions and no real TLD ([`FILE_EXTENSIONS`]).
const EMAIL: &str = concat!(
    r"(?i-u)[a-z0-9_%+-](?:[a-z0-9._%+'-]{0,62}[a-z0-9_%+-])?",
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\b",
);

/// "Top-level domains" that are file extensions and not delegated TLDs.
const FILE_EXTENSIONS: [&str; 24] = [
    "png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "pdf", "txt", "js", "css", "json", "html",
    "htm", "xml", "yaml", "yml", "csv", "log", "tmp", "bak",
];

/// US Social Security number, hyphenated only (`078-05-1120`); validated in code: the area is
/// not 000, 666 or 900–999, the group not 00, the serial not 0000, and the number is not part
/// of a longer token (no letter, digit or hyphen next to it). Trade-off: the undashed nine
/// digits (`078051120`) are not detected, since any nine-digit number would match; a
/// `ddd-dd-dddd` part or reference number that follows the allocation rules is reported.
const SSN: &str = r"(?-u)[0-9]{3}-[0-9]{2}-[0-9]{4}";

/// UK National Insurance number: two prefix letters, six digits, a suffix A–D, written
/// `AB123456C`, `AB 123456 C` or `AB 12 34 56 C`; validated in code with HMRC's exclusions
/// (first letter not D, F, I, Q, U, V; second not D, F, I, O, Q, U, V; not BG, GB, KN, NK,
/// NT, TN, ZZ). Upper case only, and not part of a longer alphanumeric token. Trade-off:
/// lower-case numbers and the suffix-less form are missed; a nine-character code of that exact
/// shape (`AB123456C`) is reported whatever it means.
const NINO: &str = r"(?-u)[A-Z]{2}(?:[0-9]{6}| [0-9]{6} | [0-9]{2} [0-9]{2} [0-9]{2} )[A-D]";

/// International (E.164) phone number: `+`, then 8–15 digits in total, which may be separated
/// by single spaces, hyphens or dots and may have one parenthesised group (`+44 (20) 7946
/// 0958`); validated in code (digit count, no leading 0, not after a letter or digit, not a
/// signed decimal like `+1234.5678`). Trade-off: bare digit runs are never phones (too many
/// false positives: every id, amount and timestamp would be one), so national formats
/// without `+` other than North American ones are missed.
const E164: &str = r"(?-u)\+[0-9](?:[ .-]?[0-9]|[ .-]?\([0-9]{1,4}\))*";

/// North American phone number: `(415) 555-2671`, `415-555-2671`, optionally after `1-` or
/// `1 `; the area code and exchange start with 2–9 (the NANP rule). Not part of a longer token
/// of digits and hyphens. Trade-off: `4155552671` and `415.555.2671` are missed (see E164); a
/// `ddd-ddd-dddd` reference number that follows the NANP rule is reported.
const NANP: &str = r"(?-u)(?:1[ -])?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}-)[2-9][0-9]{2}-[0-9]{4}";

/// Cloud and SaaS credentials, each with its vendor's fixed prefix, so false positives need
/// that prefix in non-secret data (about none in practice):
/// - AWS access key ids: `AKIA`, `ASIA`, `AGPA`, `AIDA`, `AROA`, `ANPA`, `ANVA`, `APKA` and 16
///   upper-case letters or digits (20 characters);
/// - GCP API keys: `AIza` and 35 of `[0-9A-Za-z_-]`;
/// - GitHub tokens: `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` and 36 or more letters or digits;
///   fine-grained `github_pat_` and 22 or more of `[0-9A-Za-z_]`;
/// - Slack tokens: `xoxa-`, `xoxb-`, `xoxp-`, `xoxo-`, `xoxs-`, `xoxr-`, a numeric part, then
///   more parts;
/// - Stripe live secret and restricted keys: `sk_live_`, `rk_live_` and 24 or more letters or
///   digits (test keys, `sk_test_`, are not secrets);
/// - Azure storage account keys in connection strings: `AccountKey=` (as Azure writes it) and
///   88 characters of base64 (64 bytes); the finding is the key, not `AccountKey=`.
///
/// None of them may be next to another token character (`[0-9A-Za-z_-]`). Secret-manager
/// references, other vendors and keys without a prefix (an AWS secret access key is 40 bare
/// base64 characters) are missed: those are for [`SECRET`] or a custom pattern.
const CLOUD_KEY: &str = concat!(
    r"(?-u)(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|APKA)[A-Z0-9]{16}",
    r"|AIza[0-9A-Za-z_-]{35}",
    r"|gh[pousr]_[0-9A-Za-z]{36,255}",
    r"|github_pat_[0-9A-Za-z_]{22,255}",
    r"|xox[abposr]-[0-9]+-[0-9A-Za-z-]{8,250}[0-9A-Za-z]",
    r"|[sr]k_live_[0-9A-Za-z]{24,247}",
    r"|AccountKey=[0-9A-Za-z+/]{86}==",
);

/// `AccountKey=`: its length, skipped to report only the key.
const AZURE_KEY_PREFIX: &[u8] = b"AccountKey=";

/// JSON Web Token (JWS compact form): three base64url segments separated by dots, the first
/// two starting with `eyJ` (base64 of `{"`), the signature possibly empty (`alg: none`);
/// validated in code: the header decodes to a JSON object with an `"alg"` member, and the
/// token is not inside a longer base64url token. Trade-off: encrypted JWTs (JWE, five segments)
/// and tokens whose header has no `alg` are missed; practically nothing else has this shape.
const JWT: &str = r"(?-u)eyJ[0-9A-Za-z_-]{2,}\.eyJ[0-9A-Za-z_-]{2,}\.[0-9A-Za-z_-]*";

/// PEM private key blocks, from `-----BEGIN [RSA |EC |OPENSSH |DSA |ENCRYPTED ]PRIVATE
/// KEY-----` through the END line of the same label, or to the end of the text when that is
/// missing (a truncated or cut value still holds key material). Public keys and certificates
/// are not secrets and do not match. Trade-off: key material without its BEGIN line (a block
/// cut at the start, a bare base64 key) is missed; PGP key blocks are not covered.
const PEM_BEGIN: &str = r"(?-u)-----BEGIN (?:RSA |EC |OPENSSH |DSA |ENCRYPTED )?PRIVATE KEY-----";
const PEM_END: &str = r"(?-u)-----END (?:RSA |EC |OPENSSH |DSA |ENCRYPTED )?PRIVATE KEY-----";
/// `-----BEGIN `, `-----END ` and `PRIVATE KEY-----`: their lengths, to cut the label out.
const PEM_BEGIN_LEN: usize = 11;
const PEM_END_LEN: usize = 9;
const PEM_TAIL_LEN: usize = 16;

/// Generic secrets: a key name containing `password`, `passwd`, `pwd`, `secret`, `token`,
/// `api_key`, `api-key` or `apikey` (any case, so `DB_PASSWORD`, `client_secret` and
/// `access_token` too), possibly closed by a quote (JSON) or a parenthesis (PostgreSQL's `Key
/// (password)=(...)`), then `=` or `:` and a value: quoted (`"..."` or `'...'`, on one line)
/// or up to whitespace, `&`, `;`, `,` or a quote (a value in parentheses loses them). The
/// finding is the value only, so the key name stays readable; a value ends only at those
/// characters, so trailing punctuation (`pa55).`) is masked with it, and a value that contains
/// one (`Pwd=Tr0ub4dor&3`) is masked up to it only. Trade-off: a key name must be next to its
/// `=`/`:` (`password is hunter2` is missed), an empty value is nothing to mask (`password=`,
/// `password=""`), and every value after such a key is reported, also placeholders
/// (`password: ${DB_PASSWORD}`), non-secret tokens (`next_page_token=...`) and
/// `PWD=/home/alice` in an environment dump.
const SECRET: &str = concat!(
    r#"(?i-u)(?:password|passwd|pwd|secret|token|api[_-]?key)["')]?[ \t]*[=:][ \t]*"#,
    r#"(?:"[^"\r\n]+"|'[^'\r\n]+'|[^\s&;,"']+)"#,
);

/// The shortest text each kind can be found in: `a@b.co`, 13 digits, `AB123456C`, `+` and 8
/// digits, `xoxb-1-` and 9 characters, `eyJxx.eyJxx.`, `-----BEGIN PRIVATE KEY-----`,
/// `pwd=x`.
const MIN_EMAIL: usize = 6;
const MIN_CARD: usize = 13;
const MIN_NATIONAL_ID: usize = 9;
const MIN_PHONE: usize = 9;
const MIN_CLOUD_KEY: usize = 16;
const MIN_JWT: usize = 12;
const MIN_PRIVATE_KEY: usize = 27;
const MIN_SECRET: usize = 5;

fn builtin(pattern: &str) -> Regex {
    // The built-in patterns are constants: one that does not compile is a programming error,
    // caught by every test.
    Regex::new(pattern).expect("built-in detector pattern compiles")
}

impl Detectors {
    /// Compiles the `enabled` built-in detectors (duplicates are harmless; [`Kind::Custom`]
    /// is not a built-in and is refused) and the operator's `custom` patterns, given as
    /// `(name, regex)` in the [`regex`] crate's syntax, matched against the bytes of a value
    /// (Unicode classes match UTF-8). A custom pattern's finding is its whole match or, when
    /// the pattern has a capture group named `value`, that group (`token=(?P<value>\w+)`).
    /// It is `Kind::Custom(i)` for the pattern at index `i`. Errors name the pattern: an
    /// invalid regex, one that matches the empty text, an empty or repeated name, too many.
    pub fn new(enabled: &[Kind], custom: &[(String, String)]) -> Result<Detectors, String> {
        let on = |kind: Kind| enabled.contains(&kind);
        if let Some(kind) = enabled.iter().find(|k| matches!(k, Kind::Custom(_))) {
            return Err(format!("{kind:?} is not a built-in detector: custom patterns are enabled by being given"));
        }
        if custom.len() > usize::from(u16::MAX) + 1 {
            return Err(format!(
                "{} custom patterns: at most {} are supported",
                custom.len(),
                usize::from(u16::MAX) + 1
            ));
        }
        let mut patterns: Vec<CustomPattern> = Vec::with_capacity(custom.len());
        for (name, pattern) in custom {
            if name.trim().is_empty() {
                return Err(format!("custom pattern {pattern:?} has an empty name"));
            }
            if patterns.iter().any(|p| p.name == *name) {
                return Err(format!("custom pattern {name:?} is given twice"));
            }
            let regex = RegexBuilder::new(pattern)
                .build()
                .map_err(|e| format!("custom pattern {name:?}: {pattern:?} is not a valid regular expression: {e}"))?;
            if regex.is_match(b"") {
                return Err(format!(
                    "custom pattern {name:?}: {pattern:?} matches the empty text, so it would find nothing to mask"
                ));
            }
            let value_group = regex.capture_names().position(|n| n == Some("value"));
            patterns.push(CustomPattern { name: name.clone(), regex, value_group });
        }

        let mut min_len = usize::MAX;
        let mut need = |kind: Kind, len: usize| {
            let on = on(kind);
            if on {
                min_len = min_len.min(len);
            }
            on
        };
        let email = need(Kind::Email, MIN_EMAIL).then(|| builtin(EMAIL));
        let card = need(Kind::PaymentCard, MIN_CARD);
        let national_id =
            need(Kind::NationalId, MIN_NATIONAL_ID).then(|| NationalId { ssn: builtin(SSN), nino: builtin(NINO) });
        let phone = need(Kind::Phone, MIN_PHONE).then(|| Phone { e164: builtin(E164), nanp: builtin(NANP) });
        let cloud_key = need(Kind::CloudKey, MIN_CLOUD_KEY).then(|| builtin(CLOUD_KEY));
        let jwt = need(Kind::Jwt, MIN_JWT).then(|| builtin(JWT));
        let private_key =
            need(Kind::PrivateKey, MIN_PRIVATE_KEY).then(|| Pem { begin: builtin(PEM_BEGIN), end: builtin(PEM_END) });
        let secret = need(Kind::Secret, MIN_SECRET).then(|| builtin(SECRET));
        if !patterns.is_empty() {
            min_len = 1;
        }
        Ok(Detectors {
            email,
            card,
            national_id,
            phone,
            cloud_key,
            jwt,
            private_key,
            secret,
            custom: patterns,
            min_len,
        })
    }

    /// Every built-in detector, no custom pattern.
    pub fn standard() -> Detectors {
        // Only custom patterns can fail to compile.
        match Detectors::new(&Kind::BUILTIN, &[]) {
            Ok(d) => d,
            Err(e) => unreachable!("built-in detectors always compile: {e}"),
        }
    }

    /// Whether no detector is enabled ([`Detectors::find`] always finds nothing).
    pub fn is_empty(&self) -> bool {
        self.min_len == usize::MAX
    }

    /// The classification name of a kind: [`Kind::as_str`] for a built-in, the operator's name
    /// for a custom pattern.
    pub fn name(&self, kind: Kind) -> &str {
        match kind {
            Kind::Custom(i) => self.custom.get(usize::from(i)).map_or("custom", |p| p.name.as_str()),
            builtin => builtin.as_str(),
        }
    }

    /// The sensitive substrings of `text`: non-overlapping, sorted by start, on character
    /// boundaries (a custom pattern's match that is not is widened to them).
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let mut findings = self.find_bytes(text.as_bytes());
        if findings.iter().all(|f| text.is_char_boundary(f.range.start) && text.is_char_boundary(f.range.end)) {
            return findings;
        }
        // Only a custom pattern without Unicode (`(?-u)`) can cut a character: mask all of it.
        let mut widened: Vec<Finding> = Vec::with_capacity(findings.len());
        for mut f in findings.drain(..) {
            while !text.is_char_boundary(f.range.start) {
                f.range.start -= 1;
            }
            while !text.is_char_boundary(f.range.end) {
                f.range.end += 1;
            }
            match widened.last_mut() {
                Some(last) if f.range.start < last.range.end => last.range.end = last.range.end.max(f.range.end),
                _ => widened.push(f),
            }
        }
        widened
    }

    /// [`Detectors::find`] for a value that need not be UTF-8 (`bytea`, text in another
    /// encoding): every detector works on bytes, so nothing is lost around invalid sequences.
    /// Ranges are byte ranges; the built-in detectors' findings start and end at ASCII
    /// characters.
    pub fn find_bytes(&self, bytes: &[u8]) -> Vec<Finding> {
        let mut found = Vec::new();
        if bytes.len() < self.min_len {
            return found;
        }
        let stats = Stats::of(bytes);
        if let Some(re) = &self.email
            && stats.has(AT)
        {
            scan(re, bytes, Kind::Email, &mut found, check_email);
        }
        if self.card && stats.max_run >= MIN_CARD {
            find_cards(bytes, &mut found);
        }
        if let Some(national_id) = &self.national_id {
            if stats.has(HYPHEN) && stats.max_run >= 9 {
                scan(&national_id.ssn, bytes, Kind::NationalId, &mut found, check_ssn);
            }
            if stats.has(UPPER) && stats.digits >= 6 {
                scan(&national_id.nino, bytes, Kind::NationalId, &mut found, check_nino);
            }
        }
        if let Some(phone) = &self.phone {
            if stats.has(PLUS) && stats.digits >= 8 {
                scan(&phone.e164, bytes, Kind::Phone, &mut found, check_e164);
            }
            if stats.has(HYPHEN) && stats.digits >= 10 {
                scan(&phone.nanp, bytes, Kind::Phone, &mut found, check_nanp);
            }
        }
        if let Some(re) = &self.cloud_key
            && stats.has(LETTER)
            && bytes.len() >= MIN_CLOUD_KEY
        {
            scan(re, bytes, Kind::CloudKey, &mut found, check_cloud_key);
        }
        if let Some(re) = &self.jwt
            && stats.has(DOT)
            && bytes.len() >= MIN_JWT
        {
            scan(re, bytes, Kind::Jwt, &mut found, check_jwt);
        }
        if let Some(pem) = &self.private_key
            && stats.has(HYPHEN)
            && bytes.len() >= MIN_PRIVATE_KEY
        {
            find_pem(pem, bytes, &mut found);
        }
        if let Some(re) = &self.secret
            && stats.has(EQUALS | COLON)
        {
            scan(re, bytes, Kind::Secret, &mut found, check_secret);
        }
        for (i, pattern) in self.custom.iter().enumerate() {
            // `new` refuses more than u16::MAX + 1 patterns.
            let kind = Kind::Custom(i as u16);
            match pattern.value_group {
                None => found.extend(
                    pattern
                        .regex
                        .find_iter(bytes)
                        .filter(|m| !m.is_empty())
                        .map(|m| Finding { kind, range: m.range() }),
                ),
                Some(group) => found.extend(pattern.regex.captures_iter(bytes).filter_map(|caps| {
                    let m = caps.get(group).or_else(|| caps.get(0))?;
                    (!m.is_empty()).then(|| Finding { kind, range: m.range() })
                })),
            }
        }
        resolve(found)
    }

    /// Rewrites every finding of `text` with `replace(finding, the substring found)` and
    /// returns the new text and the kinds that were masked (each once, in order of first
    /// occurrence; empty when nothing was found and the text is returned unchanged).
    pub fn mask_all(&self, text: &str, replace: impl Fn(&Finding, &str) -> String) -> (String, Vec<Kind>) {
        let findings = self.find(text);
        let mut kinds = Vec::new();
        if findings.is_empty() {
            return (text.to_owned(), kinds);
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for f in &findings {
            // `find` returns sorted, non-overlapping ranges on character boundaries.
            out.push_str(&text[last..f.range.start]);
            out.push_str(&replace(f, &text[f.range.clone()]));
            if !kinds.contains(&f.kind) {
                kinds.push(f.kind);
            }
            last = f.range.end;
        }
        out.push_str(&text[last..]);
        (out, kinds)
    }
}

impl Default for Detectors {
    fn default() -> Detectors {
        Detectors::standard()
    }
}

/// Keeps the non-overlapping findings: when two overlap the longer stays (a tie goes to the
/// kind listed earlier in [`Kind`], custom patterns after the built-ins in their order);
/// returns them sorted by start.
fn resolve(mut found: Vec<Finding>) -> Vec<Finding> {
    found.sort_by_key(|f| f.range.start);
    if found.windows(2).all(|w| w[0].range.end <= w[1].range.start) {
        return found;
    }
    found.sort_by(|a, b| {
        b.range
            .len()
            .cmp(&a.range.len())
            .then(a.kind.rank().cmp(&b.kind.rank()))
            .then(a.range.start.cmp(&b.range.start))
    });
    let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
    for f in found {
        // `kept` is sorted by start and non-overlapping, so only the neighbours can overlap.
        let at = kept.partition_point(|k| k.range.start < f.range.start);
        let clear_before = at == 0 || kept[at - 1].range.end <= f.range.start;
        let clear_after = at == kept.len() || f.range.end <= kept[at].range.start;
        if clear_before && clear_after {
            kept.insert(at, f);
        }
    }
    kept
}

/// Runs `re` over `bytes` from left to right and keeps the matches `check` accepts: `Ok` with
/// the range to report (part of the match), or `Err` with where to search next (at least one
/// byte past the match's start: a shorter match may start inside a refused one).
fn scan(
    re: &Regex,
    bytes: &[u8],
    kind: Kind,
    found: &mut Vec<Finding>,
    check: impl Fn(&[u8], Range<usize>) -> Result<Range<usize>, usize>,
) {
    let mut at = 0;
    while at < bytes.len() {
        let Some(m) = re.find_at(bytes, at) else { break };
        match check(bytes, m.range()) {
            Ok(range) => {
                if !range.is_empty() {
                    found.push(Finding { kind, range });
                }
                at = m.end().max(m.start() + 1);
            }
            Err(next) => at = next.max(m.start() + 1),
        }
    }
}

// Character classes noted by `Stats` (one bit each).
const AT: u16 = 1;
const PLUS: u16 = 1 << 1;
const HYPHEN: u16 = 1 << 2;
const EQUALS: u16 = 1 << 3;
const COLON: u16 = 1 << 4;
const DOT: u16 = 1 << 5;
const UPPER: u16 = 1 << 6;
const LETTER: u16 = 1 << 7;

const CLASSES: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = match b {
            b'@' => AT,
            b'+' => PLUS,
            b'-' => HYPHEN,
            b'=' => EQUALS,
            b':' => COLON,
            b'.' => DOT,
            b'A'..=b'Z' => UPPER | LETTER,
            b'a'..=b'z' => LETTER,
            _ => 0,
        };
        c += 1;
    }
    table
};

/// What one pass over a text tells the prefilters.
struct Stats {
    /// The `CLASSES` bits of every byte that occurs.
    classes: u16,
    /// ASCII digits in all.
    digits: usize,
    /// The most digits in one run of digits where single spaces or hyphens between digits do
    /// not end the run (`4111 1111-1111` is 12).
    max_run: usize,
}

impl Stats {
    fn of(bytes: &[u8]) -> Stats {
        let (mut classes, mut digits, mut max_run, mut run) = (0u16, 0usize, 0usize, 0usize);
        let (mut after_digit, mut after_separator) = (false, false);
        for &b in bytes {
            if b.is_ascii_digit() {
                digits += 1;
                run = if after_digit || after_separator { run + 1 } else { 1 };
                max_run = max_run.max(run);
                after_digit = true;
                after_separator = false;
            } else {
                after_separator = after_digit && (b == b' ' || b == b'-');
                after_digit = false;
                classes |= CLASSES[usize::from(b)];
            }
        }
        Stats { classes, digits, max_run }
    }

    /// Whether any of the classes in `mask` occurs.
    fn has(&self, mask: u16) -> bool {
        self.classes & mask != 0
    }
}

fn byte_before(bytes: &[u8], start: usize) -> Option<u8> {
    start.checked_sub(1).and_then(|i| bytes.get(i)).copied()
}

fn byte_after(bytes: &[u8], end: usize) -> Option<u8> {
    bytes.get(end).copied()
}

fn is_alnum(b: Option<u8>) -> bool {
    b.is_some_and(|b| b.is_ascii_alphanumeric())
}

fn is_token_char(b: Option<u8>) -> bool {
    b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_email(bytes: &[u8], m: Range<usize>) -> Result<Range<usize>, usize> {
    let found = &bytes[m.clone()];
    let tld = found.rsplit(|&b| b == b'.').next().unwrap_or(found);
    if FILE_EXTENSIONS.iter().any(|ext| tld.eq_ignore_ascii_case(ext.as_bytes())) {
        // `icon@2x.png`: nothing shorter inside is an address either.
        return Err(m.end);
    }
    Ok(m)
}

/// The value of ASCII digits.
fn number(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |n, d| n * 10 + u32::from(d.wrapping_sub(b'0')))
}

fn check_ssn(bytes: &[u8], m: Range<usize>) -> Result<Range<usize>, usize> {
    let s = &bytes[m.clone()];
    let (area, group, serial) = (number(&s[0..3]), number(&s[4..6]), number(&s[7..11]));
    let apart = |b: Option<u8>| !is_alnum(b) && b != Some(b'-');
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return Err(m.start + 1);
    }
    if !apart(byte_before(bytes, m.start)) || !apart(byte_after(bytes, m.end)) {
        return Err(m.start + 1);
    }
    Ok(m)
}

fn check_nino(bytes: &[u8], m: Range<usize>) -> Result<Range<usize>, usize> {
    let s = &bytes[m.clone()];
    let (first, second) = (s[0], s[1]);
    let valid = !b"DFIQUV".contains(&first)
        && !b"DFIOQUV".contains(&second)
        && ![b"BG", b"GB", b"KN", b"NK", b"NT", b"TN", b"ZZ"].contains(&&[first, second]);
    if !valid || is_alnum(byte_before(bytes, m.start)) || is_alnum(byte_after(bytes, m.end)) {
        return Err(m.start + 1);
    }
    Ok(m)
}

fn check_e164(bytes: &[u8], m: Range<usize>) -> Result<Range<usize>, usize> {
    let s = &bytes[m.clone()];
    let digits = s.iter().filter(|b| b.is_ascii_digit()).count();
    let groups = s.iter().filter(|&&b| b == b'(').count();
    let dots = s.iter().filter(|&&b| b == b'.').count();
    let other_separators = s.iter().filter(|&&b| matches!(b, b' ' | b'-' | b'(')).count();
    let signed_decimal = dots == 1 && other_separators == 0;
    let valid = (8..=15).contains(&digits) && s.get(1) != Some(&b'0') && groups <= 1 && !signed_decimal;
    // Only a `+` starts a number: nothing shorter inside can be one.
    if !valid || is_alnum(byte_before(bytes, m.start)) {
        return Err(m.end);
    }
    Ok(m)
}

fn check_nanp(bytes: &[u8], m: Range<usize>) -> Result<Range<usize>, usize> {
    let before = byte_before(bytes, m.start);
    let after = byte_after(bytes, m.end);
    let continues = matches!(after, Some(b'-' | b'.')) && is_digit(byte_after(bytes, m.end + 1));
    if is_alnum(before) || matches!(before, Some(b'-' | b'.')) || is_alnum(after) || continues {
        return Err(m.start + 1);
    }
    Ok(m)
}

fn is_digit(b: Option<u8>) -> bool {
    b.is_some_and(|b| b.is_ascii_digit())
}

fn check_cloud_key(bytes: &[u8], m: Range<usize>) -> Result<Range<usize>, usize> {
    if is_token_char(byte_before(bytes, m.start)) {
        return Err(m.start + 1);
    }
    if bytes[m.clone()].starts_with(AZURE_KEY_PREFIX) {
        let base64_goes_on =
            byte_after(bytes, m.end).is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        if base64_goes_on {
            return Err(m.start + 1);
        }
        return Ok(m.start + AZURE_KEY_PREFIX.len()..m.end);
    }
    if is_token_char(byte_after(bytes, m.end)) {
        return Err(m.start + 1);
    }
    Ok(m)
}

fn check_jwt(bytes: &[u8], m: Range<usize>) -> Result<Range<usize>, usize> {
    if is_token_char(byte_before(bytes, m.start)) {
        return Err(m.start + 1);
    }
    let s = &bytes[m.clone()];
    let header = s.split(|&b| b == b'.').next().unwrap_or(s);
    if !jwt_header_has_alg(header) {
        return Err(m.start + 1);
    }
    Ok(m)
}

/// Whether a base64url JWT header decodes to a JSON object with an `"alg"` member. Only the
/// first 2 KiB are decoded: a real header is far shorter.
fn jwt_header_has_alg(header: &[u8]) -> bool {
    let header = &header[..header.len().min(2048)];
    let mut decoded = Vec::with_capacity(header.len() * 3 / 4 + 2);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in header {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return false,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            decoded.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    let json = decoded.trim_ascii_start();
    json.first() == Some(&b'{') && json.windows(5).any(|w| w == b"\"alg\"")
}

fn find_pem(pem: &Pem, bytes: &[u8], found: &mut Vec<Finding>) {
    let mut at = 0;
    while at < bytes.len() {
        let Some(begin) = pem.begin.find_at(bytes, at) else { break };
        let label = &bytes[begin.start() + PEM_BEGIN_LEN..begin.end() - PEM_TAIL_LEN];
        let end = pem
            .end
            .find_iter(&bytes[begin.end()..])
            .find(|e| &bytes[begin.end() + e.start() + PEM_END_LEN..begin.end() + e.end() - PEM_TAIL_LEN] == label)
            .map_or(bytes.len(), |e| begin.end() + e.end());
        found.push(Finding { kind: Kind::PrivateKey, range: begin.start()..end });
        at = end;
    }
}

fn check_secret(bytes: &[u8], m: Range<usize>) -> Result<Range<usize>, usize> {
    let s = &bytes[m.clone()];
    // The key name has no `=` or `:`: the first one ends it; then blanks, then the value.
    let Some(op) = s.iter().position(|&b| b == b'=' || b == b':') else { return Err(m.start + 1) };
    let mut start = op + 1;
    while matches!(s.get(start), Some(b' ' | b'\t')) {
        start += 1;
    }
    let mut end = s.len();
    let quoted = matches!(s.get(start), Some(b'"' | b'\''));
    let parenthesised = s.get(start) == Some(&b'(') && s.last() == Some(&b')');
    if quoted || parenthesised {
        start += 1;
        end -= 1;
    }
    if start >= end {
        return Err(m.start + 1);
    }
    Ok(m.start + start..m.start + end)
}

/// Payment card numbers (PANs), found by a scan rather than a regex: a regex's leftmost match
/// in `1234 4111 1111 1111 1111` would be the wrong 19 digits. A run of digit groups separated
/// by single spaces or hyphens is cut into candidates that start and end at group boundaries
/// (so a card is never preceded or followed by another digit), the longest valid candidate
/// from each group wins. A candidate is 13–19 digits, either one group or groups of 3–6
/// digits (the last 1–6) with the same separator throughout (`4111 1111 1111 1111`, `3782
/// 822463 10005`, `5500-0000-0000-0004`), passes Luhn, and has a known IIN prefix with one of
/// its brand's lengths: Visa 4 (13, 16, 19), Mastercard 51–55 and 2221–2720 (16), Amex 34, 37
/// (15), Discover 6011, 65, 644–649, JCB 3528–3589, UnionPay 62 (16–19), Diners 300–305, 36,
/// 38 (14–19). A number next to a letter is part of a hash or an identifier
/// (`c7296cda4758...4618371695516d18...`), and one right after or before a decimal point
/// (`0.4111...`, `4111....5`) part of a decimal: neither is a card.
///
/// Trade-off: Luhn alone passes one random number in ten; with the prefix and length rules
/// 2.9% of uniformly random 16-digit numbers are reported, 1.8% of 19-digit ones, 0.3–1.1% of
/// the other lengths, none that start with 0, 1, 7, 8 or 9. Any bare integer of card length
/// with a card prefix and a valid check digit is still reported. Cards of other networks (Maestro, RuPay, Mir,
/// UATP), other separators (`4111.1111...`), digits glued to letters (`card4111...`) and
/// digits split by other text are missed.
fn find_cards(bytes: &[u8], found: &mut Vec<Finding>) {
    let mut groups: Vec<Range<usize>> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        groups.clear();
        let mut j = i;
        let mut digits = 0;
        loop {
            let start = j;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            digits += j - start;
            groups.push(start..j);
            if j + 1 < bytes.len() && matches!(bytes[j], b' ' | b'-') && bytes[j + 1].is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
        }
        if digits >= MIN_CARD {
            cards_in_groups(bytes, &groups, found);
        }
        i = j;
    }
}

fn cards_in_groups(bytes: &[u8], groups: &[Range<usize>], found: &mut Vec<Finding>) {
    let mut first = 0;
    while first < groups.len() {
        let mut best = None;
        let mut digits = [0u8; 19];
        let mut count = 0;
        for last in first..groups.len() {
            let group = &groups[last];
            if count + group.len() > digits.len() {
                break;
            }
            if last > first {
                // Several groups: inner groups of 3–6 digits, the last of 1–6, one separator.
                let inner = &groups[last - 1];
                if !(3..=6).contains(&inner.len())
                    || group.len() > 6
                    || bytes[group.start - 1] != bytes[groups[first + 1].start - 1]
                {
                    break;
                }
            }
            for (slot, &b) in digits[count..].iter_mut().zip(&bytes[group.clone()]) {
                *slot = b - b'0';
            }
            count += group.len();
            if count >= MIN_CARD
                && is_card(&digits[..count])
                && stands_alone(bytes, groups[first].start..groups[last].end)
            {
                best = Some(last);
            }
        }
        match best {
            Some(last) => {
                found.push(Finding { kind: Kind::PaymentCard, range: groups[first].start..groups[last].end });
                first = last + 1;
            }
            None => first += 1,
        }
    }
}

/// Whether the digits at `range` are a number of their own: not next to a letter (part of a
/// hash or an identifier) and not the fraction or the integer part of a decimal number.
fn stands_alone(bytes: &[u8], range: Range<usize>) -> bool {
    let (before, after) = (byte_before(bytes, range.start), byte_after(bytes, range.end));
    let fraction = before == Some(b'.') && range.start >= 2 && is_digit(byte_before(bytes, range.start - 1));
    let integer = after == Some(b'.') && is_digit(byte_after(bytes, range.end + 1));
    !is_alnum(before) && !is_alnum(after) && !fraction && !integer
}

/// A known IIN prefix with one of its brand's lengths, and a valid Luhn check digit.
fn is_card(digits: &[u8]) -> bool {
    let n = digits.len();
    if n < MIN_CARD {
        return false;
    }
    let prefix = |k: usize| digits[..k].iter().fold(0u32, |v, &d| v * 10 + u32::from(d));
    let (p2, p3, p4) = (prefix(2), prefix(3), prefix(4));
    let brand = match digits[0] {
        4 => matches!(n, 13 | 16 | 19),
        5 => (51..=55).contains(&p2) && n == 16,
        2 => (2221..=2720).contains(&p4) && n == 16,
        3 => {
            ((p2 == 34 || p2 == 37) && n == 15)
                || (((300..=305).contains(&p3) || p2 == 36 || p2 == 38) && n >= 14)
                || ((3528..=3589).contains(&p4) && n >= 16)
        }
        6 => (p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) || p2 == 62) && n >= 16,
        _ => false,
    };
    brand && luhn(digits)
}

/// The Luhn check (shared with format-preserving masking, which must produce valid numbers).
fn luhn(digits: &[u8]) -> bool {
    super::method::luhn_valid(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds_and_texts<'a>(detectors: &Detectors, text: &'a str) -> Vec<(Kind, &'a str)> {
        detectors.find(text).into_iter().map(|f| (f.kind, &text[f.range])).collect()
    }

    fn found(text: &str) -> Vec<(Kind, &str)> {
        kinds_and_texts(&Detectors::standard(), text)
    }

    /// Asserts `text` holds exactly `expected` (a substring of `text`) as one finding of `kind`.
    fn assert_finds(kind: Kind, text: &str, expected: &str) {
        assert_eq!(found(text), vec![(kind, expected)], "in {text:?}");
    }

    fn assert_none(text: &str) {
        assert_eq!(found(text), vec![], "in {text:?}");
    }

    /// A card number of the given prefix and length with a valid check digit.
    fn luhn_complete(prefix: &str, len: usize, rng: &mut Rng) -> String {
        let mut s = prefix.to_owned();
        while s.len() < len - 1 {
            s.push(char::from(b'0' + rng.below(10) as u8));
        }
        for check in b'0'..=b'9' {
            let candidate = format!("{s}{}", char::from(check));
            let digits: Vec<u8> = candidate.bytes().map(|b| b - b'0').collect();
            if luhn(&digits) {
                return candidate;
            }
        }
        unreachable!("one check digit always completes a Luhn number")
    }

    #[test]
    fn kind_names() {
        let names: Vec<&str> = Kind::BUILTIN.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "pii.email",
                "payment.card",
                "pii.national_id",
                "pii.phone",
                "secret.cloud_key",
                "secret.jwt",
                "secret.private_key",
                "secret"
            ]
        );
        for kind in Kind::BUILTIN {
            assert_eq!(Kind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::from_name("custom"), None);
        assert_eq!(Kind::Custom(3).as_str(), "custom");
    }

    #[test]
    fn email() {
        for (text, email) in [
            ("alice@example.com", "alice@example.com"),
            ("Contact: <Bob.Smith+orders@Mail.Example.CO.UK>.", "Bob.Smith+orders@Mail.Example.CO.UK"),
            ("x_y-z%1@sub-domain.example.io, then", "x_y-z%1@sub-domain.example.io"),
            ("Key (email)=(carol.o'neil@example.org) already exists.", "carol.o'neil@example.org"),
            ("VALUES ('alice@example.com')", "alice@example.com"),
            ("ünïcödé dave@example.museum", "dave@example.museum"),
        ] {
            assert_finds(Kind::Email, text, email);
        }
        for text in [
            "root@localhost",
            "@example.com",
            "alice@example.c",
            "alice@example",
            "icon@2x.png",
            "user@192.168.0.1",
            "lodash@4.17.21",
            "alice at example dot com",
        ] {
            assert_none(text);
        }
    }

    #[test]
    fn payment_card() {
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4222222222222",       // Visa, 13 digits
            "5500-0000-0000-0004", // Mastercard
            "2223000048400011",    // Mastercard 2-series
            "378282246310005",     // Amex
            "3782 822463 10005",   // Amex, 4-6-5
            "6011111111111117",    // Discover
            "3530111333300000",    // JCB
            "30569309025904",      // Diners, 14 digits
            "6200000000000005",    // UnionPay
        ] {
            assert_finds(Kind::PaymentCard, &format!("card: {card}."), card);
        }
        // A card after other digit groups, and a negative number's digits.
        assert_finds(Kind::PaymentCard, "ref 1234 4111 1111 1111 1111", "4111 1111 1111 1111");
        assert_finds(Kind::PaymentCard, "Failing row contains (7, 4111111111111111, x).", "4111111111111111");
        let mut rng = Rng(7);
        let nine = luhn_complete("9", 16, &mut rng);
        for text in [
            "4111111111111112",       // Luhn-invalid
            "41111111111111111",      // Visa cannot have 17 digits
            "14111111111111111",      // preceded by a digit
            "41111111111111110",      // followed by a digit
            "4111-1111 1111-1111",    // mixed separators
            "4111--1111--1111--1111", // double separators
            "4111.1111.1111.1111",    // dots are no separator
            "0.4111111111111111",     // a decimal fraction
            "x4111111111111111",      // part of an identifier
            "4111111111111111ab",     // part of a hash
            "4111111111111111.25",    // a decimal's integer part
            "411111111111 1",         // 12 + 1: groups must be 3-6 digits
            nine.as_str(),            // Luhn-valid without a card prefix
            "3782822463100050",       // Amex prefix with 16 digits
        ] {
            assert_none(text);
        }
    }

    #[test]
    fn national_id() {
        for (text, id) in [
            ("SSN: 078-05-1120", "078-05-1120"),
            ("123-45-6789", "123-45-6789"),
            ("nino=AB123456C", "AB123456C"),
            ("NI number JG 10 37 59 A.", "JG 10 37 59 A"),
            ("(CE 123456 D)", "CE 123456 D"),
        ] {
            assert_finds(Kind::NationalId, text, id);
        }
        for text in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123456789",
            "1123-45-6789",
            "123-45-67890",
            "ORD-123-45-6789",
            "BG123456A",
            "DA123456A",
            "AO123456A",
            "AB123456E",
            "AB12345C",
            "XAB123456C",
            "ab123456c",
        ] {
            assert_none(text);
        }
    }

    #[test]
    fn phone() {
        for (text, phone) in [
            ("call +1 415 555 2671 now", "+1 415 555 2671"),
            ("+44 (20) 7946 0958", "+44 (20) 7946 0958"),
            ("tel:+4915123456789", "+4915123456789"),
            ("+33.1.23.45.67.89", "+33.1.23.45.67.89"),
            ("+1-415-555-2671", "+1-415-555-2671"),
            ("(415) 555-2671", "(415) 555-2671"),
            ("office 415-555-2671.", "415-555-2671"),
            ("1-800-555-0199", "1-800-555-0199"),
        ] {
            assert_finds(Kind::Phone, text, phone);
        }
        for text in [
            "+1234567",
            "4155552671",
            "+1234567890123456",
            "123-456-7890",
            "415-055-2671",
            "1e+123456789",
            "+0123456789",
            "+1234.5678",
            "2024-01-15T12:34:56+05:30",
            "12415-555-2671",
            "415-555-2671-9",
        ] {
            assert_none(text);
        }
    }

    #[test]
    fn cloud_key() {
        let gcp = format!("AIza{}", "SyA-1b2C3d4E5f6G7h8I9j0K_lMnOpQrStU");
        assert_eq!(gcp.len(), 39);
        let ghp = format!("ghp_{}", "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8");
        let pat = format!("github_pat_{}", "11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz");
        let slack = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx";
        let stripe = format!("sk_live_{}", "51H8abcdEFGHijklMNOPqrstUVWX");
        let azure_key = format!("{}==", "A".repeat(43) + &"b1+/".repeat(10) + "zzz");
        assert_eq!(azure_key.len(), 88);
        for (text, key) in [
            ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE".to_owned(), "AKIAIOSFODNN7EXAMPLE"),
            ("ASIAY34FZKBOKMUTVV7A".to_owned(), "ASIAY34FZKBOKMUTVV7A"),
            (format!("key={gcp}&q=1"), gcp.as_str()),
            (format!("GITHUB_TOKEN={ghp}"), ghp.as_str()),
            (format!("token {pat}"), pat.as_str()),
            (format!("slack: {slack}"), slack),
            (format!("\"{stripe}\""), stripe.as_str()),
            (
                format!(
                    "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={azure_key};EndpointSuffix=core.windows.net"
                ),
                azure_key.as_str(),
            ),
        ] {
            assert_eq!(
                kinds_and_texts(&Detectors::new(&[Kind::CloudKey], &[]).unwrap(), &text),
                vec![(Kind::CloudKey, key)]
            );
        }
        for text in [
            "AKIAIOSFODNN7EXAMPL".to_owned(),
            "AKIAIOSFODNN7EXAMPLE1".to_owned(),
            "XAKIAIOSFODNN7EXAMPLE".to_owned(),
            "akiaiosfodnn7example".to_owned(),
            "ghp_short".to_owned(),
            format!("sk_test_{}", "51H8abcdEFGHijklMNOPqrstUVWX"),
            "xoxb-notatoken".to_owned(),
            format!("AccountKey={}", "A".repeat(40)),
            format!("AIza{}", "x".repeat(34)),
        ] {
            assert_none(&text);
        }
    }

    const JWT_HS256: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    #[test]
    fn jwt() {
        assert_finds(Kind::Jwt, &format!("Authorization: Bearer {JWT_HS256}"), JWT_HS256);
        // alg none: an empty signature.
        let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
        assert_finds(Kind::Jwt, &format!("jwt {unsigned} end"), unsigned);
        for text in [
            // The header has no "alg".
            "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc".to_owned(),
            // Two segments.
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0".to_owned(),
            // Inside a longer token.
            format!("x{JWT_HS256}"),
        ] {
            assert_none(&text);
        }
    }

    #[test]
    fn private_key() {
        let block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\naFDrBz9vFqU4yqGqF2iNwG1c4dEdjsOPuM6LQn7CuWlm2MWmEwIDAQAB\n-----END RSA PRIVATE KEY-----";
        assert_finds(Kind::PrivateKey, &format!("key:\n{block}\ntrailing"), block);
        let pkcs8 = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----";
        assert_finds(Kind::PrivateKey, pkcs8, pkcs8);
        // Truncated: to the end of the text.
        let cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW";
        assert_finds(Kind::PrivateKey, &format!("value: {cut}"), cut);
        // A mismatched END line does not close the block.
        let mismatched = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrY\n-----END PRIVATE KEY-----\nmore";
        assert_finds(Kind::PrivateKey, mismatched, mismatched);
        assert_none(
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----",
        );
        assert_none("-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----");
    }

    #[test]
    fn secret() {
        for (text, value) in [
            ("password=hunter2", "hunter2"),
            ("user=bob&password=s3cr3t!&x=1", "s3cr3t!"),
            ("db_password: 's3cr3t pass'", "s3cr3t pass"),
            (r#"{"api_key": "abc123", "n": 1}"#, "abc123"),
            ("postgres://h/db?sslmode=require&access_token=xyz.123&x=1", "xyz.123"),
            ("Server=db;Uid=app;Pwd=Tr0ub4dor&3;", "Tr0ub4dor"),
            ("CLIENT_SECRET = \"a b c\"", "a b c"),
            ("ApiKey:zzz", "zzz"),
            ("SELECT 1 WHERE password = 'x'", "x"),
            ("Key (password)=(hunter2) already exists.", "hunter2"),
            ("Failing row contains (password=pa55).", "pa55)."),
        ] {
            assert_finds(Kind::Secret, text, value);
        }
        for text in [
            "password",
            "password=",
            "password= ",
            "password=&user=bob",
            "password=\"\"",
            "FATAL: password authentication failed for user \"bob\"",
            "tokenizer: bert",
            "secretary: Jane",
            "reset your password, then log in",
        ] {
            assert_none(text);
        }
    }

    #[test]
    fn custom_patterns() {
        let custom = [
            ("internal.employee_id".to_owned(), r"\bEMP-\d{6}\b".to_owned()),
            ("internal.session".to_owned(), r"sess=(?P<value>[0-9a-f]{8})".to_owned()),
        ];
        let detectors = Detectors::new(&[Kind::Email], &custom).unwrap();
        let text = "EMP-004211 mailed bob@example.com with sess=deadbeef";
        let findings = detectors.find(text);
        assert_eq!(
            findings.iter().map(|f| (detectors.name(f.kind), &text[f.range.clone()])).collect::<Vec<_>>(),
            vec![
                ("internal.employee_id", "EMP-004211"),
                ("pii.email", "bob@example.com"),
                ("internal.session", "deadbeef")
            ]
        );
        assert_eq!(findings[0].kind, Kind::Custom(0));
        assert_eq!(findings[2].kind, Kind::Custom(1));

        let bad = Detectors::new(&[], &[("my.rule".to_owned(), "(unclosed".to_owned())]).unwrap_err();
        assert!(bad.contains("\"my.rule\"") && bad.contains("(unclosed"), "{bad}");
        let empty = Detectors::new(&[], &[("lazy".to_owned(), "a*".to_owned())]).unwrap_err();
        assert!(empty.contains("\"lazy\"") && empty.contains("empty"), "{empty}");
        let twice = [("x".to_owned(), "a".to_owned()), ("x".to_owned(), "b".to_owned())];
        assert!(Detectors::new(&[], &twice).unwrap_err().contains("twice"));
        assert!(Detectors::new(&[], &[(" ".to_owned(), "a".to_owned())]).is_err());
        assert!(Detectors::new(&[Kind::Custom(0)], &[]).is_err());

        // A byte-level custom pattern that cuts a character is widened to whole characters.
        let bytewise = Detectors::new(&[], &[("b".to_owned(), r"(?-u)\xA9".to_owned())]).unwrap();
        let text = "a©b";
        assert_eq!(bytewise.find(text), vec![Finding { kind: Kind::Custom(0), range: 1..3 }]);
    }

    #[test]
    fn enabled_subset_and_empty() {
        let only_email = Detectors::new(&[Kind::Email], &[]).unwrap();
        assert_eq!(
            kinds_and_texts(&only_email, "a@example.com 4111111111111111"),
            vec![(Kind::Email, "a@example.com")]
        );
        let none = Detectors::new(&[], &[]).unwrap();
        assert!(none.is_empty());
        assert!(none.find("a@example.com").is_empty());
        assert!(!Detectors::standard().is_empty());
    }

    #[test]
    fn overlaps_keep_the_longer_then_the_earlier_kind() {
        // The secret's value and the e-mail are the same bytes: Email is listed first.
        assert_eq!(found("password=alice@example.com"), vec![(Kind::Email, "alice@example.com")]);
        // An E.164 number contains a North American one: the longer wins.
        assert_eq!(found("+1 415-555-2671"), vec![(Kind::Phone, "+1 415-555-2671")]);
        let f = |kind, range| Finding { kind, range };
        let resolved = resolve(vec![
            f(Kind::Secret, 0..10),
            f(Kind::Custom(0), 5..30),
            f(Kind::Email, 25..40),
            f(Kind::Phone, 50..60),
            f(Kind::PaymentCard, 50..60),
            f(Kind::Custom(1), 70..75),
            f(Kind::Custom(0), 70..75),
        ]);
        assert_eq!(resolved, vec![f(Kind::Custom(0), 5..30), f(Kind::PaymentCard, 50..60), f(Kind::Custom(0), 70..75)]);
    }

    #[test]
    fn several_findings_sorted() {
        let text = "Failing row contains (42, alice@example.com, 4111 1111 1111 1111, 078-05-1120, +44 20 7946 0958, password=pa55";
        assert_eq!(
            found(text),
            vec![
                (Kind::Email, "alice@example.com"),
                (Kind::PaymentCard, "4111 1111 1111 1111"),
                (Kind::NationalId, "078-05-1120"),
                (Kind::Phone, "+44 20 7946 0958"),
                (Kind::Secret, "pa55"),
            ]
        );
    }

    #[test]
    fn bytes_that_are_not_utf8() {
        let detectors = Detectors::standard();
        let bytes = b"\xff\xfealice@example.com\xc3 4111111111111111\x80";
        let findings = detectors.find_bytes(bytes);
        assert_eq!(
            findings,
            vec![Finding { kind: Kind::Email, range: 2..19 }, Finding { kind: Kind::PaymentCard, range: 21..37 }]
        );
        // Same results as `find` on valid UTF-8.
        let text = "Zoë <zoe@example.com> paid with 5500-0000-0000-0004";
        assert_eq!(detectors.find_bytes(text.as_bytes()), detectors.find(text));
    }

    #[test]
    fn mask_all_rewrites_every_finding() {
        let detectors = Detectors::standard();
        let (masked, kinds) = detectors
            .mask_all("mail alice@example.com or bob@example.org, card 4111 1111 1111 1111, ok", |f, s| {
                format!("[{}:{}]", f.kind.as_str(), s.len())
            });
        assert_eq!(masked, "mail [pii.email:17] or [pii.email:15], card [payment.card:19], ok");
        assert_eq!(kinds, vec![Kind::Email, Kind::PaymentCard]);
        let (same, none) = detectors.mask_all("nothing to see", |_, _| String::new());
        assert_eq!((same.as_str(), none), ("nothing to see", vec![]));
        let (unicode, _) = detectors.mask_all("ünï carol@example.com ü", |_, s| "*".repeat(s.len()));
        assert_eq!(unicode, "ünï ***************** ü");
    }

    /// A small deterministic PRNG (SplitMix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn range(&mut self, low: u64, high: u64) -> u64 {
            low + self.below(high - low + 1)
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }

        fn digits(&mut self, n: usize) -> String {
            (0..n).map(|_| char::from(b'0' + self.below(10) as u8)).collect()
        }

        fn hex(&mut self, n: usize) -> String {
            (0..n).map(|_| char::from(b"0123456789abcdef"[self.below(16) as usize])).collect()
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    const WORDS: &[&str] = &[
        "the",
        "order",
        "was",
        "shipped",
        "to",
        "customer",
        "account",
        "balance",
        "invoice",
        "pending",
        "refund",
        "password",
        "reset",
        "token",
        "expired",
        "secret",
        "recipe",
        "card",
        "number",
        "phone",
        "email",
        "address",
        "key",
        "value",
        "warehouse",
        "delivery",
        "status",
        "active",
        "archived",
        "report",
        "quarterly",
        "revenue",
        "growth",
        "a",
        "of",
        "and",
        "in",
        "with",
        "for",
        "on",
        "by",
        "new",
        "old",
        "blue",
        "green",
        "large",
        "small",
        "product",
        "review",
        "great",
        "quality",
        "fast",
        "slow",
        "support",
        "ticket",
        "closed",
        "opened",
        "user",
        "admin",
        "session",
        "login",
        "failed",
        "successful",
        "payment",
        "received",
        "pending",
        "Berlin",
        "London",
        "Tokyo",
        "Müller",
        "café",
        "naïve",
        "résumé",
        "日本語",
        "données",
        "straße",
    ];

    fn sentence(rng: &mut Rng) -> String {
        let n = rng.range(3, 15) as usize;
        let mut words: Vec<String> = (0..n).map(|_| (*rng.pick(WORDS)).to_owned()).collect();
        if rng.below(3) == 0 {
            words.insert(rng.below(n as u64) as usize, rng.range(1, 5000).to_string());
        }
        let mut s = words.join(" ");
        if let Some(first) = s.get(0..1) {
            s.replace_range(0..1, &first.to_uppercase());
        }
        s.push(*rng.pick(&['.', '!', '?', ',']));
        s
    }

    fn date(rng: &mut Rng) -> (u64, u64, u64, u64, u64, u64) {
        (
            rng.range(1970, 2038),
            rng.range(1, 12),
            rng.range(1, 28),
            rng.range(0, 23),
            rng.range(0, 59),
            rng.range(0, 59),
        )
    }

    fn luhn_fix(digits: String, valid: bool) -> String {
        let mut d: Vec<u8> = digits.bytes().map(|b| b - b'0').collect();
        let last = d.len() - 1;
        for check in 0..10 {
            d[last] = check;
            if luhn(&d) == valid {
                break;
            }
        }
        d.iter().map(|&x| char::from(b'0' + x)).collect()
    }

    type Generator = fn(&mut Rng) -> String;

    /// The categories of the false-positive corpus: name, how many values, generator.
    fn corpus() -> Vec<(&'static str, usize, Generator)> {
        vec![
            ("small integers", 5_000, |r| r.below(1_000_000).to_string()),
            ("integers of 1-12 digits", 8_000, |r| {
                let n = r.range(1, 12) as usize;
                let s = r.digits(n).trim_start_matches('0').to_owned();
                if s.is_empty() {
                    "0".to_owned()
                } else if r.below(5) == 0 {
                    format!("-{s}")
                } else {
                    s
                }
            }),
            ("epoch ms/us, snowflake ids", 4_000, |r| match r.below(3) {
                0 => r.range(1_000_000_000_000, 1_999_999_999_999).to_string(),
                1 => r.range(1_000_000_000_000_000, 1_999_999_999_999_999).to_string(),
                _ => r.range(1_000_000_000_000_000_000, 1_999_999_999_999_999_999).to_string(),
            }),
            ("random i64", 2_000, |r| (r.next() as i64).to_string()),
            ("decimals and prices", 5_000, |r| match r.below(5) {
                0 => format!("{}.{:02}", r.below(100_000), r.below(100)),
                1 => format!("${},{:03}.{:02}", r.range(1, 999), r.below(1000), r.below(100)),
                2 => format!("-{}.{}", r.below(1000), r.digits(6)),
                3 => format!("{}%", r.below(10_000) as f64 / 100.0),
                _ => format!("{}.{}E+{}", r.range(1, 9), r.digits(8), r.range(1, 300)),
            }),
            ("full-precision floats", 4_000, |r| {
                let x = (r.next() >> 11) as f64 / (1u64 << 53) as f64;
                match r.below(3) {
                    0 => format!("{x}"),
                    1 => format!("{}", x * 1e6),
                    _ => format!("{}", -x * 1e-3),
                }
            }),
            ("timestamps and dates", 8_000, |r| {
                let (y, mo, d, h, mi, s) = date(r);
                match r.below(8) {
                    0 => format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{}Z", r.digits(3)),
                    1 => format!("{y}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{}+{:02}", r.digits(6), r.below(13)),
                    2 => format!("{d:02}/{mo:02}/{y}"),
                    3 => format!("{mo}/{d}/{y} {}:{mi:02} PM", h % 12 + 1),
                    4 => format!("Mon, {d:02} Jan {y} {h:02}:{mi:02}:{s:02} GMT"),
                    5 => format!("{y}{mo:02}{d:02}{h:02}{mi:02}{s:02}"),
                    6 => format!("{y}-{mo:02}-{d:02}"),
                    _ => format!("{y}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}-07:00"),
                }
            }),
            ("UUIDs", 5_000, |r| format!("{}-{}-4{}-a{}-{}", r.hex(8), r.hex(4), r.hex(3), r.hex(3), r.hex(12))),
            ("IPv4/IPv6 addresses", 5_000, |r| {
                if r.below(2) == 0 {
                    format!("{}.{}.{}.{}", r.below(256), r.below(256), r.below(256), r.below(256))
                } else if r.below(2) == 0 {
                    (0..8).map(|_| format!("{:x}", r.below(65_536))).collect::<Vec<_>>().join(":")
                } else {
                    format!("2001:db8::{:x}:{:x}/64", r.below(65_536), r.below(65_536))
                }
            }),
            ("order numbers", 5_000, |r| match r.below(4) {
                0 => format!("ORD-{}-{:06}", r.range(2000, 2030), r.below(1_000_000)),
                1 => format!("INV-{:08}", r.below(100_000_000)),
                2 => format!("PO#{}-{:02}", r.range(10_000, 99_999), r.below(100)),
                _ => format!("SKU-{}-{}", r.hex(4).to_uppercase(), r.digits(5)),
            }),
            ("ISBN-13", 4_000, |r| {
                let body = format!("978{}", r.digits(9));
                let sum: u32 =
                    body.bytes().enumerate().map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 1 } else { 3 }).sum();
                let isbn = format!("{body}{}", (10 - sum % 10) % 10);
                if r.below(2) == 0 {
                    isbn
                } else {
                    format!("{}-{}-{}-{}-{}", &isbn[0..3], &isbn[3..4], &isbn[4..6], &isbn[6..12], &isbn[12..])
                }
            }),
            ("US ZIP and ZIP+4", 4_000, |r| {
                if r.below(2) == 0 { r.digits(5) } else { format!("{}-{}", r.digits(5), r.digits(4)) }
            }),
            (
                "words and sentences",
                10_000,
                |r| {
                    if r.below(3) == 0 { (*r.pick(WORDS)).to_owned() } else { sentence(r) }
                },
            ),
            ("file paths", 5_000, |r| match r.below(3) {
                0 => format!(
                    "/var/lib/postgresql/{}/main/base/{}/{}",
                    r.range(12, 17),
                    r.range(1, 99_999),
                    r.range(1, 99_999)
                ),
                1 => format!("C:\\Users\\{}\\Documents\\{}_{}.docx", r.pick(WORDS), r.pick(WORDS), r.below(1000)),
                _ => format!("s3/bucket-{}/{}/{}@2x.png", r.below(100), r.hex(8), r.pick(WORDS)),
            }),
            ("URLs", 5_000, |r| match r.below(3) {
                0 => format!(
                    "https://www.example.com/{}/{}?id={}&page={}",
                    r.pick(WORDS),
                    r.hex(6),
                    r.below(100_000),
                    r.below(50)
                ),
                1 => format!(
                    "http://api.example.org:8080/v{}/items/{}#section-{}",
                    r.range(1, 3),
                    r.below(1_000_000),
                    r.below(9)
                ),
                _ => format!("https://cdn.example.net/assets/{}.{}.js", r.pick(WORDS), r.hex(20)),
            }),
            ("hex hashes", 6_000, |r| {
                let n = *r.pick(&[32usize, 40, 64]);
                r.hex(n)
            }),
            ("base64 blobs", 6_000, |r| {
                let n = r.range(1, 200) as usize;
                let bytes = r.bytes(n);
                base64(&bytes)
            }),
            ("semantic versions", 4_000, |r| match r.below(3) {
                0 => format!("{}.{}.{}", r.below(30), r.below(100), r.below(1000)),
                1 => format!(
                    "v{}.{}.{}-rc.{}+build.{}",
                    r.below(30),
                    r.below(100),
                    r.below(100),
                    r.below(10),
                    r.below(10_000)
                ),
                _ => format!("pkg@{}.{}.{}", r.below(30), r.below(100), r.below(100)),
            }),
            ("JSON rows", 3_000, |r| {
                let (y, mo, d, h, mi, s) = date(r);
                format!(
                    r#"{{"id": {}, "status": "{}", "total": {}.{:02}, "created_at": "{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z", "note": "{}"}}"#,
                    r.below(10_000_000),
                    r.pick(WORDS),
                    r.below(10_000),
                    r.below(100),
                    sentence(r)
                )
            }),
            ("log lines", 3_000, |r| {
                let (y, mo, d, h, mi, s) = date(r);
                format!(
                    "{y}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{} UTC [{}] level=info worker={} queue={} elapsed_ms={} rows={}",
                    r.digits(3),
                    r.range(1000, 99_999),
                    r.below(16),
                    r.pick(WORDS),
                    r.below(100_000),
                    r.below(1_000_000)
                )
            }),
            ("server messages", 3_000, |r| match r.below(4) {
                0 => format!("duplicate key value violates unique constraint \"{}_pkey\"", r.pick(WORDS)),
                1 => format!("Key (id)=({}) already exists.", r.below(10_000_000)),
                2 => format!("relation \"{}_{}\" does not exist", r.pick(WORDS), r.below(100)),
                _ => format!("canceling statement due to statement timeout after {} ms", r.below(100_000)),
            }),
            ("alphanumeric ids and codes", 5_000, |r| {
                const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
                const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
                let n = r.range(6, 40) as usize;
                let mut code = |alphabet: &[u8], n: usize| -> String {
                    (0..n).map(|_| char::from(alphabet[r.below(alphabet.len() as u64) as usize])).collect()
                };
                match n % 4 {
                    0 => code(UPPER, n),
                    1 => format!("req_{}", code(LOWER, 24)),
                    2 => format!("ch_{}", code(LOWER, 24)),
                    _ => format!("{}-{}-{}", code(UPPER, 4), code(UPPER, 4), code(UPPER, 4)),
                }
            }),
            ("MAC addresses, upper-case hex", 3_000, |r| {
                if r.below(2) == 0 {
                    (0..6).map(|_| r.hex(2).to_uppercase()).collect::<Vec<_>>().join(":")
                } else {
                    format!("0x{}", r.hex(16).to_uppercase())
                }
            }),
            ("code and expressions", 2_000, |r| match r.below(4) {
                0 => format!("x += {};", r.below(100_000_000)),
                1 => format!("C++{} and a+b={}", r.range(11, 26), r.below(1_000_000)),
                2 => format!("SELECT * FROM t WHERE id = {} AND n > {}", r.below(10_000_000_000), r.below(100)),
                _ => format!("if (a == {}) {{ return b + {}; }}", r.below(1_000_000), r.below(1_000_000_000)),
            }),
            ("16-digit numbers failing Luhn", 4_000, |r| {
                let first = r.range(1, 9).to_string();
                let digits = first + &r.digits(15);
                luhn_fix(digits, false)
            }),
            ("Luhn-valid 16-digit numbers without a card prefix", 4_000, |r| {
                let first = r.pick(&["0", "1", "7", "8", "9"]).to_string();
                let digits = first + &r.digits(15);
                luhn_fix(digits, true)
            }),
        ]
    }

    /// Builds the corpus of non-sensitive values and counts, per category and kind, the values
    /// with a finding. Bounds: no kind may reach 0.1% of the whole corpus; only the card
    /// detector may fire at all, and only on the uniformly random 19-digit `i64`s, where the
    /// rate is inherent (~1.7%: a card prefix, 19 digits allowed, Luhn) and must stay under
    /// 3%.
    #[test]
    fn false_positive_rate_on_typical_values() {
        let detectors = Detectors::standard();
        let mut rng = Rng(0x5EED_DA7A);
        let mut total = 0usize;
        let mut per_kind = [0usize; 8];
        let mut failures = Vec::new();
        let mut card_in_random_i64 = 0usize;
        let mut random_i64 = 0usize;
        let started = std::time::Instant::now();
        for (category, count, generate) in corpus() {
            let mut per_category = [0usize; 8];
            for _ in 0..count {
                let value = generate(&mut rng);
                let findings = detectors.find(&value);
                let mut seen = [false; 8];
                for f in &findings {
                    seen[f.kind.rank() as usize] = true;
                }
                for (i, hit) in seen.iter().enumerate() {
                    if *hit {
                        per_category[i] += 1;
                        per_kind[i] += 1;
                        if Kind::BUILTIN[i] != Kind::PaymentCard || category != "random i64" {
                            failures.push(format!("{category}: {} in {value:?}", Kind::BUILTIN[i].as_str()));
                        }
                    }
                }
            }
            if category == "random i64" {
                random_i64 = count;
                card_in_random_i64 = per_category[1];
            }
            total += count;
            let hits: Vec<String> = Kind::BUILTIN
                .iter()
                .zip(per_category)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{} {n}", k.as_str()))
                .collect();
            eprintln!(
                "{category:<52} {count:>6} values, false positives: {}",
                if hits.is_empty() { "none".to_owned() } else { hits.join(", ") }
            );
        }
        eprintln!("corpus: {total} values in {:?}", started.elapsed());
        for (kind, n) in Kind::BUILTIN.iter().zip(per_kind) {
            eprintln!("{:<20} {n:>5} ({:.4}%)", kind.as_str(), n as f64 * 100.0 / total as f64);
        }
        assert!(total >= 100_000);
        for (kind, n) in Kind::BUILTIN.iter().zip(per_kind) {
            assert!(n * 1000 < total, "{}: {n} false positives in {total} values", kind.as_str());
        }
        assert!(failures.is_empty(), "unexpected false positives:\n{}", failures.join("\n"));
        assert!(card_in_random_i64 * 100 < random_i64 * 3, "{card_in_random_i64} cards in {random_i64} random i64");
    }

    /// Generated positives of the shape-defined kinds, each in a sentence: all must be found,
    /// with their exact range.
    #[test]
    fn generated_true_positives() {
        let detectors = Detectors::standard();
        let mut rng = Rng(0xC0FFEE);
        let brands: &[(&str, &[usize])] = &[
            ("4", &[13, 16, 19]),
            ("51", &[16]),
            ("55", &[16]),
            ("2221", &[16]),
            ("2720", &[16]),
            ("34", &[15]),
            ("37", &[15]),
            ("6011", &[16, 19]),
            ("65", &[16]),
            ("644", &[16]),
            ("649", &[17]),
            ("3528", &[16]),
            ("3589", &[19]),
            ("300", &[14]),
            ("305", &[16]),
            ("36", &[14]),
            ("38", &[16]),
            ("62", &[16, 18, 19]),
        ];
        let mut cases: Vec<(Kind, String)> = Vec::new();
        for _ in 0..200 {
            let (prefix, lengths) = rng.pick(brands);
            let card = luhn_complete(prefix, *rng.pick(lengths), &mut rng);
            let group = |sizes: &[usize], sep: &str| {
                let mut at = 0;
                let parts: Vec<&str> = sizes
                    .iter()
                    .map(|n| {
                        at += n;
                        &card[at - n..at]
                    })
                    .collect();
                parts.join(sep)
            };
            let formatted = match (card.len(), rng.below(3)) {
                (16, 1) => group(&[4, 4, 4, 4], " "),
                (16, 2) => group(&[4, 4, 4, 4], "-"),
                (15, 1) => group(&[4, 6, 5], " "),
                (14, 1) => group(&[4, 6, 4], "-"),
                _ => card.clone(),
            };
            cases.push((Kind::PaymentCard, formatted));
            let area = loop {
                let area = rng.range(1, 899);
                if area != 666 {
                    break area;
                }
            };
            cases.push((Kind::NationalId, format!("{area:03}-{:02}-{:04}", rng.range(1, 99), rng.range(1, 9999))));
            let local =
                format!("{}.{}{}", rng.pick(&["alice", "bob", "j", "x_y"]), rng.hex(4), rng.pick(&["", "+tag"]));
            let domain = format!(
                "{}.{}",
                rng.pick(&["example", "mail-01", "sub.corp"]),
                rng.pick(&["com", "io", "co.uk", "DE"])
            );
            cases.push((Kind::Email, format!("{local}@{domain}")));
            let phone = match rng.below(4) {
                0 => format!("+{} {} {}", rng.range(1, 99), rng.digits(3), rng.digits(6)),
                1 => format!("+{}{}", rng.range(1, 9), rng.digits(10)),
                2 => format!("({}) {}-{}", rng.range(200, 999), rng.range(200, 999), rng.digits(4)),
                _ => format!("{}-{}-{}", rng.range(200, 999), rng.range(200, 999), rng.digits(4)),
            };
            cases.push((Kind::Phone, phone));
            let aws: String =
                (0..16).map(|_| char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[rng.below(32) as usize])).collect();
            cases.push((Kind::CloudKey, format!("{}{aws}", rng.pick(&["AKIA", "ASIA", "AROA"]))));
        }
        let mut missed = Vec::new();
        for (kind, value) in &cases {
            let text = format!("Failing row contains (17, {value}, active).");
            let findings = detectors.find(&text);
            let expected = vec![Finding { kind: *kind, range: 26..26 + value.len() }];
            if findings != expected {
                missed.push(format!("{kind:?} {value:?}: {findings:?}"));
            }
        }
        eprintln!("generated positives: {} of {} found", cases.len() - missed.len(), cases.len());
        assert!(missed.is_empty(), "missed:\n{}", missed.join("\n"));
    }

    #[test]
    fn one_mebibyte_of_ordinary_text() {
        let mut rng = Rng(42);
        let mut text = String::with_capacity(1 << 20);
        while text.len() < 1 << 20 {
            text.push_str(&sentence(&mut rng));
            text.push(' ');
            let (y, mo, d, h, mi, s) = date(&mut rng);
            text.push_str(&format!("{y}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} id={} ", rng.below(1_000_000)));
        }
        let detectors = Detectors::standard();
        assert_eq!(detectors.find(&text), vec![]);
        // Texts of one repeated character, which some prefilters pass.
        for c in ["1", "@", "+1", "a-", "=", "eyJ."] {
            let text = c.repeat((1 << 20) / c.len());
            assert!(detectors.find(&text).len() <= 1, "{c:?}");
        }
    }
}
