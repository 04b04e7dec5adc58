//! What calling a built-in function does, known from its name alone (no catalog yet).
//!
//! A call is read-only only if its name is on a list below; known dangerous families carry a
//! class and a reason; anything else is `unknown`. The caller checks the schema first: only an
//! unqualified or `pg_catalog`-qualified name can be a built-in (`myschema.lower(x)` is not).
//!
//! Where the lists come from: `CATALOG_READ_ONLY` is every function of PostgreSQL 15's initial
//! `pg_proc` (`postgres.bki`, generated from `src/include/catalog/pg_proc.dat`) whose every
//! overload is `provolatile` `i` (IMMUTABLE) or `s` (STABLE), without the ones SQL cannot
//! call (taking `internal` or `cstring`, returning `internal`, `cstring`, `trigger` or a
//! handler type), and without the `*_to_xml*` family (stable, but it reads whole tables,
//! schemas or databases named by a string, out of sight of relation rules). A STABLE function
//! cannot change the database (the executor runs it read-only); the volatile families and the
//! few harmless volatile functions are listed by hand. Names added in PostgreSQL 16 and 17 are
//! in `NEWER_READ_ONLY`, from the release notes.
//!
//! Limits, until catalog lookups arrive: an unqualified name resolves through the session's
//! search_path, and a user function of the same name with a better-matching signature (or in a
//! schema placed before `pg_catalog`) wins over the built-in one.

use super::class::Class;

/// What a call of a built-in (or built-in looking) function does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Builtin {
    /// Reads, computes, or reports; changes nothing.
    ReadOnly,
    /// A known effect (several classes for a family that both changes data and escapes the
    /// database), and why.
    Effect(&'static [Class], &'static str),
    /// `set_config(name, value, is_local)`: its class depends on the setting it names.
    SetConfig,
}

/// What calling the built-in `name` (normalised, unqualified) does, if it is known.
pub(super) fn builtin(name: &str) -> Option<Builtin> {
    if let Some(effect) = family(name) {
        return Some(effect);
    }
    let listed = |list: &[&str]| list.binary_search(&name).is_ok();
    (listed(CATALOG_READ_ONLY) || listed(NEWER_READ_ONLY) || listed(SQL_CONSTRUCTS) || listed(HARMLESS_VOLATILE))
        .then_some(Builtin::ReadOnly)
}

/// Families with an effect beyond reading, by name or prefix. Checked before the read lists.
fn family(name: &str) -> Option<Builtin> {
    use Builtin::Effect;
    const WRITE: &[Class] = &[Class::Write];
    const ADMIN: &[Class] = &[Class::Admin];
    const UNKNOWN: &[Class] = &[Class::Unknown];
    const WRITE_UNKNOWN: &[Class] = &[Class::Write, Class::Unknown];
    let prefixed = |prefixes: &[&str]| prefixes.iter().any(|p| name.starts_with(p));
    Some(match name {
        "set_config" => Builtin::SetConfig,
        "nextval" | "setval" => Effect(WRITE, "changes a sequence"),
        "pg_notify" => Effect(WRITE, "sends a notification to other sessions"),
        "pg_logical_emit_message" => Effect(WRITE, "writes a message into the WAL"),
        "setseed" => Effect(&[Class::Session], "sets the session's random seed"),
        "loread" | "lowrite" => Effect(WRITE_UNKNOWN, "large objects (and server files)"),
        _ if prefixed(&["lo_"]) => Effect(WRITE_UNKNOWN, "large objects (and server files)"),
        "pg_read_file"
        | "pg_read_file_old"
        | "pg_read_binary_file"
        | "pg_stat_file"
        | "pg_logdir_ls"
        | "pg_hba_file_rules"
        | "pg_ident_file_mappings"
        | "pg_show_all_file_settings" => Effect(UNKNOWN, "reads server files"),
        _ if prefixed(&["pg_ls_"]) => Effect(UNKNOWN, "reads server files"),
        // adminpack: pg_file_write, pg_file_rename, pg_file_unlink, pg_file_sync, ...
        _ if prefixed(&["pg_file_"]) => Effect(UNKNOWN, "reads or writes server files"),
        _ if prefixed(&["dblink", "postgres_fdw"]) => Effect(UNKNOWN, "opens or uses other connections"),
        "query_to_xml"
        | "query_to_xmlschema"
        | "query_to_xml_and_xmlschema"
        | "cursor_to_xml"
        | "cursor_to_xmlschema"
        | "ts_stat"
        | "ts_rewrite" => Effect(UNKNOWN, "runs SQL given as a string"),
        _ if prefixed(&["table_to_xml", "schema_to_xml", "database_to_xml"]) => {
            Effect(UNKNOWN, "reads tables named by a string")
        }
        "pg_logical_slot_get_changes"
        | "pg_logical_slot_get_binary_changes"
        | "pg_logical_slot_peek_changes"
        | "pg_logical_slot_peek_binary_changes" => {
            Effect(&[Class::Admin, Class::Unknown], "reads every change decoded from the WAL")
        }
        "pg_terminate_backend"
        | "pg_cancel_backend"
        | "pg_signal_backend"
        | "pg_reload_conf"
        | "pg_rotate_logfile"
        | "pg_rotate_logfile_old"
        | "pg_promote"
        | "pg_log_backend_memory_contexts"
        | "pg_log_standby_snapshot" => Effect(ADMIN, "controls server processes"),
        _ if prefixed(&["pg_advisory_", "pg_try_advisory_"]) => Effect(ADMIN, "takes or releases advisory locks"),
        "pg_switch_wal"
        | "pg_create_restore_point"
        | "pg_backup_start"
        | "pg_backup_stop"
        | "pg_start_backup"
        | "pg_stop_backup"
        | "pg_wal_replay_pause"
        | "pg_wal_replay_resume"
        | "pg_sync_replication_slots"
        | "pg_stop_making_pinned_objects"
        | "pg_nextoid" => Effect(ADMIN, "operates the server (WAL, backup, recovery)"),
        "pg_create_physical_replication_slot"
        | "pg_create_logical_replication_slot"
        | "pg_copy_physical_replication_slot"
        | "pg_copy_logical_replication_slot"
        | "pg_drop_replication_slot"
        | "pg_replication_slot_advance" => Effect(ADMIN, "manages replication slots"),
        _ if prefixed(&["pg_replication_origin_"]) && name != "pg_replication_origin_oid" => {
            Effect(ADMIN, "manages replication origins")
        }
        _ if prefixed(&["pg_stat_reset"]) => Effect(ADMIN, "resets statistics"),
        "brin_summarize_new_values" | "brin_summarize_range" | "brin_desummarize_range" | "gin_clean_pending_list" => {
            Effect(ADMIN, "maintains an index")
        }
        "pg_import_system_collations" => Effect(&[Class::Ddl], "creates collations"),
        "pg_extension_config_dump" => Effect(UNKNOWN, "changes an extension's configuration"),
        _ if prefixed(&["binary_upgrade_"]) => Effect(UNKNOWN, "a pg_upgrade internal"),
        _ => return None,
    })
}

/// Settings whose change is a change of privileges (`set_config('role', ...)`, `SET role`).
pub(super) fn privileged_setting(name: &str) -> bool {
    // GUC names are case-insensitive, quoted or not.
    ["role", "session_authorization"].iter().any(|s| name.trim().eq_ignore_ascii_case(s))
}

/// Built-ins with an effect that are not VOLATILE (PostgreSQL 15's `provolatile` 's' or 'i'):
/// the planner may evaluate them on constants (`estimate_expression_value`, a LIMIT's estimate),
/// so a plain EXPLAIN runs them too.
pub(super) fn evaluated_when_planned(name: &str) -> bool {
    name == "ts_rewrite" || ["table_to_xml", "schema_to_xml", "database_to_xml"].iter().any(|p| name.starts_with(p))
}

