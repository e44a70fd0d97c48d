//! Code push: analyze pushed modules and schema (start), check existing documents
//! (status), and switch code, schema and indexes atomically (finish).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use nimbus_engine::{DeployRequest, DocumentCheck, Snapshot, StageRequest, WantedIndexes};
use nimbus_runtime::{
    analyze_modules, evaluate_schema, CodeId, ModuleSet, RuntimeLimits, Visibility,
};
use nimbus_types::schema::Schema;
use nimbus_types::Value;

use crate::deployment::{Deployment, FunctionInfo, StoredModule, DEPLOYMENT_GLOBAL};
use crate::error::AppError;
use crate::tenant::Tenant;

/// Documents indexed per backfill commit: writes queued behind one wait tens of
/// milliseconds at most (see BENCHMARKS.md, "Index builds").
const BACKFILL_CHUNK: usize = 1024;
/// Entries of a dropped index deleted per commit.
const GARBAGE_CHUNK: usize = 8192;

/// Most staged pushes kept per tenant; starting another evicts the oldest.
const MAX_STAGED_PUSHES: usize = 4;
/// Most modules in one push.
const MAX_MODULES: usize = 4096;
/// Most total source bytes in one push.
const MAX_PUSH_BYTES: usize = 64 << 20;

/// One module as pushed by the CLI.
#[derive(Debug, Clone)]
pub struct PushModule {
    pub path: String,
    pub source: String,
    pub source_map: Option<String>,
    /// `"isolate"` (runs here) or `"node"` (rejected).
    pub environment: String,
}

/// A push as the CLI sends it.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// Modules sent in full.
    pub modules: Vec<PushModule>,
    /// Modules sent only as hashes: their deployed source is reused.
    pub unchanged: Vec<String>,
    /// `schema.js`, if the project has one.
    pub schema_source: Option<String>,
    pub dry_run: bool,
}

/// An index added or removed by a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexChange {
    pub table: String,
    pub name: String,
    pub fields: Vec<String>,
    pub added: bool,
}

/// The result of `start_push`: the analysis, and a token to finish it with.
#[derive(Debug, Clone)]
pub struct StagedPush {
    pub token: String,
    pub functions: Vec<FunctionInfo>,
    pub schema_json: Option<String>,
    pub index_changes: Vec<IndexChange>,
    pub crons_json: Option<String>,
    /// The auth providers of `auth.config.ts` (the response's `appAuth`).
    pub auth: crate::auth::AuthConfig,
    /// The environment variables in force (the response's `environmentVariables`; the
    /// caller is the tenant admin, who may read them).
    pub environment_variables: Arc<BTreeMap<String, String>>,
}

/// Whether a staged push can be finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagedStatus {
    Ready,
    Failed {
        error: String,
        table: Option<String>,
    },
}

struct Staged {
    deployment: Arc<Deployment>,
    created: Instant,
}

/// Staged pushes of one tenant, bounded by [`MAX_STAGED_PUSHES`] and a TTL.
#[derive(Default)]
pub(crate) struct StagedPushes {
    entries: HashMap<String, Staged>,
}

impl StagedPushes {
    fn insert(&mut self, token: String, staged: Staged, ttl: std::time::Duration) {
        self.entries.retain(|_, s| s.created.elapsed() < ttl);
        while self.entries.len() >= MAX_STAGED_PUSHES {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(key) => self.entries.remove(&key),
                None => break,
            };
        }
        self.entries.insert(token, staged);
    }

    fn get(&self, token: &str) -> Option<Arc<Deployment>> {
        self.entries.get(token).map(|s| s.deployment.clone())
    }
}

