//! The SQL of one namespace. Every name is schema-qualified and every statement stands
//! alone, so nothing depends on session state (`search_path`, prepared statements, advisory
//! locks): a pooler in transaction mode may hand each transaction a different server
//! connection.

use nimbus_storage::ExportKind;

/// Layout version written into `meta`; a namespace of a newer version is refused.
pub(crate) const FORMAT_VERSION: i64 = 1;

/// Quotes an identifier (names are checked before they get here; quoting is what keeps a
/// `-` or a reserved word in a tenant's name from changing the statement).
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The tables of a namespace, created in one transaction with the schema.
///
/// `documents.id` is the table number (4 bytes, big-endian) followed by the 16 internal
/// bytes, so a table is one range of the primary key. `bytea` compares bytewise, which is
/// the order of the engine's index-key encoding, so an index range is a primary-key range
/// scan of `index_entries`.
pub(crate) fn create_schema(schema: &str) -> String {
    let s = ident(schema);
    format!(
        "CREATE SCHEMA {s};
         CREATE TABLE {s}.documents (id bytea PRIMARY KEY, table_number bigint NOT NULL,
             ts bigint NOT NULL, body bytea NOT NULL);
         CREATE TABLE {s}.index_entries (index_number bigint NOT NULL, key bytea NOT NULL,
             id bytea NOT NULL, PRIMARY KEY (index_number, key));
         CREATE TABLE {s}.globals (name text PRIMARY KEY, value bytea NOT NULL);
         CREATE TABLE {s}.meta (name text PRIMARY KEY, value bigint NOT NULL);
         CREATE TABLE {s}.receipts (key bytea PRIMARY KEY, ts bigint NOT NULL,
             body bytea NOT NULL);
         CREATE INDEX receipts_by_ts ON {s}.receipts (ts);
         INSERT INTO {s}.meta VALUES ('format_version', {FORMAT_VERSION}), ('max_ts', 0);"
    )
}

/// The fixed statements of one namespace, rendered once when it is opened.
pub(crate) struct Statements {
    pub schema: String,
    pub format_version: String,
    pub max_ts: String,
    pub advance_max_ts: String,
    pub get_global: String,
    pub get_document: String,
    pub get_receipt: String,
    pub stats: String,
    pub table_counts: String,
    pub put_documents: String,
    pub delete_documents: String,
    pub put_entries: String,
    pub delete_entries: String,
    pub drop_index: String,
    pub drop_index_chunk: String,
    pub put_globals: String,
    pub delete_globals: String,
    pub put_receipts: String,
    pub expire_receipts: String,
    pub import_documents: String,
    pub import_receipts: String,
    pub set_max_ts: String,
}

impl Statements {
    pub(crate) fn new(schema: &str) -> Statements {
        let s = ident(schema);
        Statements {
            schema: s.clone(),
            format_version: format!("SELECT value FROM {s}.meta WHERE name = 'format_version'"),
            max_ts: format!("SELECT value FROM {s}.meta WHERE name = 'max_ts'"),
            // The first statement of a batch: refuses a batch that is not after the last
            // one (no row changed) and holds the row lock until commit, so two writers of
            // one namespace (only possible across processes, by mistake) serialize here.
            advance_max_ts: format!(
                "UPDATE {s}.meta SET value = $1 WHERE name = 'max_ts' AND value < $1"
            ),
            get_global: format!("SELECT value FROM {s}.globals WHERE name = $1"),
            get_document: format!(
                "SELECT id, table_number, ts, body FROM {s}.documents WHERE id = $1"
            ),
            get_receipt: format!("SELECT ts, body FROM {s}.receipts WHERE key = $1"),
            stats: format!(
                "SELECT COUNT(*)::bigint, COALESCE(SUM(octet_length(body)), 0)::bigint \
                 FROM {s}.documents"
            ),
            table_counts: format!(
                "SELECT table_number, COUNT(*)::bigint FROM {s}.documents GROUP BY table_number"
            ),
            // Batches are written with one statement per kind of row, the rows passed as
            // arrays (one round trip however many rows). The caller keeps only the last
            // write of each key, since one INSERT may not touch a row twice.
            put_documents: format!(
                "INSERT INTO {s}.documents (id, table_number, ts, body) \
                 SELECT u.id, u.table_number, $3, u.body \
                 FROM unnest($1::bytea[], $2::bigint[], $4::bytea[]) AS u(id, table_number, body) \
                 ON CONFLICT (id) DO UPDATE SET table_number = EXCLUDED.table_number, \
                 ts = EXCLUDED.ts, body = EXCLUDED.body"
            ),
            delete_documents: format!("DELETE FROM {s}.documents WHERE id = ANY($1::bytea[])"),
            put_entries: format!(
                "INSERT INTO {s}.index_entries (index_number, key, id) \
                 SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) \
                 ON CONFLICT (index_number, key) DO UPDATE SET id = EXCLUDED.id"
            ),
            delete_entries: format!(
                "DELETE FROM {s}.index_entries e USING unnest($1::bigint[], $2::bytea[]) \
                 AS u(index_number, key) WHERE e.index_number = u.index_number AND e.key = u.key"
            ),
            drop_index: format!("DELETE FROM {s}.index_entries WHERE index_number = $1"),
            drop_index_chunk: format!(
                "DELETE FROM {s}.index_entries WHERE index_number = $1 AND key IN \
                 (SELECT key FROM {s}.index_entries WHERE index_number = $1 ORDER BY key LIMIT $2)"
            ),
            put_globals: format!(
                "INSERT INTO {s}.globals (name, value) SELECT * FROM unnest($1::text[], $2::bytea[]) \
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
            ),
            delete_globals: format!("DELETE FROM {s}.globals WHERE name = ANY($1::text[])"),
            put_receipts: format!(
                "INSERT INTO {s}.receipts (key, ts, body) \
                 SELECT u.key, $2, u.body FROM unnest($1::bytea[], $3::bytea[]) AS u(key, body) \
                 ON CONFLICT (key) DO UPDATE SET ts = EXCLUDED.ts, body = EXCLUDED.body"
            ),
            expire_receipts: format!("DELETE FROM {s}.receipts WHERE ts < $1"),
            // An import writes rows as exported: each document and receipt with its own ts.
            import_documents: format!(
                "INSERT INTO {s}.documents (id, table_number, ts, body) \
                 SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::bytea[]) \
                 ON CONFLICT (id) DO UPDATE SET table_number = EXCLUDED.table_number, \
                 ts = EXCLUDED.ts, body = EXCLUDED.body"
            ),
            import_receipts: format!(
                "INSERT INTO {s}.receipts (key, ts, body) \
                 SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bytea[]) \
                 ON CONFLICT (key) DO UPDATE SET ts = EXCLUDED.ts, body = EXCLUDED.body"
            ),
            set_max_ts: format!("UPDATE {s}.meta SET value = $1 WHERE name = 'max_ts'"),
        }
    }