/// Settings only a superuser (or a role granted SET on them) may change, PostgreSQL 15's
/// `context = 'superuser'` (sorted): they turn triggers off (`session_replication_role`),
/// logging and statistics off, checks off, or load code; and pgaudit's.
const SUPERUSER_SETTINGS: &[&str] = &[
    "allow_in_place_tablespaces",
    "allow_system_table_mods",
    "backtrace_functions",
    "commit_delay",
    "compute_query_id",
    "deadlock_timeout",
    "debug_discard_caches",
    "dynamic_library_path",
    "extension_destdir",
    "ignore_checksum_failure",
    "jit_dump_bitcode",
    "lc_messages",
    "lo_compat_privileges",
    "log_duration",
    "log_error_verbosity",
    "log_executor_stats",
    "log_lock_waits",
    "log_min_duration_sample",
    "log_min_duration_statement",
    "log_min_error_statement",
    "log_min_messages",
    "log_parameter_max_length",
    "log_parser_stats",
    "log_planner_stats",
    "log_replication_commands",
    "log_statement",
    "log_statement_sample_rate",
    "log_statement_stats",
    "log_temp_files",
    "log_transaction_sample_rate",
    "max_stack_depth",
    "session_preload_libraries",
    "session_replication_role",
    "temp_file_limit",
    "track_activities",
    "track_counts",
    "track_functions",
    "track_io_timing",
    "track_wal_io_timing",
    "update_process_title",
    "wal_compression",
    "wal_consistency_checking",
    "wal_init_zero",
    "wal_recycle",
    "zero_damaged_pages",
];

/// Whether changing setting `name` is administration: only a superuser may, and it can turn off
/// what others rely on (triggers, logging, checks).
pub(super) fn superuser_setting(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    name.starts_with("pgaudit.") || SUPERUSER_SETTINGS.binary_search(&name.as_str()).is_ok()
}

/// Whether `name` is a table of PostgreSQL 15's system catalog (`postgres.bki`).
pub(super) fn is_catalog(name: &str) -> bool {
    CATALOGS.binary_search(&name).is_ok()
}

/// Catalogs that hold roles, memberships, privileges or row-level security: writing them is
/// `dcl`.
pub(super) fn is_privilege_catalog(name: &str) -> bool {
    matches!(
        name,
        "pg_authid"
            | "pg_auth_members"
            | "pg_db_role_setting"
            | "pg_default_acl"
            | "pg_init_privs"
            | "pg_parameter_acl"
            | "pg_policy"
            | "pg_user_mapping"
    )
}

/// Catalog columns that hold privileges or ownership (`relacl`, `proowner`, `prosecdef`,
/// ...); `*` stands for every column (an INSERT without a column list).
pub(super) fn is_privilege_column(name: &str) -> bool {
    name == "*"
        || name.ends_with("acl")
        || name.ends_with("owner")
        || matches!(name, "datdba" | "prosecdef" | "relrowsecurity" | "relforcerowsecurity")
}

/// Built-in views that run a function with an effect (a read of server files) when read.
pub(super) fn view_effect(name: &str) -> Option<&'static str> {
    match name {
        "pg_file_settings" | "pg_hba_file_rules" | "pg_ident_file_mappings" => Some("a view that reads server files"),
        _ => None,
    }
}

/// Tables of PostgreSQL 15's system catalog (the `create` lines of `postgres.bki`).
const CATALOGS: &[&str] = &[
    "pg_aggregate",
    "pg_am",
    "pg_amop",
    "pg_amproc",
    "pg_attrdef",
    "pg_attribute",
    "pg_auth_members",
    "pg_authid",
    "pg_cast",
    "pg_class",
    "pg_collation",
    "pg_constraint",
    "pg_conversion",
    "pg_database",
    "pg_db_role_setting",
    "pg_default_acl",
    "pg_depend",
    "pg_description",
    "pg_enum",
    "pg_event_trigger",
    "pg_extension",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_foreign_table",
    "pg_index",
    "pg_inherits",
    "pg_init_privs",
    "pg_language",
    "pg_largeobject",
    "pg_largeobject_metadata",
    "pg_namespace",
    "pg_opclass",
    "pg_operator",
    "pg_opfamily",
    "pg_parameter_acl",
    "pg_partitioned_table",
    "pg_policy",
    "pg_proc",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_range",
    "pg_replication_origin",
    "pg_rewrite",
    "pg_seclabel",
    "pg_sequence",
    "pg_shdepend",
    "pg_shdescription",
    "pg_shseclabel",
    "pg_statistic",
    "pg_statistic_ext",
    "pg_statistic_ext_data",
    "pg_subscription",
    "pg_subscription_rel",
    "pg_tablespace",
    "pg_transform",
    "pg_trigger",
    "pg_ts_config",
    "pg_ts_config_map",
    "pg_ts_dict",
    "pg_ts_parser",
    "pg_ts_template",
    "pg_type",
    "pg_user_mapping",
];

/// Forms the grammar (PostgreSQL's and sqlparser's) turns into function calls that are not
/// `pg_proc` entries, or are keywords there.
const SQL_CONSTRUCTS: &[&str] = &[
    "array",
    "coalesce",
    "cube",
    "current_catalog",
    "current_date",
    "current_role",
    "current_time",
    "current_timestamp",
    "current_user",
    "greatest",
    "grouping",
    "json_array",
    "json_arrayagg",
    "json_exists",
    "json_object",
    "json_objectagg",
    "json_query",
    "json_scalar",
    "json_serialize",
    "json_value",
    "least",
    "localtime",
    "localtimestamp",
    "merge_action",
    "nullif",
    "rollup",
    "row",
    "session_user",
    "system_user",
    "user",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlforest",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
];

/// IMMUTABLE/STABLE functions added in PostgreSQL 16 and 17 (release notes).
const NEWER_READ_ONLY: &[&str] = &[
    "any_value",
    "date_add",
    "date_subtract",
    "erf",
    "erfc",
    "pg_input_error_info",
    "pg_input_is_valid",
    "system_user",
    "to_bin",
    "to_oct",
    "unicode_assigned",
    "uuid_extract_timestamp",
    "uuid_extract_version",
    "xmltext",
];

/// PostgreSQL 15's VOLATILE built-ins (`provolatile` `v` in its initial `pg_proc`) that no list
/// here classifies: trigger, access-method and language handlers, and a few others. A call of
/// one of these names is never a read, whatever a session's catalog says: the floor under the
/// VOLATILE built-ins each session reads with its facts (the `x` rows of
/// `proxy::postgres::catalog::query`: those a user function shares its name with), which also
/// hold names newer servers add. Sorted by bytes (binary search).
const UNCLASSIFIED_VOLATILE: &[&str] = &[
    "RI_FKey_cascade_del",
    "RI_FKey_cascade_upd",
    "RI_FKey_check_ins",
    "RI_FKey_check_upd",
    "RI_FKey_noaction_del",
    "RI_FKey_noaction_upd",
    "RI_FKey_restrict_del",
    "RI_FKey_restrict_upd",
    "RI_FKey_setdefault_del",
    "RI_FKey_setdefault_upd",
    "RI_FKey_setnull_del",
    "RI_FKey_setnull_upd",
    "amvalidate",
    "bernoulli",
    "brinhandler",
    "bthandler",
    "currtid2",
    "dsnowball_init",
    "dsnowball_lexize",
    "ginhandler",
    "gisthandler",
    "hashhandler",
    "heap_tableam_handler",
    "pg_isolation_test_session_is_blocked",
    "pg_show_replication_origin_status",
    "plpgsql_call_handler",
    "plpgsql_inline_handler",
    "plpgsql_validator",
    "spghandler",
    "suppress_redundant_updates_trigger",
    "system",
    "tsvector_update_trigger",
    "tsvector_update_trigger_column",
    "unique_key_recheck",
];

