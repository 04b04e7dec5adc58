//! The relations a MySQL session's masking resolves result columns through, read from
//! information_schema on the session's own connection: user tables and views with their
//! columns, view definitions, which tables have triggers, and the stored routines' names.
//!
//! Relations are numbered here (MySQL has no OIDs): a synthetic number per relation, the
//! column's place in ordinal order as its attribute number. Names are folded to lower case
//! (MySQL compares column names without case). Tables whose names differ only in case are
//! read as one relation of untraceable columns: a rule naming either protects both, and what
//! is read from them is of unknown lineage.

use std::collections::{HashMap, HashSet};

use crate::sql::{
    Dialect,
    catalog::{Catalog, ColumnInfo, Relations, Volatility},
};

/// The first synthetic relation number.
const FIRST_OID: u32 = 16_384;
/// Relations read at most (a catalog beyond this is refused rather than read partly).
pub const MAX_RELATIONS: usize = 50_000;

/// What the proxy asks the server for, each value cast to binary (the server converts text to
/// the session's character_set_results, which the client chooses). Rows: kind, schema,
/// relation, then per kind: r (table type), a (column name, ordinal position), g (a generated
/// column and its expression), v (view definition), t (a trigger on it), f (a routine: its type),
/// c (a collation of a character set whose text is not ASCII-compatible: its id).
pub const QUERY: &str = "SELECT 'r', CAST(TABLE_SCHEMA AS BINARY), CAST(TABLE_NAME AS BINARY), \
       CAST(TABLE_TYPE AS BINARY), CAST('' AS BINARY) FROM information_schema.TABLES \
       WHERE TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema', 'mysql', 'sys') \
     UNION ALL SELECT 'a', CAST(TABLE_SCHEMA AS BINARY), CAST(TABLE_NAME AS BINARY), \
       CAST(COLUMN_NAME AS BINARY), CAST(ORDINAL_POSITION AS BINARY) FROM information_schema.COLUMNS \
       WHERE TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema', 'mysql', 'sys') \
     UNION ALL SELECT 'g', CAST(TABLE_SCHEMA AS BINARY), CAST(TABLE_NAME AS BINARY), \
       CAST(COLUMN_NAME AS BINARY), CAST(GENERATION_EXPRESSION AS BINARY) FROM information_schema.COLUMNS \
       WHERE TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema', 'mysql', 'sys') \
       AND GENERATION_EXPRESSION IS NOT NULL AND GENERATION_EXPRESSION <> '' \
     UNION ALL SELECT 'v', CAST(TABLE_SCHEMA AS BINARY), CAST(TABLE_NAME AS BINARY), \
       CAST(VIEW_DEFINITION AS BINARY), CAST('' AS BINARY) FROM information_schema.VIEWS \
       WHERE TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema', 'mysql', 'sys') \
     UNION ALL SELECT 't', CAST(EVENT_OBJECT_SCHEMA AS BINARY), CAST(EVENT_OBJECT_TABLE AS BINARY), \
       CAST('' AS BINARY), CAST('' AS BINARY) FROM information_schema.TRIGGERS \
     UNION ALL SELECT 'f', CAST(ROUTINE_SCHEMA AS BINARY), CAST(ROUTINE_NAME AS BINARY), \
       CAST(ROUTINE_TYPE AS BINARY), CAST('' AS BINARY) FROM information_schema.ROUTINES \
     UNION ALL SELECT 'c', CAST(CHARACTER_SET_NAME AS BINARY), CAST(COLLATION_NAME AS BINARY), \
       CAST(ID AS BINARY), CAST('' AS BINARY) FROM information_schema.COLLATIONS \
       WHERE CHARACTER_SET_NAME IN ('ucs2', 'utf16', 'utf16le', 'utf32')";

/// What the catalog query tells: the catalog, and the collation ids whose text is not
/// ASCII-compatible (UCS-2, UTF-16, UTF-32: a value in them is not read by the detectors).
pub struct Read {
    pub catalog: Catalog,
    pub wide: HashSet<u16>,
}

