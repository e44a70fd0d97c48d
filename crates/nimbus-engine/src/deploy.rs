//! Deploys: schema, indexes and code switching together, without stalling writes.
//!
//! A deploy that adds indexes or checks a schema must look at every document, which at a
//! million documents takes seconds: too long to hold the committer. So it runs in steps,
//! and only the last one, which does no per-document work, is committed alone:
//!
//! 1. **Stage** (a committer message): the new indexes join the catalog as *building* —
//!    every write from then on maintains them, but no query sees them — and the new
//!    schema's document check is installed: every document written while staged is
//!    checked, and the first violation is remembered. The reply is the snapshot at which
//!    staging took effect, `S`.
//! 2. **Background** (the caller, outside the committer): every document of `S` is checked
//!    against the new schema from the snapshot, and the building indexes are backfilled
//!    with [`Backfill`] chunks of document IDs read from `S`. The committer indexes each
//!    chunk's documents from its *current* state (a document written since `S` already is,
//!    by the write that changed it; one deleted since is skipped), so the two meet without
//!    gaps or ghosts.
//! 3. **Switch** (a [`DeployRequest`], committed alone): the building indexes become
//!    visible, indexes no longer wanted are dropped (their entries are deleted later, in
//!    chunks: see [`crate::TenantEngine::collect_garbage`]), the code changes, and the
//!    catalog version moves. It fails if a document written while staged broke the new
//!    schema. No document is read.
//!
//! A deploy without staging (tests, tools) backfills and checks inside the committer, as
//! one step.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use nimbus_storage::{IndexNumber, IndexWrite, WriteBatch};
use nimbus_types::index_key::document_key;
use nimbus_types::{Document, DocumentId, Timestamp};

use crate::catalog::{Catalog, IndexInfo, CATALOG_GLOBAL};
use crate::error::EngineError;
use crate::snapshot::Snapshot;

/// Checks run by the committer against the latest snapshot before an unstaged deploy
/// applies.
pub type DeployCheck = Box<dyn FnOnce(&Snapshot) -> Result<(), String> + Send>;

/// The new schema's check of one document (table name, document) while a deploy is staged.
pub type DocumentCheck = Arc<dyn Fn(&str, &Document) -> Result<(), String> + Send + Sync>;

/// Table → index name → declared fields.
pub type WantedIndexes = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// A schema/code change: the wanted user indexes per table, globals to write, a check of
/// existing documents, and the deployment the new snapshot carries. Applied atomically with
/// respect to every mutation: it is committed alone, never in a group with other writes.
pub struct DeployRequest {
    pub indexes: WantedIndexes,
    pub globals: Vec<(String, Option<Vec<u8>>)>,
    /// Only for an unstaged deploy (a staged one checked its documents while staged).
    pub check: Option<DeployCheck>,
    /// Published with the snapshot of this deploy's commit (see
    /// [`crate::DeploymentHandle`]); `None` keeps the current one.
    pub deployment: Option<crate::DeploymentHandle>,
}

/// Step 1 of a deploy: the indexes it wants, and the new schema's document check.
pub struct StageRequest {
    pub indexes: WantedIndexes,
    pub check: Option<DocumentCheck>,
}

/// What staging did.
pub struct Staged {
    /// The first snapshot with the staged catalog: check and backfill from it.
    pub snapshot: Arc<Snapshot>,
    /// The indexes being built.
    pub building: Vec<IndexInfo>,
}

/// What a deploy changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployOutcome {
    pub ts: Timestamp,
    /// `table.index` names added and removed.
    pub added_indexes: Vec<String>,
    pub removed_indexes: Vec<String>,
}

/// The committer's record of a staged deploy.
pub(crate) struct Staging {
    check: Option<DocumentCheck>,
    /// The first document written while staged that the new schema refuses.
    violation: Option<String>,
}

/// Sets `catalog` as the working catalog, and writes it.
fn write_catalog(
    catalog: Catalog,
    working: &mut Snapshot,
    storage: &mut WriteBatch,
) -> Result<(), EngineError> {
    storage
        .globals
        .push((CATALOG_GLOBAL.to_string(), Some(catalog.to_bytes()?)));
    working.set_catalog(Arc::new(catalog));
    Ok(())
}