/// Whether `name` is one of PostgreSQL's VOLATILE built-ins that the lists here do not classify
/// (its call is then looked up in the session's catalog, which must not clear it).
pub(super) fn volatile_unclassified(name: &str) -> bool {
    UNCLASSIFIED_VOLATILE.binary_search(&name).is_ok()
}

/// VOLATILE built-ins that change nothing: clocks, randomness, sleeping, sizes, server state.
/// `pg_sleep` stalls only its own session (holding whatever locks it already holds), as any
/// slow read does: statement_timeout is the control for that, not the class.
const HARMLESS_VOLATILE: &[&str] = &[
    "array_sample",
    "array_shuffle",
    "clock_timestamp",
    "current_query",
    "currval",
    "gen_random_uuid",
    "lastval",
    "pg_blocking_pids",
    "pg_collation_actual_version",
    "pg_control_checkpoint",
    "pg_control_init",
    "pg_control_recovery",
    "pg_control_system",
    "pg_current_logfile",
    "pg_current_wal_flush_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_lsn",
    "pg_database_collation_actual_version",
    "pg_database_size",
    "pg_export_snapshot",
    "pg_get_backend_memory_contexts",
    "pg_get_multixact_members",
    "pg_get_shmem_allocations",
    "pg_get_wal_replay_pause_state",
    "pg_get_wal_resource_managers",
    "pg_indexes_size",
    "pg_is_in_recovery",
    "pg_is_wal_replay_paused",
    "pg_jit_available",
    "pg_last_committed_xact",
    "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_lock_status",
    "pg_notification_queue_usage",
    "pg_partition_ancestors",
    "pg_partition_tree",
    "pg_prepared_xact",
    "pg_relation_size",
    "pg_safe_snapshot_blocking_pids",
    "pg_sequence_last_value",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_stat_clear_snapshot",
    "pg_stat_force_next_flush",
    "pg_stat_get_recovery_prefetch",
    "pg_stat_get_xact_blocks_fetched",
    "pg_stat_get_xact_blocks_hit",
    "pg_stat_get_xact_function_calls",
    "pg_stat_get_xact_function_self_time",
    "pg_stat_get_xact_function_total_time",
    "pg_stat_get_xact_numscans",
    "pg_stat_get_xact_tuples_deleted",
    "pg_stat_get_xact_tuples_fetched",
    "pg_stat_get_xact_tuples_hot_updated",
    "pg_stat_get_xact_tuples_inserted",
    "pg_stat_get_xact_tuples_returned",
    "pg_stat_get_xact_tuples_updated",
    "pg_stat_have_stats",
    "pg_table_size",
    "pg_tablespace_size",
    "pg_total_relation_size",
    "pg_xact_commit_timestamp",
    "pg_xact_commit_timestamp_origin",
    "pg_xact_status",
    "random",
    "random_normal",
    "timeofday",
    "txid_status",
];

/// Type names a cast may name without running anything but built-in input and cast functions:
/// PostgreSQL 15's `pg_type` base, range and multirange types (no domains: a domain's CHECK can
/// call any function), and the SQL spellings the grammar maps onto them.
pub(super) const BUILTIN_TYPES: &[&str] = &[
    "aclitem",
    "bigint",
    "bit",
    "bit varying",
    "bool",
    "boolean",
    "box",
    "bpchar",
    "bytea",
    "char",
    "character",
    "character varying",
    "cid",
    "cidr",
    "circle",
    "date",
    "datemultirange",
    "daterange",
    "dec",
    "decimal",
    "double precision",
    "float",
    "float4",
    "float8",
    "inet",
    "int",
    "int2",
    "int2vector",
    "int4",
    "int4multirange",
    "int4range",
    "int8",
    "int8multirange",
    "int8range",
    "integer",
    "interval",
    "json",
    "jsonb",
    "jsonpath",
    "line",
    "lseg",
    "macaddr",
    "macaddr8",
    "money",
    "name",
    "national character",
    "national character varying",
    "nchar",
    "numeric",
    "nummultirange",
    "numrange",
    "oid",
    "oidvector",
    "path",
    "pg_lsn",
    "pg_snapshot",
    "point",
    "polygon",
    "real",
    "record",
    "refcursor",
    "regclass",
    "regcollation",
    "regconfig",
    "regdictionary",
    "regnamespace",
    "regoper",
    "regoperator",
    "regproc",
    "regprocedure",
    "regrole",
    "regtype",
    "smallint",
    "text",
    "tid",
    "time",
    "time with time zone",
    "time without time zone",
    "timestamp",
    "timestamp with time zone",
    "timestamp without time zone",
    "timestamptz",
    "timetz",
    "tsmultirange",
    "tsquery",
    "tsrange",
    "tstzmultirange",
    "tstzrange",
    "tsvector",
    "txid_snapshot",
    "unknown",
    "uuid",
    "varbit",
    "varchar",
    "xid",
    "xid8",
    "xml",
];

/// Operators of PostgreSQL 15's `pg_operator`, plus the spellings the grammar reads itself
/// (`!=` for `<>`, `=>` of named arguments). Any other operator token is a user-defined one.
pub(super) const BUILTIN_OPERATORS: &[&str] = &[
    "!!", "!=", "!~", "!~*", "!~~", "!~~*", "#", "##", "#-", "#>", "#>>", "%", "&", "&&", "&<", "&<|", "&>", "*", "*<",
    "*<=", "*<>", "*=", "*>", "*>=", "+", "-", "->", "->>", "-|-", "/", "<", "<->", "<<", "<<=", "<<|", "<=", "<>",
    "<@", "<^", "=", "=>", ">", ">=", ">>", ">>=", ">^", "?", "?#", "?&", "?-", "?-|", "?|", "?||", "@", "@-@", "@>",
    "@?", "@@", "@@@", "^", "^@", "|", "|&>", "|/", "|>>", "||", "||/", "~", "~*", "~<=~", "~<~", "~=", "~>=~", "~>~",
    "~~", "~~*",
];