/// Builds the catalog from the query's rows (each five values), or says why it cannot.
pub fn catalog(rows: &[Vec<Option<Vec<u8>>>]) -> Result<Read, String> {
    let text = |row: &Vec<Option<Vec<u8>>>, i: usize| -> Result<String, String> {
        let bytes = row.get(i).ok_or("a catalog row with too few values")?.clone().unwrap_or_default();
        String::from_utf8(bytes).map_err(|_| "a catalog value that is not UTF-8".to_string())
    };
    let mut relations = Relations::new(Dialect::MYSQL);
    let mut by_name: HashMap<(String, String), u32> = HashMap::new();
    let mut collided: HashSet<u32> = HashSet::new();
    let mut columns: Vec<(u32, u64, String)> = Vec::new();
    let mut catalog = Catalog::default();
    let mut wide = HashSet::new();
    // Relations first (the server may return the union's parts in any order).
    for pass in ['r', 'a', 'g', 'v', 't', 'f', 'c'] {
        if pass == 'g' {
            add_columns(&mut relations, std::mem::take(&mut columns))?;
        }
        for row in rows {
            let kind = text(row, 0)?;
            if kind.len() != 1 || !kind.starts_with(pass) {
                if !matches!(kind.as_str(), "r" | "a" | "g" | "v" | "t" | "f" | "c") {
                    return Err(format!("a catalog row of unknown kind {kind:?}"));
                }
                continue;
            }
            let schema = text(row, 1)?.to_lowercase();
            let name = text(row, 2)?.to_lowercase();
            let key = (schema.clone(), name.clone());
            match pass {
                'r' => {
                    if let Some(&oid) = by_name.get(&key) {
                        // Names that differ only in case: one relation, of columns whose
                        // lineage is not known (a view whose definition is not read).
                        collided.insert(oid);
                        if let Some(r) = relations.by_oid.get_mut(&oid) {
                            r.kind = 'v';
                            r.definition = None;
                        }
                        continue;
                    }
                    if by_name.len() >= MAX_RELATIONS {
                        return Err(format!("the database has more than {MAX_RELATIONS} relations"));
                    }
                    let oid = FIRST_OID + by_name.len() as u32;
                    let view = text(row, 3)?.eq_ignore_ascii_case("VIEW");
                    relations.add_relation(oid, &schema, &name, if view { 'v' } else { 'r' }, false);
                    by_name.insert(key, oid);
                }
                'a' => {
                    let Some(&oid) = by_name.get(&key) else { continue };
                    let position = text(row, 4)?
                        .parse::<u64>()
                        .map_err(|_| format!("a column position of {schema}.{name} that is not a number"))?;
                    columns.push((oid, position, text(row, 3)?.to_lowercase()));
                }
                'g' => {
                    let column = text(row, 3)?.to_lowercase();
                    let attnum = by_name
                        .get(&key)
                        .and_then(|oid| relations.by_oid.get(oid))
                        .and_then(|r| r.columns.iter().find(|c| c.name == column).map(|c| (r.oid, c.attnum)));
                    if let Some(at) = attnum {
                        // The names it uses (identifiers, folded; string contents too: more, not fewer).
                        let expression = text(row, 4)?.to_lowercase();
                        let names: Vec<String> = expression
                            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                            .filter(|w| !w.is_empty())
                            .map(str::to_string)
                            .collect();
                        relations.generated_from.insert(at, names);
                    }
                }
                'v' => {
                    if let Some(&oid) = by_name.get(&key)
                        && !collided.contains(&oid)
                    {
                        let definition = text(row, 3)?;
                        // Shown only to the view's definer or a holder of SHOW VIEW: without it
                        // the view's columns are of unknown lineage.
                        if !definition.trim().is_empty() {
                            relations.add_definition(oid, definition);
                        }
                    }
                }
                't' => {
                    if let Some(&oid) = by_name.get(&key)
                        && let Some(r) = relations.by_oid.get_mut(&oid)
                    {
                        r.code = true;
                    }
                }
                'f' => catalog.add_function(&schema, &name, Volatility::Volatile, None),
                _ => {
                    if let Ok(id) = text(row, 3)?.parse::<u16>() {
                        wide.insert(id);
                    }
                }
            }
        }
    }
    catalog.relations = Some(relations);
    Ok(Read { catalog, wide })
}