impl Tenant {
    /// Analyzes a push and stages it (unless `dry_run`).
    pub async fn start_push(&self, request: PushRequest) -> Result<StagedPush, AppError> {
        let current = self.deployment();
        let modules = assemble_modules(&current, request.modules, &request.unchanged)?;
        let module_set = ModuleSet::new(
            // Analysis runs in a runtime of its own, outside the pool's cache.
            CodeId::NONE,
            Arc::new(
                modules
                    .iter()
                    .map(|m| (m.path.clone(), m.source.clone()))
                    .collect(),
            ),
            // `auth.config.ts` may read `process.env`: it sees the variables set now.
            current.env.clone(),
        );
        let limits = RuntimeLimits::default();
        let schema_source = request.schema_source;
        // The pool's engine: what loads at push time loads the same way when called.
        let engine = self.pool().engine();
        // Filled by the analysis (V8): kept with the deployment.
        let code_cache = module_set.code_cache.clone();
        let analyzed = tokio::task::spawn_blocking(move || {
            let analysis = analyze_modules(engine, &module_set, &limits)
                .map_err(|e| push_failed("InvalidModules", e.to_string()))?;
            let schema_json = match schema_source {
                Some(source) => Some(
                    evaluate_schema(engine, &source, &limits)
                        .map_err(|e| push_failed("InvalidSchema", e.to_string()))?,
                ),
                None => None,
            };
            Ok::<_, AppError>((analysis, schema_json))
        })
        .await
        .map_err(|e| AppError::Internal(format!("analysis task failed: {e}")))??;
        let (analysis, schema_json) = analyzed;
        let functions: Vec<FunctionInfo> = analysis
            .functions
            .into_iter()
            .map(|f| FunctionInfo {
                module_path: f.module_path,
                name: f.name,
                kind: f.kind,
                public: matches!(f.visibility, Visibility::Public),
                args_json: f.args_json,
                returns_json: f.returns_json,
            })
            .collect();
        // Generation and code identity are given when the push is activated.
        let mut deployment = Deployment::build(
            0,
            CodeId::NONE,
            modules,
            functions.clone(),
            schema_json.clone(),
            analysis.crons_json.clone(),
            analysis.auth_json.clone(),
            current.env.clone(),
        )?;
        deployment.module_set.code_cache = code_cache;
        let index_changes = index_changes(&self.engine().snapshot(), deployment.schema.as_deref());
        let auth = (*deployment.auth).clone();
        let token = format!("push-{:032x}", rand::random::<u128>());
        if !request.dry_run {
            self.staged.lock().insert(
                token.clone(),
                Staged {
                    deployment: Arc::new(deployment),
                    created: Instant::now(),
                },
                self.config.staged_push_ttl,
            );
        }
        Ok(StagedPush {
            token,
            functions,
            schema_json,
            index_changes,
            crons_json: analysis.crons_json,
            auth,
            environment_variables: current.env.clone(),
        })
    }

    /// Checks the staged schema against the documents stored now.
    pub async fn push_status(&self, token: &str) -> Result<StagedStatus, AppError> {
        let staged = self.staged_push(token)?;
        let Some(schema) = staged.schema.clone() else {
            return Ok(StagedStatus::Ready);
        };
        let engine = self.engine().clone();
        // A scan of every document: off the async threads.
        let checked = tokio::task::spawn_blocking(move || {
            validate_documents(&schema, &engine, &engine.snapshot())
        })
        .await
        .map_err(|e| AppError::Internal(format!("schema check task failed: {e}")))?;
        Ok(match checked {
            Err((error, table)) => StagedStatus::Failed {
                error,
                table: Some(table),
            },
            Ok(()) => StagedStatus::Ready,
        })
    }

    /// Activates a staged push: code, schema and indexes switch in one commit, which also
    /// publishes the new deployment with its snapshot (a call always runs the code of the
    /// snapshot it reads, and a mutation begun under older code conflicts and re-runs under
    /// the new one).
    ///
    /// The per-document work happens before, outside the committer, so writes never wait
    /// for it (see `nimbus-engine`'s `deploy.rs`): the engine starts building the new
    /// indexes and checking every written document against the new schema; then every
    /// document of that moment is checked, and the new indexes are backfilled in chunks;
    /// only then does the switch commit. No document that breaks the new schema gets
    /// through: those stored before are found by the check, those written meanwhile by the
    /// engine, which fails the switch.
    pub async fn finish_push(&self, token: &str, dry_run: bool) -> Result<(), AppError> {
        let staged = self.staged_push(token)?;
        if dry_run {
            return Ok(());
        }
        let _one_at_a_time = self.activation_lock.lock().await;
        let staged = Arc::new(staged.activated(&self.deployment()));
        let indexes = wanted_indexes(&staged);
        let started = Instant::now();
        let check = staged.schema.clone().map(|schema| {
            // IDs are checked for shape only: the committer has no snapshot to resolve them.
            Arc::new(move |table: &str, doc: &nimbus_types::Document| {
                schema
                    .check_document(table, doc, &AnyIds)
                    .map_err(|e| e.to_string())
            }) as DocumentCheck
        });
        let stage = self
            .engine()
            .stage_deploy(StageRequest {
                indexes: indexes.clone(),
                check,
            })
            .await
            .map_err(|e| AppError::from_engine(self.name(), e))?;
        let built = self.check_and_backfill(&staged, &stage).await;
        if let Err(error) = built {
            // Best effort: a staging left behind is abandoned by the next push, or at
            // the next activation.
            if let Err(unstage) = self.engine().unstage_deploy().await {
                tracing::warn!(tenant = self.name(), %unstage, "could not abandon a staged push");
            }
            return Err(error);
        }
        let request = DeployRequest {
            indexes,
            globals: vec![(DEPLOYMENT_GLOBAL.to_string(), Some(staged.to_bytes()?))],
            check: None,
            deployment: Some(staged.clone()),
        };
        match self.engine().deploy(request).await {
            Ok(outcome) => {
                tracing::info!(
                    tenant = self.name(),
                    generation = staged.generation,
                    code_id = %staged.code_id,
                    added = ?outcome.added_indexes,
                    removed = ?outcome.removed_indexes,
                    ms = started.elapsed().as_millis() as u64,
                    "push activated"
                );
                self.staged.lock().entries.remove(token);
                // Its crons are registered (and removed ones dropped) by the scheduler.
                self.scheduler.wake();
                if !outcome.removed_indexes.is_empty() {
                    self.collect_garbage();
                }
                Ok(())
            }
            Err(nimbus_engine::EngineError::User(message)) => {
                Err(push_failed("SchemaValidationFailed", message))
            }
            Err(other) => Err(AppError::from_engine(self.name(), other)),
        }
    }