    /// One kind's rows for an export page, after a key (`after`) or from the first, in one
    /// statement. Parameters: `$1` the most rows to return, `$2` one more (what is
    /// selected, so the last column, the number selected, tells whether more follow), `$3`
    /// the byte budget, then the key columns of the last row read. A row comes only while
    /// the rows before it total less than the budget (by `ExportedRow::size_bytes`; the
    /// first always comes). Only keys and sizes pass through the window; bodies are read
    /// for the rows returned alone, joined back by key in the same snapshot.
    pub(crate) fn export(&self, kind: ExportKind, after: bool) -> String {
        let s = &self.schema;
        // (table, key columns, order, size, after condition, returned columns)
        let (table, key, order, size, after_key, columns) = match kind {
            ExportKind::Documents => (
                "documents",
                "id",
                "id",
                "32 + octet_length(body)",
                "id > $4",
                "id, t.table_number, t.ts, t.body",
            ),
            ExportKind::IndexEntries => (
                "index_entries",
                "index_number, key",
                "index_number, key",
                "24 + octet_length(key)",
                "(index_number, key) > ($4, $5)",
                "index_number, key, t.id",
            ),
            // Names in bytewise order (as SQLite and Rust order them), whatever the
            // database's collation.
            ExportKind::Globals => (
                "globals",
                "name",
                "name COLLATE \"C\"",
                "octet_length(name) + octet_length(value)",
                "name COLLATE \"C\" > $4",
                "name, t.value",
            ),
            ExportKind::Receipts => (
                "receipts",
                "key",
                "key",
                "8 + octet_length(key) + octet_length(body)",
                "key > $4",
                "key, t.ts, t.body",
            ),
        };
        let filter = if after {
            format!(" WHERE {after_key}")
        } else {
            String::new()
        };
        format!(
            "SELECT {columns}, r.selected FROM \
             (SELECT {key}, row_number() OVER w AS n, sum(k.size) OVER w - k.size AS before, \
                 count(*) OVER () AS selected \
              FROM (SELECT {key}, {size} AS size FROM {s}.{table}{filter} \
                  ORDER BY {order} LIMIT $2) k \
              WINDOW w AS (ORDER BY {order} ROWS UNBOUNDED PRECEDING)) r \
             JOIN {s}.{table} t USING ({key}) \
             WHERE r.n <= $1 AND (r.n = 1 OR r.before < $3) ORDER BY r.n"
        )
    }

    /// An index range with its documents and the `max_ts` of the same snapshot, in one
    /// statement (so one snapshot, even under READ COMMITTED): the `meta` row is joined
    /// to the range, so an empty range still returns the timestamp. `bounds` are the SQL
    /// comparisons on `e.key`, already numbered from `$2`; the limit is the last parameter.
    pub(crate) fn scan_index(&self, bounds: &str, descending: bool, limit_param: usize) -> String {
        let s = &self.schema;
        let order = if descending { "DESC" } else { "ASC" };
        format!(
            "SELECT m.value, r.key, r.id, r.table_number, r.ts, r.body FROM {s}.meta m \
             LEFT JOIN LATERAL (SELECT e.key, d.id, d.table_number, d.ts, d.body \
                 FROM {s}.index_entries e JOIN {s}.documents d ON d.id = e.id \
                 WHERE e.index_number = $1{bounds} ORDER BY e.key {order} LIMIT ${limit_param}) r \
             ON true WHERE m.name = 'max_ts' ORDER BY r.key {order}"
        )
    }

    /// A cursor over one table's documents in ID order (one snapshot, fetched in pages).
    pub(crate) fn declare_table_cursor(&self, cursor: &str, table: u32) -> String {
        let s = &self.schema;
        let from = hex(&table.to_be_bytes());
        let until = match table.checked_add(1) {
            Some(next) => format!(" AND id < '\\x{}'::bytea", hex(&next.to_be_bytes())),
            None => String::new(),
        };
        format!(
            "DECLARE {cursor} NO SCROLL CURSOR FOR SELECT id, table_number, ts, body \
             FROM {s}.documents WHERE id >= '\\x{from}'::bytea{until} ORDER BY id"
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