/// Adds columns (relation, ordinal position, name) in each relation's ordinal order, each
/// name once.
fn add_columns(relations: &mut Relations, mut columns: Vec<(u32, u64, String)>) -> Result<(), String> {
    columns.sort();
    for (oid, _, name) in columns {
        let Some(r) = relations.by_oid.get(&oid) else { continue };
        if r.columns.iter().any(|c| c.name == name) {
            continue;
        }
        let attnum =
            i16::try_from(r.columns.len() + 1).map_err(|_| format!("{}.{} has too many columns", r.schema, r.name))?;
        relations.add_column(oid, ColumnInfo { attnum, name, type_oid: 0, generated: false });
    }
    Ok(())
}

/// The relation number and attribute number of `schema.table.column` (a result column's
/// origin as the server describes it), if the catalog has it.
pub fn origin(catalog: &Catalog, schema: &[u8], table: &[u8], column: &[u8]) -> Option<(u32, i16)> {
    let relations = catalog.relations.as_ref()?;
    let fold = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_lowercase);
    let r = relations.named(&fold(schema)?, &fold(table)?)?;
    let column = fold(column)?;
    r.columns.iter().find(|c| c.name == column).map(|c| (r.oid, c.attnum))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[&str]) -> Vec<Option<Vec<u8>>> {
        values.iter().map(|v| Some(v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn relations_columns_and_views_are_read_folded_whatever_the_row_order() {
        let rows = vec![
            row(&["a", "CRM", "People", "SSN", "2"]),
            row(&["a", "crm", "people", "id", "1"]),
            row(&["r", "crm", "people", "BASE TABLE", ""]),
            row(&["r", "crm", "People", "BASE TABLE", ""]),
            row(&["a", "crm", "People", "ssn", "2"]),
            row(&["r", "crm", "v", "VIEW", ""]),
            row(&["a", "crm", "v", "x", "1"]),
            row(&["v", "crm", "v", "select `crm`.`people`.`ssn` AS `x` from `crm`.`people`", ""]),
            row(&["t", "crm", "people", "", ""]),
            row(&["f", "crm", "Leak", "FUNCTION", ""]),
            row(&["g", "crm", "people", "ID", "concat(`SSN`,'x')"]),
            row(&["c", "utf16", "utf16_general_ci", "54", ""]),
        ];
        let read = catalog(&rows).unwrap();
        assert!(read.wide.contains(&54));
        let c = read.catalog;
        let r = c.relations.as_ref().unwrap();
        let people = r.named("crm", "people").unwrap();
        assert_eq!(people.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["id", "ssn"]);
        assert!(people.code, "a trigger on it");
        assert_eq!(people.kind, 'v', "People and people: one relation whose lineage is not known");
        assert!(people.definition.is_none());
        assert_eq!(r.named("crm", "v").unwrap().kind, 'v');
        assert!(r.named("crm", "v").unwrap().definition.is_some());
        assert!(c.has_user_function("leak"));
        assert!(r.generated_from[&(people.oid, 1)].contains(&"ssn".to_string()));
        assert_eq!(origin(&c, b"CRM", b"PEOPLE", b"Ssn"), Some((people.oid, 2)));
        assert_eq!(origin(&c, b"crm", b"people", b"nope"), None);
        assert!(catalog(&[row(&["z", "a", "b", "", ""])]).is_err());
        assert!(catalog(&[vec![Some(vec![b'r']), Some(vec![0xff])]]).is_err());
    }
}