/// Generated: see the module documentation.
#[rustfmt::skip]
const CATALOG_READ_ONLY: &[&str] = &[
    "abbrev", "abs", "aclcontains", "acldefault", "aclexplode", "aclinsert", "aclitemeq", "aclremove", "acos",
    "acosd", "acosh", "age", "anyarray_send", "anycompatiblearray_send", "anytextcat", "area", "array_agg",
    "array_append", "array_cat", "array_dims", "array_eq", "array_fill", "array_ge", "array_gt",
    "array_larger", "array_le", "array_length", "array_lower", "array_lt", "array_ndims", "array_ne",
    "array_position", "array_positions", "array_prepend", "array_remove", "array_replace", "array_send",
    "array_smaller", "array_to_json", "array_to_string", "array_to_tsvector", "array_upper", "arraycontained",
    "arraycontains", "arrayoverlap", "ascii", "asin", "asind", "asinh", "atan", "atan2", "atan2d", "atand",
    "atanh", "avg", "bit", "bit_and", "bit_count", "bit_length", "bit_or", "bit_send", "bit_xor", "bitand",
    "bitcat", "bitcmp", "biteq", "bitge", "bitgt", "bitle", "bitlt", "bitne", "bitnot", "bitor",
    "bitshiftleft", "bitshiftright", "bittypmodin", "bitxor", "bool", "bool_and", "bool_or",
    "booland_statefunc", "booleq", "boolge", "boolgt", "boolle", "boollt", "boolne", "boolor_statefunc",
    "boolsend", "bound_box", "box", "box_above", "box_above_eq", "box_add", "box_below", "box_below_eq",
    "box_center", "box_contain", "box_contain_pt", "box_contained", "box_distance", "box_div", "box_eq",
    "box_ge", "box_gt", "box_intersect", "box_le", "box_left", "box_lt", "box_mul", "box_overabove",
    "box_overbelow", "box_overlap", "box_overleft", "box_overright", "box_right", "box_same", "box_send",
    "box_sub", "bpchar", "bpchar_larger", "bpchar_pattern_ge", "bpchar_pattern_gt", "bpchar_pattern_le",
    "bpchar_pattern_lt", "bpchar_smaller", "bpcharcmp", "bpchareq", "bpcharge", "bpchargt", "bpchariclike",
    "bpcharicnlike", "bpcharicregexeq", "bpcharicregexne", "bpcharle", "bpcharlike", "bpcharlt", "bpcharne",
    "bpcharnlike", "bpcharregexeq", "bpcharregexne", "bpcharsend", "bpchartypmodin",
    "brin_bloom_summary_send", "brin_minmax_multi_summary_send", "broadcast", "btarraycmp", "btboolcmp",
    "btbpchar_pattern_cmp", "btcharcmp", "btequalimage", "btfloat48cmp", "btfloat4cmp", "btfloat84cmp",
    "btfloat8cmp", "btint24cmp", "btint28cmp", "btint2cmp", "btint42cmp", "btint48cmp", "btint4cmp",
    "btint82cmp", "btint84cmp", "btint8cmp", "btnamecmp", "btnametextcmp", "btoidcmp", "btoidvectorcmp",
    "btrecordcmp", "btrecordimagecmp", "btrim", "bttext_pattern_cmp", "bttextcmp", "bttextnamecmp",
    "bttidcmp", "btvarstrequalimage", "byteacat", "byteacmp", "byteaeq", "byteage", "byteagt", "byteale",
    "bytealike", "bytealt", "byteane", "byteanlike", "byteasend", "cardinality", "cash_cmp", "cash_div_cash",
    "cash_div_flt4", "cash_div_flt8", "cash_div_int2", "cash_div_int4", "cash_div_int8", "cash_eq", "cash_ge",
    "cash_gt", "cash_le", "cash_lt", "cash_mi", "cash_mul_flt4", "cash_mul_flt8", "cash_mul_int2",
    "cash_mul_int4", "cash_mul_int8", "cash_ne", "cash_pl", "cash_send", "cash_words", "cashlarger",
    "cashsmaller", "cbrt", "ceil", "ceiling", "center", "char", "char_length", "character_length", "chareq",
    "charge", "chargt", "charle", "charlt", "charne", "charsend", "chr", "cideq", "cidr", "cidr_send",
    "cidsend", "circle", "circle_above", "circle_add_pt", "circle_below", "circle_center", "circle_contain",
    "circle_contain_pt", "circle_contained", "circle_distance", "circle_div_pt", "circle_eq", "circle_ge",
    "circle_gt", "circle_le", "circle_left", "circle_lt", "circle_mul_pt", "circle_ne", "circle_overabove",
    "circle_overbelow", "circle_overlap", "circle_overleft", "circle_overright", "circle_right",
    "circle_same", "circle_send", "circle_sub_pt", "close_ls", "close_lseg", "close_pb", "close_pl",
    "close_ps", "close_sb", "col_description", "concat", "concat_ws", "convert", "convert_from", "convert_to",
    "corr", "cos", "cosd", "cosh", "cot", "cotd", "count", "covar_pop", "covar_samp", "cume_dist",
    "current_database", "current_schema", "current_schemas", "current_setting", "current_user", "date",
    "date_bin", "date_cmp", "date_cmp_timestamp", "date_cmp_timestamptz", "date_eq", "date_eq_timestamp",
    "date_eq_timestamptz", "date_ge", "date_ge_timestamp", "date_ge_timestamptz", "date_gt",
    "date_gt_timestamp", "date_gt_timestamptz", "date_larger", "date_le", "date_le_timestamp",
    "date_le_timestamptz", "date_lt", "date_lt_timestamp", "date_lt_timestamptz", "date_mi",
    "date_mi_interval", "date_mii", "date_ne", "date_ne_timestamp", "date_ne_timestamptz", "date_part",
    "date_pl_interval", "date_pli", "date_send", "date_smaller", "date_trunc", "datemultirange", "daterange",
    "daterange_canonical", "daterange_subdiff", "datetime_pl", "datetimetz_pl", "dcbrt", "decode", "degrees",
    "dense_rank", "dexp", "diagonal", "diameter", "dist_bp", "dist_bs", "dist_cpoint", "dist_cpoly",
    "dist_lp", "dist_ls", "dist_pathp", "dist_pb", "dist_pc", "dist_pl", "dist_polyc", "dist_polyp",
    "dist_ppath", "dist_ppoly", "dist_ps", "dist_sb", "dist_sl", "dist_sp", "div", "dlog1", "dlog10", "dpow",
    "dround", "dsqrt", "dtrunc", "elem_contained_by_multirange", "elem_contained_by_range", "encode",
    "enum_cmp", "enum_eq", "enum_first", "enum_ge", "enum_gt", "enum_larger", "enum_last", "enum_le",
    "enum_lt", "enum_ne", "enum_range", "enum_send", "enum_smaller", "every", "exp", "extract", "factorial",
    "family", "first_value", "float4", "float48div", "float48eq", "float48ge", "float48gt", "float48le",
    "float48lt", "float48mi", "float48mul", "float48ne", "float48pl", "float4_accum", "float4abs",
    "float4div", "float4eq", "float4ge", "float4gt", "float4larger", "float4le", "float4lt", "float4mi",
    "float4mul", "float4ne", "float4pl", "float4send", "float4smaller", "float4um", "float4up", "float8",
    "float84div", "float84eq", "float84ge", "float84gt", "float84le", "float84lt", "float84mi", "float84mul",
    "float84ne", "float84pl", "float8_accum", "float8_avg", "float8_combine", "float8_corr",
    "float8_covar_pop", "float8_covar_samp", "float8_regr_accum", "float8_regr_avgx", "float8_regr_avgy",
    "float8_regr_combine", "float8_regr_intercept", "float8_regr_r2", "float8_regr_slope", "float8_regr_sxx",
    "float8_regr_sxy", "float8_regr_syy", "float8_stddev_pop", "float8_stddev_samp", "float8_var_pop",
    "float8_var_samp", "float8abs", "float8div", "float8eq", "float8ge", "float8gt", "float8larger",
    "float8le", "float8lt", "float8mi", "float8mul", "float8ne", "float8pl", "float8send", "float8smaller",
    "float8um", "float8up", "floor", "flt4_mul_cash", "flt8_mul_cash", "fmgr_c_validator",
    "fmgr_internal_validator", "fmgr_sql_validator", "format", "format_type", "gcd", "generate_series",
    "generate_subscripts", "get_bit", "get_byte", "get_current_ts_config", "getdatabaseencoding",
    "getpgusername", "gin_cmp_tslexeme", "gin_compare_jsonb", "has_any_column_privilege",
    "has_column_privilege", "has_database_privilege", "has_foreign_data_wrapper_privilege",
    "has_function_privilege", "has_language_privilege", "has_parameter_privilege", "has_schema_privilege",
    "has_sequence_privilege", "has_server_privilege", "has_table_privilege", "has_tablespace_privilege",
    "has_type_privilege", "hash_aclitem", "hash_aclitem_extended", "hash_array", "hash_array_extended",
    "hash_multirange", "hash_multirange_extended", "hash_numeric", "hash_numeric_extended", "hash_range",
    "hash_range_extended", "hash_record", "hash_record_extended", "hashbpchar", "hashbpcharextended",
    "hashchar", "hashcharextended", "hashenum", "hashenumextended", "hashfloat4", "hashfloat4extended",
    "hashfloat8", "hashfloat8extended", "hashinet", "hashinetextended", "hashint2", "hashint2extended",
    "hashint4", "hashint4extended", "hashint8", "hashint8extended", "hashmacaddr", "hashmacaddr8",
    "hashmacaddr8extended", "hashmacaddrextended", "hashname", "hashnameextended", "hashoid",
    "hashoidextended", "hashoidvector", "hashoidvectorextended", "hashtext", "hashtextextended", "hashtid",
    "hashtidextended", "height", "host", "hostmask", "in_range", "inet_client_addr", "inet_client_port",
    "inet_merge", "inet_same_family", "inet_send", "inet_server_addr", "inet_server_port", "inetand",
    "inetmi", "inetmi_int8", "inetnot", "inetor", "inetpl", "initcap", "int2", "int24div", "int24eq",
    "int24ge", "int24gt", "int24le", "int24lt", "int24mi", "int24mul", "int24ne", "int24pl", "int28div",
    "int28eq", "int28ge", "int28gt", "int28le", "int28lt", "int28mi", "int28mul", "int28ne", "int28pl",
    "int2_avg_accum", "int2_avg_accum_inv", "int2_mul_cash", "int2_sum", "int2abs", "int2and", "int2div",
    "int2eq", "int2ge", "int2gt", "int2int4_sum", "int2larger", "int2le", "int2lt", "int2mi", "int2mod",
    "int2mul", "int2ne", "int2not", "int2or", "int2pl", "int2send", "int2shl", "int2shr", "int2smaller",
    "int2um", "int2up", "int2vectorsend", "int2xor", "int4", "int42div", "int42eq", "int42ge", "int42gt",
    "int42le", "int42lt", "int42mi", "int42mul", "int42ne", "int42pl", "int48div", "int48eq", "int48ge",
    "int48gt", "int48le", "int48lt", "int48mi", "int48mul", "int48ne", "int48pl", "int4_avg_accum",
    "int4_avg_accum_inv", "int4_avg_combine", "int4_mul_cash", "int4_sum", "int4abs", "int4and", "int4div",
    "int4eq", "int4ge", "int4gt", "int4inc", "int4larger", "int4le", "int4lt", "int4mi", "int4mod", "int4mul",
    "int4multirange", "int4ne", "int4not", "int4or", "int4pl", "int4range", "int4range_canonical",
    "int4range_subdiff", "int4send", "int4shl", "int4shr", "int4smaller", "int4um", "int4up", "int4xor",
    "int8", "int82div", "int82eq", "int82ge", "int82gt", "int82le", "int82lt", "int82mi", "int82mul",
    "int82ne", "int82pl", "int84div", "int84eq", "int84ge", "int84gt", "int84le", "int84lt", "int84mi",
    "int84mul", "int84ne", "int84pl", "int8_avg", "int8_mul_cash", "int8_sum", "int8abs", "int8and",
    "int8dec", "int8dec_any", "int8div", "int8eq", "int8ge", "int8gt", "int8inc", "int8inc_any",
    "int8inc_float8_float8", "int8larger", "int8le", "int8lt", "int8mi", "int8mod", "int8mul",
    "int8multirange", "int8ne", "int8not", "int8or", "int8pl", "int8pl_inet", "int8range",
    "int8range_canonical", "int8range_subdiff", "int8send", "int8shl", "int8shr", "int8smaller", "int8um",
    "int8up", "int8xor", "integer_pl_date", "inter_lb", "inter_sb", "inter_sl", "interval", "interval_accum",
    "interval_accum_inv", "interval_avg", "interval_cmp", "interval_combine", "interval_div", "interval_eq",
    "interval_ge", "interval_gt", "interval_hash", "interval_hash_extended", "interval_larger", "interval_le",
    "interval_lt", "interval_mi", "interval_mul", "interval_ne", "interval_pl", "interval_pl_date",
    "interval_pl_time", "interval_pl_timestamp", "interval_pl_timestamptz", "interval_pl_timetz",
    "interval_send", "interval_smaller", "interval_um", "intervaltypmodin", "is_normalized", "isclosed",
    "isempty", "isfinite", "ishorizontal", "isopen", "isparallel", "isperp", "isvertical", "json_agg",
    "json_array_element", "json_array_element_text", "json_array_elements", "json_array_elements_text",
    "json_array_length", "json_build_array", "json_build_object", "json_each", "json_each_text",
    "json_extract_path", "json_extract_path_text", "json_object", "json_object_agg", "json_object_field",
    "json_object_field_text", "json_object_keys", "json_populate_record", "json_populate_recordset",
    "json_send", "json_strip_nulls", "json_to_record", "json_to_recordset", "json_to_tsvector", "json_typeof",
    "jsonb_agg", "jsonb_array_element", "jsonb_array_element_text", "jsonb_array_elements",
    "jsonb_array_elements_text", "jsonb_array_length", "jsonb_build_array", "jsonb_build_object", "jsonb_cmp",
    "jsonb_concat", "jsonb_contained", "jsonb_contains", "jsonb_delete", "jsonb_delete_path", "jsonb_each",
    "jsonb_each_text", "jsonb_eq", "jsonb_exists", "jsonb_exists_all", "jsonb_exists_any",
    "jsonb_extract_path", "jsonb_extract_path_text", "jsonb_ge", "jsonb_gt", "jsonb_hash",
    "jsonb_hash_extended", "jsonb_insert", "jsonb_le", "jsonb_lt", "jsonb_ne", "jsonb_object",
    "jsonb_object_agg", "jsonb_object_field", "jsonb_object_field_text", "jsonb_object_keys",
    "jsonb_path_exists", "jsonb_path_exists_opr", "jsonb_path_exists_tz", "jsonb_path_match",
    "jsonb_path_match_opr", "jsonb_path_match_tz", "jsonb_path_query", "jsonb_path_query_array",
    "jsonb_path_query_array_tz", "jsonb_path_query_first", "jsonb_path_query_first_tz", "jsonb_path_query_tz",
    "jsonb_populate_record", "jsonb_populate_recordset", "jsonb_pretty", "jsonb_send", "jsonb_set",
    "jsonb_set_lax", "jsonb_strip_nulls", "jsonb_to_record", "jsonb_to_recordset", "jsonb_to_tsvector",
    "jsonb_typeof", "jsonpath_send", "justify_days", "justify_hours", "justify_interval", "lag", "last_value",
    "lcm", "lead", "left", "length", "like", "like_escape", "line", "line_distance", "line_eq",
    "line_horizontal", "line_interpt", "line_intersect", "line_parallel", "line_perp", "line_send",
    "line_vertical", "ln", "log", "log10", "lower", "lower_inc", "lower_inf", "lpad", "lseg", "lseg_center",
    "lseg_distance", "lseg_eq", "lseg_ge", "lseg_gt", "lseg_horizontal", "lseg_interpt", "lseg_intersect",
    "lseg_le", "lseg_length", "lseg_lt", "lseg_ne", "lseg_parallel", "lseg_perp", "lseg_send",
    "lseg_vertical", "ltrim", "macaddr", "macaddr8", "macaddr8_and", "macaddr8_cmp", "macaddr8_eq",
    "macaddr8_ge", "macaddr8_gt", "macaddr8_le", "macaddr8_lt", "macaddr8_ne", "macaddr8_not", "macaddr8_or",
    "macaddr8_send", "macaddr8_set7bit", "macaddr_and", "macaddr_cmp", "macaddr_eq", "macaddr_ge",
    "macaddr_gt", "macaddr_le", "macaddr_lt", "macaddr_ne", "macaddr_not", "macaddr_or", "macaddr_send",
    "make_date", "make_interval", "make_time", "make_timestamp", "make_timestamptz", "makeaclitem", "masklen",
    "max", "md5", "min", "min_scale", "mod", "mode", "money", "mul_d_interval", "multirange",
    "multirange_adjacent_multirange", "multirange_adjacent_range", "multirange_after_multirange",
    "multirange_after_range", "multirange_before_multirange", "multirange_before_range", "multirange_cmp",
    "multirange_contained_by_multirange", "multirange_contained_by_range", "multirange_contains_elem",
    "multirange_contains_multirange", "multirange_contains_range", "multirange_eq", "multirange_ge",
    "multirange_gt", "multirange_intersect", "multirange_intersect_agg_transfn", "multirange_le",
    "multirange_lt", "multirange_minus", "multirange_ne", "multirange_overlaps_multirange",
    "multirange_overlaps_range", "multirange_overleft_multirange", "multirange_overleft_range",
    "multirange_overright_multirange", "multirange_overright_range", "multirange_send", "multirange_union",
    "mxid_age", "name", "nameconcatoid", "nameeq", "nameeqtext", "namege", "namegetext", "namegt",
    "namegttext", "nameiclike", "nameicnlike", "nameicregexeq", "nameicregexne", "namele", "nameletext",
    "namelike", "namelt", "namelttext", "namene", "namenetext", "namenlike", "nameregexeq", "nameregexne",
    "namesend", "netmask", "network", "network_cmp", "network_eq", "network_ge", "network_gt",
    "network_larger", "network_le", "network_lt", "network_ne", "network_overlap", "network_smaller",
    "network_sub", "network_subeq", "network_sup", "network_supeq", "normalize", "notlike", "now", "npoints",
    "nth_value", "ntile", "num_nonnulls", "num_nulls", "numeric", "numeric_abs", "numeric_add", "numeric_cmp",
    "numeric_div", "numeric_div_trunc", "numeric_eq", "numeric_exp", "numeric_ge", "numeric_gt",
    "numeric_inc", "numeric_larger", "numeric_le", "numeric_ln", "numeric_log", "numeric_lt", "numeric_mod",
    "numeric_mul", "numeric_ne", "numeric_pl_pg_lsn", "numeric_power", "numeric_send", "numeric_smaller",
    "numeric_sqrt", "numeric_sub", "numeric_uminus", "numeric_uplus", "numerictypmodin", "nummultirange",
    "numnode", "numrange", "numrange_subdiff", "obj_description", "octet_length", "oid", "oideq", "oidge",
    "oidgt", "oidlarger", "oidle", "oidlt", "oidne", "oidsend", "oidsmaller", "oidvectoreq", "oidvectorge",
    "oidvectorgt", "oidvectorle", "oidvectorlt", "oidvectorne", "oidvectorsend", "oidvectortypes", "on_pb",
    "on_pl", "on_ppath", "on_ps", "on_sb", "on_sl", "overlaps", "overlay", "parse_ident", "path", "path_add",
    "path_add_pt", "path_contain_pt", "path_distance", "path_div_pt", "path_inter", "path_length",
    "path_mul_pt", "path_n_eq", "path_n_ge", "path_n_gt", "path_n_le", "path_n_lt", "path_npoints",
    "path_send", "path_sub_pt", "pclose", "percent_rank", "percentile_cont", "percentile_disc",
    "pg_available_extension_versions", "pg_available_extensions", "pg_backend_pid", "pg_char_to_encoding",
    "pg_client_encoding", "pg_collation_for", "pg_collation_is_visible", "pg_column_compression",
    "pg_column_is_updatable", "pg_column_size", "pg_conf_load_time", "pg_config", "pg_conversion_is_visible",
    "pg_current_snapshot", "pg_current_xact_id", "pg_current_xact_id_if_assigned", "pg_cursor",
    "pg_ddl_command_send", "pg_dependencies_send", "pg_describe_object", "pg_encoding_max_length",
    "pg_encoding_to_char", "pg_event_trigger_ddl_commands", "pg_event_trigger_dropped_objects",
    "pg_event_trigger_table_rewrite_oid", "pg_event_trigger_table_rewrite_reason",
    "pg_extension_update_paths", "pg_filenode_relation", "pg_function_is_visible",
    "pg_get_catalog_foreign_keys", "pg_get_constraintdef", "pg_get_expr", "pg_get_function_arg_default",
    "pg_get_function_arguments", "pg_get_function_identity_arguments", "pg_get_function_result",
    "pg_get_function_sqlbody", "pg_get_functiondef", "pg_get_indexdef", "pg_get_keywords",
    "pg_get_object_address", "pg_get_partition_constraintdef", "pg_get_partkeydef",
    "pg_get_publication_tables", "pg_get_replica_identity_index", "pg_get_replication_slots",
    "pg_get_ruledef", "pg_get_serial_sequence", "pg_get_statisticsobjdef", "pg_get_statisticsobjdef_columns",
    "pg_get_statisticsobjdef_expressions", "pg_get_triggerdef", "pg_get_userbyid", "pg_get_viewdef",
    "pg_has_role", "pg_identify_object", "pg_identify_object_as_address", "pg_index_column_has_property",
    "pg_index_has_property", "pg_indexam_has_property", "pg_indexam_progress_phasename",
    "pg_is_other_temp_schema", "pg_listening_channels", "pg_lsn", "pg_lsn_cmp", "pg_lsn_eq", "pg_lsn_ge",
    "pg_lsn_gt", "pg_lsn_hash", "pg_lsn_hash_extended", "pg_lsn_larger", "pg_lsn_le", "pg_lsn_lt",
    "pg_lsn_mi", "pg_lsn_mii", "pg_lsn_ne", "pg_lsn_pli", "pg_lsn_send", "pg_lsn_smaller",
    "pg_mcv_list_items", "pg_mcv_list_send", "pg_my_temp_schema", "pg_ndistinct_send", "pg_node_tree_send",
    "pg_opclass_is_visible", "pg_operator_is_visible", "pg_opfamily_is_visible", "pg_options_to_table",
    "pg_partition_root", "pg_postmaster_start_time", "pg_prepared_statement", "pg_relation_filenode",
    "pg_relation_filepath", "pg_relation_is_publishable", "pg_relation_is_updatable",
    "pg_replication_origin_oid", "pg_sequence_parameters", "pg_settings_get_flags", "pg_show_all_settings",
    "pg_size_bytes", "pg_size_pretty", "pg_snapshot_send", "pg_snapshot_xip", "pg_snapshot_xmax",
    "pg_snapshot_xmin", "pg_stat_get_activity", "pg_stat_get_analyze_count", "pg_stat_get_archiver",
    "pg_stat_get_autoanalyze_count", "pg_stat_get_autovacuum_count", "pg_stat_get_backend_activity",
    "pg_stat_get_backend_activity_start", "pg_stat_get_backend_client_addr",
    "pg_stat_get_backend_client_port", "pg_stat_get_backend_dbid", "pg_stat_get_backend_idset",
    "pg_stat_get_backend_pid", "pg_stat_get_backend_start", "pg_stat_get_backend_userid",
    "pg_stat_get_backend_wait_event", "pg_stat_get_backend_wait_event_type", "pg_stat_get_backend_xact_start",
    "pg_stat_get_bgwriter_buf_written_checkpoints", "pg_stat_get_bgwriter_buf_written_clean",
    "pg_stat_get_bgwriter_maxwritten_clean", "pg_stat_get_bgwriter_requested_checkpoints",
    "pg_stat_get_bgwriter_stat_reset_time", "pg_stat_get_bgwriter_timed_checkpoints",
    "pg_stat_get_blocks_fetched", "pg_stat_get_blocks_hit", "pg_stat_get_buf_alloc",
    "pg_stat_get_buf_fsync_backend", "pg_stat_get_buf_written_backend", "pg_stat_get_checkpoint_sync_time",
    "pg_stat_get_checkpoint_write_time", "pg_stat_get_db_active_time", "pg_stat_get_db_blk_read_time",
    "pg_stat_get_db_blk_write_time", "pg_stat_get_db_blocks_fetched", "pg_stat_get_db_blocks_hit",
    "pg_stat_get_db_checksum_failures", "pg_stat_get_db_checksum_last_failure", "pg_stat_get_db_conflict_all",
    "pg_stat_get_db_conflict_bufferpin", "pg_stat_get_db_conflict_lock", "pg_stat_get_db_conflict_snapshot",
    "pg_stat_get_db_conflict_startup_deadlock", "pg_stat_get_db_conflict_tablespace",
    "pg_stat_get_db_deadlocks", "pg_stat_get_db_idle_in_transaction_time", "pg_stat_get_db_numbackends",
    "pg_stat_get_db_session_time", "pg_stat_get_db_sessions", "pg_stat_get_db_sessions_abandoned",
    "pg_stat_get_db_sessions_fatal", "pg_stat_get_db_sessions_killed", "pg_stat_get_db_stat_reset_time",
    "pg_stat_get_db_temp_bytes", "pg_stat_get_db_temp_files", "pg_stat_get_db_tuples_deleted",
    "pg_stat_get_db_tuples_fetched", "pg_stat_get_db_tuples_inserted", "pg_stat_get_db_tuples_returned",
    "pg_stat_get_db_tuples_updated", "pg_stat_get_db_xact_commit", "pg_stat_get_db_xact_rollback",
    "pg_stat_get_dead_tuples", "pg_stat_get_function_calls", "pg_stat_get_function_self_time",
    "pg_stat_get_function_total_time", "pg_stat_get_ins_since_vacuum", "pg_stat_get_last_analyze_time",
    "pg_stat_get_last_autoanalyze_time", "pg_stat_get_last_autovacuum_time", "pg_stat_get_last_vacuum_time",
    "pg_stat_get_live_tuples", "pg_stat_get_mod_since_analyze", "pg_stat_get_numscans",
    "pg_stat_get_progress_info", "pg_stat_get_replication_slot", "pg_stat_get_slru",
    "pg_stat_get_snapshot_timestamp", "pg_stat_get_subscription", "pg_stat_get_subscription_stats",
    "pg_stat_get_tuples_deleted", "pg_stat_get_tuples_fetched", "pg_stat_get_tuples_hot_updated",
    "pg_stat_get_tuples_inserted", "pg_stat_get_tuples_returned", "pg_stat_get_tuples_updated",
    "pg_stat_get_vacuum_count", "pg_stat_get_wal", "pg_stat_get_wal_receiver", "pg_stat_get_wal_senders",
    "pg_statistics_obj_is_visible", "pg_table_is_visible", "pg_tablespace_databases",
    "pg_tablespace_location", "pg_timezone_abbrevs", "pg_timezone_names", "pg_trigger_depth",
    "pg_ts_config_is_visible", "pg_ts_dict_is_visible", "pg_ts_parser_is_visible",
    "pg_ts_template_is_visible", "pg_type_is_visible", "pg_typeof", "pg_visible_in_snapshot",
    "pg_wal_lsn_diff", "pg_walfile_name", "pg_walfile_name_offset", "phraseto_tsquery", "pi",
    "plainto_tsquery", "point", "point_above", "point_add", "point_below", "point_distance", "point_div",
    "point_eq", "point_horiz", "point_left", "point_mul", "point_ne", "point_right", "point_send",
    "point_sub", "point_vert", "poly_above", "poly_below", "poly_center", "poly_contain", "poly_contain_pt",
    "poly_contained", "poly_distance", "poly_left", "poly_npoints", "poly_overabove", "poly_overbelow",
    "poly_overlap", "poly_overleft", "poly_overright", "poly_right", "poly_same", "poly_send", "polygon",
    "popen", "position", "postgresql_fdw_validator", "pow", "power", "pt_contained_circle",
    "pt_contained_poly", "querytree", "quote_ident", "quote_literal", "quote_nullable", "radians", "radius",
    "range_adjacent", "range_adjacent_multirange", "range_after", "range_after_multirange", "range_agg",
    "range_before", "range_before_multirange", "range_cmp", "range_contained_by",
    "range_contained_by_multirange", "range_contains", "range_contains_elem", "range_contains_multirange",
    "range_eq", "range_ge", "range_gt", "range_intersect", "range_intersect_agg",
    "range_intersect_agg_transfn", "range_le", "range_lt", "range_merge", "range_minus", "range_ne",
    "range_overlaps", "range_overlaps_multirange", "range_overleft", "range_overleft_multirange",
    "range_overright", "range_overright_multirange", "range_send", "range_union", "rank", "record_eq",
    "record_ge", "record_gt", "record_image_eq", "record_image_ge", "record_image_gt", "record_image_le",
    "record_image_lt", "record_image_ne", "record_le", "record_lt", "record_ne", "record_send", "regclass",
    "regclasssend", "regcollationsend", "regconfigsend", "regdictionarysend", "regexp_count", "regexp_instr",
    "regexp_like", "regexp_match", "regexp_matches", "regexp_replace", "regexp_split_to_array",
    "regexp_split_to_table", "regexp_substr", "regnamespacesend", "regoperatorsend", "regopersend",
    "regproceduresend", "regprocsend", "regr_avgx", "regr_avgy", "regr_count", "regr_intercept", "regr_r2",
    "regr_slope", "regr_sxx", "regr_sxy", "regr_syy", "regrolesend", "regtypesend", "repeat", "replace",
    "reverse", "right", "round", "row_number", "row_security_active", "row_to_json", "rpad", "rtrim",
    "satisfies_hash_partition", "scale", "session_user", "set_bit", "set_byte", "set_masklen", "setweight",
    "sha224", "sha256", "sha384", "sha512", "shobj_description", "sign", "similar_escape",
    "similar_to_escape", "sin", "sind", "sinh", "slope", "spg_poly_quad_compress", "split_part", "sqrt",
    "starts_with", "statement_timestamp", "stddev", "stddev_pop", "stddev_samp", "string_agg",
    "string_to_array", "string_to_table", "strip", "strpos", "substr", "substring", "sum", "tan", "tand",
    "tanh", "text", "text_ge", "text_gt", "text_larger", "text_le", "text_lt", "text_pattern_ge",
    "text_pattern_gt", "text_pattern_le", "text_pattern_lt", "text_smaller", "textanycat", "textcat",
    "texteq", "texteqname", "textgename", "textgtname", "texticlike", "texticnlike", "texticregexeq",
    "texticregexne", "textlen", "textlename", "textlike", "textltname", "textne", "textnename", "textnlike",
    "textregexeq", "textregexne", "textsend", "tideq", "tidge", "tidgt", "tidlarger", "tidle", "tidlt",
    "tidne", "tidsend", "tidsmaller", "time", "time_cmp", "time_eq", "time_ge", "time_gt", "time_hash",
    "time_hash_extended", "time_larger", "time_le", "time_lt", "time_mi_interval", "time_mi_time", "time_ne",
    "time_pl_interval", "time_send", "time_smaller", "timedate_pl", "timestamp", "timestamp_cmp",
    "timestamp_cmp_date", "timestamp_cmp_timestamptz", "timestamp_eq", "timestamp_eq_date",
    "timestamp_eq_timestamptz", "timestamp_ge", "timestamp_ge_date", "timestamp_ge_timestamptz",
    "timestamp_gt", "timestamp_gt_date", "timestamp_gt_timestamptz", "timestamp_hash",
    "timestamp_hash_extended", "timestamp_larger", "timestamp_le", "timestamp_le_date",
    "timestamp_le_timestamptz", "timestamp_lt", "timestamp_lt_date", "timestamp_lt_timestamptz",
    "timestamp_mi", "timestamp_mi_interval", "timestamp_ne", "timestamp_ne_date", "timestamp_ne_timestamptz",
    "timestamp_pl_interval", "timestamp_send", "timestamp_smaller", "timestamptypmodin", "timestamptz",
    "timestamptz_cmp", "timestamptz_cmp_date", "timestamptz_cmp_timestamp", "timestamptz_eq",
    "timestamptz_eq_date", "timestamptz_eq_timestamp", "timestamptz_ge", "timestamptz_ge_date",
    "timestamptz_ge_timestamp", "timestamptz_gt", "timestamptz_gt_date", "timestamptz_gt_timestamp",
    "timestamptz_larger", "timestamptz_le", "timestamptz_le_date", "timestamptz_le_timestamp",
    "timestamptz_lt", "timestamptz_lt_date", "timestamptz_lt_timestamp", "timestamptz_mi",
    "timestamptz_mi_interval", "timestamptz_ne", "timestamptz_ne_date", "timestamptz_ne_timestamp",
    "timestamptz_pl_interval", "timestamptz_send", "timestamptz_smaller", "timestamptztypmodin",
    "timetypmodin", "timetz", "timetz_cmp", "timetz_eq", "timetz_ge", "timetz_gt", "timetz_hash",
    "timetz_hash_extended", "timetz_larger", "timetz_le", "timetz_lt", "timetz_mi_interval", "timetz_ne",
    "timetz_pl_interval", "timetz_send", "timetz_smaller", "timetzdate_pl", "timetztypmodin", "timezone",
    "to_ascii", "to_char", "to_date", "to_hex", "to_json", "to_jsonb", "to_number", "to_regclass",
    "to_regcollation", "to_regnamespace", "to_regoper", "to_regoperator", "to_regproc", "to_regprocedure",
    "to_regrole", "to_regtype", "to_timestamp", "to_tsquery", "to_tsvector", "transaction_timestamp",
    "translate", "trim_array", "trim_scale", "trunc", "ts_debug", "ts_delete", "ts_filter", "ts_headline",
    "ts_lexize", "ts_match_qv", "ts_match_tq", "ts_match_tt", "ts_match_vq", "ts_parse", "ts_rank",
    "ts_rank_cd", "ts_token_type", "tsmultirange", "tsq_mcontained", "tsq_mcontains", "tsquery_and",
    "tsquery_cmp", "tsquery_eq", "tsquery_ge", "tsquery_gt", "tsquery_le", "tsquery_lt", "tsquery_ne",
    "tsquery_not", "tsquery_or", "tsquery_phrase", "tsquerysend", "tsrange", "tsrange_subdiff",
    "tstzmultirange", "tstzrange", "tstzrange_subdiff", "tsvector_cmp", "tsvector_concat", "tsvector_eq",
    "tsvector_ge", "tsvector_gt", "tsvector_le", "tsvector_lt", "tsvector_ne", "tsvector_to_array",
    "tsvectorsend", "txid_current", "txid_current_if_assigned", "txid_current_snapshot", "txid_snapshot_send",
    "txid_snapshot_xip", "txid_snapshot_xmax", "txid_snapshot_xmin", "txid_visible_in_snapshot", "unistr",
    "unknownsend", "unnest", "upper", "upper_inc", "upper_inf", "uuid_cmp", "uuid_eq", "uuid_ge", "uuid_gt",
    "uuid_hash", "uuid_hash_extended", "uuid_le", "uuid_lt", "uuid_ne", "uuid_send", "var_pop", "var_samp",
    "varbit", "varbit_send", "varbitcmp", "varbiteq", "varbitge", "varbitgt", "varbitle", "varbitlt",
    "varbitne", "varbittypmodin", "varchar", "varcharsend", "varchartypmodin", "variance", "version",
    "void_send", "websearch_to_tsquery", "width", "width_bucket", "xid", "xid8_larger", "xid8_smaller",
    "xid8cmp", "xid8eq", "xid8ge", "xid8gt", "xid8le", "xid8lt", "xid8ne", "xid8send", "xideq", "xideqint4",
    "xidneq", "xidneqint4", "xidsend", "xml", "xml_is_well_formed", "xml_is_well_formed_content",
    "xml_is_well_formed_document", "xml_send", "xmlagg", "xmlcomment", "xmlconcat2", "xmlexists",
    "xmlvalidate", "xpath", "xpath_exists",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_for_binary_search() {
        for list in [
            CATALOG_READ_ONLY,
            NEWER_READ_ONLY,
            SQL_CONSTRUCTS,
            HARMLESS_VOLATILE,
            UNCLASSIFIED_VOLATILE,
            BUILTIN_TYPES,
            BUILTIN_OPERATORS,
        ] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{:?}", list.windows(2).find(|w| w[0] >= w[1]));
        }
    }

    #[test]
    fn families_win_over_lists() {
        assert_eq!(builtin("lower"), Some(Builtin::ReadOnly));
        assert_eq!(builtin("pg_sleep"), Some(Builtin::ReadOnly));
        assert!(matches!(builtin("nextval"), Some(Builtin::Effect(c, _)) if c == [Class::Write]));
        assert!(matches!(builtin("lo_import"), Some(Builtin::Effect(c, _)) if c.contains(&Class::Unknown)));
        assert!(matches!(builtin("pg_ls_waldir"), Some(Builtin::Effect(..))));
        assert!(matches!(builtin("table_to_xml"), Some(Builtin::Effect(..))), "stable, yet it reads tables");
        assert_eq!(builtin("set_config"), Some(Builtin::SetConfig));
        assert_eq!(builtin("pg_replication_origin_oid"), Some(Builtin::ReadOnly));
        assert_eq!(builtin("evil"), None);
        assert_eq!(builtin("Lower"), None, "names are matched as normalised, case and all");
        assert!(privileged_setting("ROLE") && privileged_setting("Session_Authorization"));
        assert!(!privileged_setting("search_path"));
        assert!(SUPERUSER_SETTINGS.windows(2).all(|w| w[0] < w[1]), "sorted");
        assert!(superuser_setting("Session_Replication_Role") && superuser_setting(" log_statement"));
        assert!(superuser_setting("pgaudit.log") && !superuser_setting("work_mem"));
        assert!(evaluated_when_planned("table_to_xml_and_xmlschema") && !evaluated_when_planned("query_to_xml"));
    }

    /// The floor of VOLATILE built-ins holds only names nothing else classifies (a classified
    /// name never reaches the catalog's lookup).
    #[test]
    fn unclassified_volatile_builtins_are_only_those_no_list_knows() {
        assert!(UNCLASSIFIED_VOLATILE.iter().all(|n| builtin(n).is_none()), "classified elsewhere");
        assert!(volatile_unclassified("currtid2") && volatile_unclassified("RI_FKey_check_ins"));
        assert!(!volatile_unclassified("lower") && !volatile_unclassified("ri_fkey_check_ins"));
    }
}
