//! What a statement does, as policy sees it: its classes of effect and the objects it names.
//! Plain data, shared by the analyser (which fills it), policy (which matches it) and the audit
//! trail (which records it).

use std::fmt;

/// A class of effect. A statement has one primary class (its most consequential effect) and
/// the set of every class it was found to have (a CTE that deletes inside a SELECT is both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Reads data and nothing else (only shapes positively known to be reads).
    Read,
    /// Changes rows (INSERT, UPDATE, DELETE, MERGE, COPY FROM, sequence changes, ...).
    Write,
    /// Changes the schema (CREATE, ALTER, DROP, TRUNCATE, COMMENT, ...).
    Ddl,
    /// Changes privileges or who the session acts as (GRANT, REVOKE, roles, SET ROLE, ...).
    Dcl,
    /// Operates the database (VACUUM, ANALYZE, CLUSTER, REINDEX, CHECKPOINT, LOCK, ALTER SYSTEM,
    /// REFRESH MATERIALIZED VIEW, ...).
    Admin,
    /// Session settings (SET, SHOW, RESET, DISCARD).
    Session,
    /// Transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...).
    Transaction,
    /// Harmless utility without a data effect (an empty statement, LISTEN, ...).
    Utility,
    /// What it does cannot be known from its text (DO, CALL, functions not known to be
    /// read-only, dynamic SQL, text that does not parse): `class_reason` says why.
    Unknown,
}

impl Class {
    /// Every class, in the order of their bits.
    pub const ALL: [Class; 9] = [
        Class::Read,
        Class::Write,
        Class::Ddl,
        Class::Dcl,
        Class::Admin,
        Class::Session,
        Class::Transaction,
        Class::Utility,
        Class::Unknown,
    ];

    /// The name in records and policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Ddl => "ddl",
            Class::Dcl => "dcl",
            Class::Admin => "admin",
            Class::Session => "session",
            Class::Transaction => "transaction",
            Class::Utility => "utility",
            Class::Unknown => "unknown",
        }
    }

    /// The class named `name` (as in policy files).
    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// How consequential: the primary class of a statement is its highest-ranked effect.
    pub fn rank(self) -> u8 {
        match self {
            Class::Dcl => 9,
            Class::Ddl => 8,
            Class::Unknown => 7,
            Class::Admin => 6,
            Class::Write => 5,
            Class::Read => 4,
            Class::Session => 3,
            Class::Transaction => 2,
            Class::Utility => 1,
        }
    }

    fn bit(self) -> u16 {
        1 << Class::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of classes (a bitmask).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClassSet(u16);

impl ClassSet {
    pub const EMPTY: ClassSet = ClassSet(0);

    pub fn of(classes: &[Class]) -> ClassSet {
        classes.iter().fold(ClassSet::EMPTY, |s, c| s.with(*c))
    }

    pub fn with(self, class: Class) -> ClassSet {
        ClassSet(self.0 | class.bit())
    }

    pub fn insert(&mut self, class: Class) {
        *self = self.with(class);
    }

    pub fn without(self, class: Class) -> ClassSet {
        ClassSet(self.0 & !class.bit())
    }

    pub fn union(self, other: ClassSet) -> ClassSet {
        ClassSet(self.0 | other.0)
    }

    pub fn contains(self, class: Class) -> bool {
        self.0 & class.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether some class is in both.
    pub fn intersects(self, other: ClassSet) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether every class of `self` is in `other`.
    pub fn is_subset(self, other: ClassSet) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Class> {
        Class::ALL.into_iter().filter(move |c| self.contains(*c))
    }

    /// The most consequential class in the set.
    pub fn primary(self) -> Option<Class> {
        self.iter().max_by_key(|c| c.rank())
    }
}

/// A possibly schema-qualified name of a relation or function, normalised as the server reads
/// it: unquoted parts folded to ASCII lower case, quoted parts verbatim (`""` unescaped), each
/// part cut to 63 bytes (NAMEDATALEN - 1) at a character boundary. `public.t`, `"t"`, `T` and
/// `t` are then one relation once `schema` is resolved against the session's search_path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName {
    /// The schema written in the statement (a database name before it, `db.schema.t`, is
    /// dropped: PostgreSQL only accepts the current database there).
    pub schema: Option<String>,
    pub name: String,
}

impl ObjectName {
    pub fn new(schema: Option<&str>, name: &str) -> ObjectName {
        ObjectName { schema: schema.map(str::to_string), name: name.to_string() }
    }
}

impl fmt::Display for ObjectName {
    /// `schema.name`, each part quoted when it would not read back as itself unquoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn part(f: &mut fmt::Formatter<'_>, p: &str) -> fmt::Result {
            let plain = !p.is_empty()
                && p.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'$');
            if plain { f.write_str(p) } else { write!(f, "\"{}\"", p.replace('"', "\"\"")) }
        }
        if let Some(schema) = &self.schema {
            part(f, schema)?;
            f.write_str(".")?;
        }
        part(f, &self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_ranks() {
        let s = ClassSet::of(&[Class::Read, Class::Write]);
        assert!(s.contains(Class::Write) && !s.contains(Class::Ddl));
        assert_eq!(s.primary(), Some(Class::Write));
        assert!(ClassSet::of(&[Class::Read]).is_subset(s));
        assert!(!s.is_subset(ClassSet::of(&[Class::Read])));
        assert_eq!(ClassSet::EMPTY.primary(), None);
        for c in Class::ALL {
            assert_eq!(Class::from_name(c.as_str()), Some(c));
        }
    }

    #[test]
    fn names_display_as_they_read_back() {
        assert_eq!(ObjectName::new(Some("public"), "t").to_string(), "public.t");
        assert_eq!(ObjectName::new(None, "T").to_string(), "\"T\"");
        assert_eq!(ObjectName::new(Some("a.b"), "x\"y").to_string(), "\"a.b\".\"x\"\"y\"");
    }
}