    /// Step 2 of an activation: checks every document of the staged snapshot against the
    /// new schema, then backfills the indexes being built, [`BACKFILL_CHUNK`] documents at
    /// a time in key order (each chunk is one short commit).
    async fn check_and_backfill(
        &self,
        deployment: &Arc<Deployment>,
        stage: &nimbus_engine::Staged,
    ) -> Result<(), AppError> {
        if let Some(schema) = deployment.schema.clone() {
            let snapshot = stage.snapshot.clone();
            let engine = self.engine().clone();
            tokio::task::spawn_blocking(move || validate_documents(&schema, &engine, &snapshot))
                .await
                .map_err(|e| AppError::Internal(format!("schema check task failed: {e}")))?
                .map_err(|(error, _)| push_failed("SchemaValidationFailed", error))?;
        }
        self.engine()
            .backfill_staged(stage, BACKFILL_CHUNK)
            .await
            .map_err(|e| AppError::from_engine(self.name(), e))
    }

    /// Deletes dropped indexes' entries in the background, in chunks.
    pub(crate) fn collect_garbage(&self) {
        let engine = self.engine().clone();
        let tenant = self.name().to_string();
        tokio::spawn(async move {
            if let Err(error) = engine.collect_garbage(GARBAGE_CHUNK).await {
                tracing::warn!(%tenant, %error, "deleting dropped indexes' entries stopped; it resumes at the next activation");
            }
        });
    }

    /// Commits `deployment`, whose schema is the current one's, on its own (an unstaged
    /// deploy that adds and removes no index). The caller holds the activation lock.
    pub(crate) async fn commit_deployment(
        &self,
        deployment: Arc<Deployment>,
    ) -> Result<(), AppError> {
        let request = DeployRequest {
            indexes: wanted_indexes(&deployment),
            globals: vec![(DEPLOYMENT_GLOBAL.to_string(), Some(deployment.to_bytes()?))],
            check: None,
            deployment: Some(deployment),
        };
        self.engine()
            .deploy(request)
            .await
            .map(|_| ())
            .map_err(|e| AppError::from_engine(self.name(), e))
    }

    fn staged_push(&self, token: &str) -> Result<Arc<Deployment>, AppError> {
        self.staged.lock().get(token).ok_or_else(|| {
            push_failed(
                "PushNotFound",
                "this push was not started here, or it expired; run the push again".into(),
            )
        })
    }
}

/// The indexes a deployment's schema declares, by table.
fn wanted_indexes(deployment: &Deployment) -> WantedIndexes {
    let mut indexes: WantedIndexes = BTreeMap::new();
    if let Some(schema) = &deployment.schema {
        for (table, definition) in &schema.tables {
            let entry = indexes.entry(table.clone()).or_default();
            for index in &definition.indexes {
                entry.insert(index.name.clone(), index.fields.clone());
            }
        }
    }
    indexes
}

fn push_failed(code: &'static str, message: String) -> AppError {
    AppError::PushFailed { code, message }
}

fn assemble_modules(
    current: &Deployment,
    pushed: Vec<PushModule>,
    unchanged: &[String],
) -> Result<Vec<StoredModule>, AppError> {
    let mut modules: BTreeMap<String, StoredModule> = BTreeMap::new();
    for module in pushed {
        if module.environment != "isolate" {
            return Err(push_failed(
                "UnsupportedModule",
                format!(
                    "{}: modules with \"use node\" (environment {:?}) cannot run in Nimbus; \
                     only the default JavaScript runtime is supported",
                    module.path, module.environment
                ),
            ));
        }
        if module.path.starts_with('/')
            || module.path.contains("..")
            || !module.path.ends_with(".js")
        {
            return Err(push_failed(
                "InvalidModules",
                format!("invalid module path {:?}", module.path),
            ));
        }
        modules.insert(
            module.path.clone(),
            StoredModule {
                path: module.path,
                source: module.source,
                source_map: module.source_map,
                environment: module.environment,
            },
        );
    }
    for path in unchanged {
        let Some(existing) = current.modules.iter().find(|m| &m.path == path) else {
            return Err(push_failed(
                "InvalidModules",
                format!("module {path:?} was sent as unchanged, but this tenant does not have it"),
            ));
        };
        modules.insert(path.clone(), existing.clone());
    }
    if modules.len() > MAX_MODULES {
        return Err(push_failed(
            "PushTooLarge",
            format!("more than {MAX_MODULES} modules"),
        ));
    }
    let bytes: usize = modules.values().map(|m| m.source.len()).sum();
    if bytes > MAX_PUSH_BYTES {
        return Err(push_failed(
            "PushTooLarge",
            format!("{bytes} bytes of module source, over the limit of {MAX_PUSH_BYTES}"),
        ));
    }
    Ok(modules.into_values().collect())
}