/// Step 1: the wanted indexes that do not exist yet start building. Any staging left over
/// (a caller that gave up) is abandoned first.
pub(crate) fn apply_stage(
    request: StageRequest,
    working: &mut Snapshot,
    storage: &mut WriteBatch,
    staging: &mut Option<Staging>,
) -> Result<Vec<IndexInfo>, EngineError> {
    let mut catalog: Catalog = (*working.catalog).clone();
    for abandoned in catalog.abandon_building() {
        working.drop_index(abandoned);
    }
    let mut building = Vec::new();
    for (table, indexes) in &request.indexes {
        for (name, declared) in indexes {
            let same = catalog
                .resolve_index(table, name)
                .is_ok_and(|info| info.fields == crate::catalog::user_index_fields(declared));
            if !same {
                let number = catalog.add_building_index(table, name, declared);
                building.extend(catalog.index(number).cloned());
            }
        }
    }
    catalog.version += 1;
    write_catalog(catalog, working, storage)?;
    *staging = Some(Staging {
        check: request.check,
        violation: None,
    });
    Ok(building)
}

/// Whether `table` is a system table (`_scheduled_functions` ...): created by the server,
/// never by a user's insert, and its indexes are left alone by deploys.
pub fn is_system_table(table: &str) -> bool {
    table.starts_with('_')
}

/// Creates the system tables and indexes of `wanted` that do not exist yet (an index is
/// built at once from the table's documents: system tables are created empty, and an
/// index added to an existing one is small next to a push's). Returns whether the catalog
/// changed. Tables not named as system tables are refused.
pub(crate) fn apply_system_tables(
    wanted: &WantedIndexes,
    working: &mut Snapshot,
    storage: &mut WriteBatch,
) -> Result<bool, EngineError> {
    let mut catalog: Catalog = (*working.catalog).clone();
    let mut changed = false;
    for (table, indexes) in wanted {
        if !is_system_table(table) {
            return Err(EngineError::User(format!(
                "{table:?} is not a system table name"
            )));
        }
        if catalog.table(table).is_none() {
            catalog.create_table(table);
            changed = true;
        }
        for (name, declared) in indexes {
            if catalog
                .table(table)
                .is_some_and(|t| t.indexes.contains_key(name))
            {
                continue;
            }
            let number = catalog.add_index(table, name, declared);
            working.set_catalog(Arc::new(catalog.clone()));
            if let Some(info) = catalog.index(number).cloned() {
                let entries = working.backfill_index(&info)?;
                storage.indexes.extend(entries);
            }
            changed = true;
        }
    }
    if changed {
        catalog.version += 1;
        write_catalog(catalog, working, storage)?;
    }
    Ok(changed)
}

/// Abandons a staged deploy: its building indexes become garbage.
pub(crate) fn apply_unstage(
    working: &mut Snapshot,
    storage: &mut WriteBatch,
    staging: &mut Option<Staging>,
) -> Result<(), EngineError> {
    *staging = None;
    let mut catalog: Catalog = (*working.catalog).clone();
    let abandoned = catalog.abandon_building();
    if abandoned.is_empty() {
        return Ok(());
    }
    for number in abandoned {
        working.drop_index(number);
    }
    catalog.version += 1;
    write_catalog(catalog, working, storage)
}

/// Checks documents written while a deploy is staged against its new schema; remembers
/// the first refused one (the write itself stands: the old schema is still in force).
pub(crate) fn check_staged_writes<'a>(
    staging: &mut Option<Staging>,
    working: &Snapshot,
    written: impl Iterator<Item = (&'a DocumentId, &'a Document)>,
) {
    let Some(Staging {
        check: Some(check),
        violation: violation @ None,
    }) = staging
    else {
        return;
    };
    for (id, doc) in written {
        let Some(table) = working.catalog.table_name(id.table) else {
            continue;
        };
        if let Err(error) = check(table, doc) {
            let id = working.id_codec.encode(*id);
            *violation = Some(format!(
                "Schema validation failed.\nDocument with ID \"{id}\" in table \"{table}\", \
                 written while the push was being activated, does not match the schema: {error}"
            ));
            return;
        }
    }
}

/// Step 2: indexes `ids` (read from the staged snapshot) into the building `indexes`, from
/// each document's current state.
pub(crate) fn apply_backfill(
    indexes: &[IndexNumber],
    ids: &[DocumentId],
    working: &mut Snapshot,
    storage: &mut WriteBatch,
) -> Result<usize, EngineError> {
    let infos: Vec<IndexInfo> = indexes
        .iter()
        .filter_map(|number| working.catalog.index(*number))
        .filter(|info| info.building)
        .cloned()
        .collect();
    // A tenant served from storage reads documents from storage, which does not hold the
    // writes of this group's earlier messages yet: those are read from the batch (the last
    // write of a document wins). A resident snapshot already has them applied.
    let mut pending: HashMap<DocumentId, Option<&[u8]>> = HashMap::new();
    if !working.is_resident() {
        let chunk: HashSet<&DocumentId> = ids.iter().collect();
        for write in storage.documents.iter().filter(|w| chunk.contains(&w.id)) {
            pending.insert(write.id, write.body.as_deref());
        }
    }
    let mut new_entries = Vec::new();
    for id in ids {
        let doc = match pending.get(id) {
            Some(Some(body)) => Some(Arc::new(crate::codec::decode_document(body)?)),
            Some(None) => None,
            None => working.get(id)?,
        };
        let Some(doc) = doc else {
            continue; // deleted since the staged snapshot
        };
        for info in infos.iter().filter(|info| info.table == id.table) {
            let key = document_key(&info.fields, &doc);
            working.insert_index_entry(info.number, &key, *id, &doc);
            new_entries.push(IndexWrite::Insert {
                index: info.number,
                key,
                id: *id,
            });
        }
    }
    let indexed = new_entries.len();
    storage.indexes.extend(new_entries);
    Ok(indexed)
}

/// Why a deploy failed, and whether the catalog changed anyway (a staged deploy that saw
/// a schema violation abandons its building indexes: that change must be published).
pub(crate) struct DeployFailure {
    pub error: EngineError,
    pub publish: bool,
}

impl From<EngineError> for DeployFailure {
    fn from(error: EngineError) -> Self {
        DeployFailure {
            error,
            publish: false,
        }
    }
}

/// Step 3 (or the whole deploy, unstaged).
pub(crate) fn apply_deploy(
    request: DeployRequest,
    working: &mut Snapshot,
    storage: &mut WriteBatch,
    staging: &mut Option<Staging>,
) -> Result<DeployOutcome, DeployFailure> {
    let staged = staging.take();
    if let Some(Staging {
        violation: Some(violation),
        ..
    }) = staged
    {
        apply_unstage(working, storage, &mut None)?;
        return Err(DeployFailure {
            error: EngineError::User(violation),
            publish: true,
        });
    }
    if staged.is_none() {
        if let Some(check) = request.check {
            check(working).map_err(EngineError::User)?;
        }
    }
    let mut catalog: Catalog = (*working.catalog).clone();
    let mut outcome = DeployOutcome::default();
    // Building indexes the request still wants become visible; others are abandoned.
    let building: Vec<IndexInfo> = catalog.building().cloned().collect();
    for info in building {
        let table = catalog.table_name(info.table).map(str::to_string);
        let wanted = table
            .as_ref()
            .and_then(|t| request.indexes.get(t)?.get(&info.name));
        let same = wanted
            .is_some_and(|declared| crate::catalog::user_index_fields(declared) == info.fields);
        if same {
            catalog.finish_building(info.number);
            outcome
                .added_indexes
                .push(format!("{}.{}", table.unwrap_or_default(), info.name));
        }
    }
    for abandoned in catalog.abandon_building() {
        working.drop_index(abandoned);
    }
    // Remove indexes that are gone or whose fields changed.
    let existing: Vec<(String, String, Vec<String>)> = catalog
        .tables()
        .flat_map(|table| {
            table
                .indexes
                .keys()
                .map(move |name| (table.name.clone(), name.clone()))
        })
        .filter_map(|(table, name)| {
            let fields = catalog.resolve_index(&table, &name).ok()?.fields.clone();
            Some((table, name, fields))
        })
        .collect();
    for (table, name, fields) in existing {
        if name == crate::catalog::BY_ID || name == crate::catalog::BY_CREATION_TIME {
            continue;
        }
        // System tables' indexes belong to the engine's users (the scheduler), not to the
        // pushed schema, which cannot name them.
        if is_system_table(&table) {
            continue;
        }
        let wanted = request.indexes.get(&table).and_then(|t| t.get(&name));
        let keep =
            wanted.is_some_and(|declared| crate::catalog::user_index_fields(declared) == fields);
        if !keep {
            if let Some(number) = catalog.remove_index(&table, &name) {
                // Its entries are deleted later, in chunks (it is garbage now).
                working.drop_index(number);
                outcome.removed_indexes.push(format!("{table}.{name}"));
            }
        }
    }
    // Unstaged additions are built here, in one step.
    for (table, indexes) in &request.indexes {
        for (name, declared) in indexes {
            let exists = catalog
                .table(table)
                .is_some_and(|t| t.indexes.contains_key(name));
            if exists {
                continue;
            }
            let number = catalog.add_index(table, name, declared);
            outcome.added_indexes.push(format!("{table}.{name}"));
            working.set_catalog(Arc::new(catalog.clone()));
            if let Some(info) = catalog.index(number).cloned() {
                let entries = working.backfill_index(&info)?;
                storage.indexes.extend(entries);
            }
        }
    }
    catalog.version += 1;
    write_catalog(catalog, working, storage)?;
    storage.globals.extend(request.globals);
    if let Some(deployment) = request.deployment {
        working.deployment = deployment;
    }
    Ok(outcome)
}