fn index_changes(snapshot: &Snapshot, schema: Option<&Schema>) -> Vec<IndexChange> {
    let catalog = &snapshot.catalog;
    let mut changes = Vec::new();
    let wanted: BTreeMap<(String, String), Vec<String>> = schema
        .map(|s| {
            s.tables
                .iter()
                .flat_map(|(table, t)| {
                    t.indexes
                        .iter()
                        .map(move |i| ((table.clone(), i.name.clone()), i.fields.clone()))
                })
                .collect()
        })
        .unwrap_or_default();
    for table in catalog.tables() {
        for name in table.indexes.keys() {
            if name == nimbus_engine::catalog::BY_ID
                || name == nimbus_engine::catalog::BY_CREATION_TIME
            {
                continue;
            }
            let Ok(info) = catalog.resolve_index(&table.name, name) else {
                continue;
            };
            let key = (table.name.clone(), name.clone());
            let same = wanted.get(&key).is_some_and(|declared| {
                nimbus_engine::catalog::user_index_fields(declared) == info.fields
            });
            if !same {
                let declared: Vec<String> = info
                    .fields
                    .iter()
                    .filter(|f| f.as_str() != "_creationTime" && f.as_str() != "_id")
                    .cloned()
                    .collect();
                changes.push(IndexChange {
                    table: table.name.clone(),
                    name: name.clone(),
                    fields: declared,
                    added: false,
                });
            }
        }
    }
    for ((table, name), fields) in wanted {
        let exists = catalog
            .resolve_index(&table, &name)
            .is_ok_and(|info| nimbus_engine::catalog::user_index_fields(&fields) == info.fields);
        if !exists {
            changes.push(IndexChange {
                table,
                name,
                fields,
                added: true,
            });
        }
    }
    changes
}

/// ID checks that accept any well-formed ID (used where no snapshot is at hand).
struct AnyIds;

impl nimbus_types::validator::IdCheck for AnyIds {
    fn is_id_of_table(&self, _id: &str, _table: &str) -> bool {
        true
    }
}

/// Checks every stored document against the schema; on failure returns the message and
/// the table.
fn validate_documents(
    schema: &Schema,
    engine: &nimbus_engine::TenantEngine,
    snapshot: &Snapshot,
) -> Result<(), (String, String)> {
    if !schema.schema_validation {
        return Ok(());
    }
    let ids = SnapshotIds(snapshot);
    for (table_name, table) in &schema.tables {
        if table.document_type.is_none() {
            continue;
        }
        let Some(number) = snapshot.catalog.table(table_name).map(|t| t.number) else {
            continue;
        };
        let mut refused: Option<String> = None;
        let walked = engine.visit_documents(snapshot, number, &mut |_, doc| {
            match schema.check_document(table_name, doc, &ids) {
                Ok(()) => Ok(()),
                Err(e) => {
                    let id = doc.get("_id").and_then(Value::as_str).unwrap_or("?");
                    refused = Some(format!(
                        "Schema validation failed.\nDocument with ID \"{id}\" in table \"{table_name}\" \
                         does not match the schema: {e}"
                    ));
                    // Stops the walk; the message above is what is reported.
                    Err(nimbus_engine::EngineError::User(String::new()))
                }
            }
        });
        if let Some(message) = refused {
            return Err((message, table_name.clone()));
        }
        walked.map_err(|e| (format!("reading {table_name}: {e}"), table_name.clone()))?;
    }
    Ok(())
}

struct SnapshotIds<'a>(&'a Snapshot);

impl nimbus_types::validator::IdCheck for SnapshotIds<'_> {
    fn is_id_of_table(&self, id: &str, table: &str) -> bool {
        let Ok(decoded) = self.0.id_codec.decode(id) else {
            return false;
        };
        self.0
            .catalog
            .table(table)
            .is_some_and(|t| t.number == decoded.table)
    }
}
