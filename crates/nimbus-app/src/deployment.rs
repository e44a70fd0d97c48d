//! A tenant's active code: modules, the function table with validators, the schema, and the
//! environment variables its functions see as `process.env`.
//!
//! Stored as the global [`DEPLOYMENT_GLOBAL`] in the tenant's own namespace, written in
//! the same commit that changes indexes, so code, schema and indexes switch together. An
//! environment change commits a new deployment of the same code (see `env.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use nimbus_runtime::{CodeId, FunctionKind, ModuleSet};
use nimbus_types::schema::Schema;
use nimbus_types::validator::Validator;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::AuthConfig;
use crate::error::AppError;

pub(crate) const DEPLOYMENT_GLOBAL: &str = "deployment";
const DEPLOYMENT_FORMAT: u32 = 1;

/// One registered function, as analyzed at push time.
#[derive(Debug, Clone)]
pub struct FunctionInfo {
    /// Module path with `.js` (`"orders.js"`).
    pub module_path: String,
    /// Export name (`"create"`, `"default"`).
    pub name: String,
    pub kind: FunctionKind,
    pub public: bool,
    /// Validator JSON text of the arguments.
    pub args_json: String,
    /// Validator JSON text of the return value, if declared.
    pub returns_json: Option<String>,
}

/// Hash of a module as the CLI computes it (`get_config_hashes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleHash {
    pub path: String,
    pub hash: String,
    pub environment: String,
}

/// A module's source as pushed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredModule {
    pub path: String,
    pub source: String,
    #[serde(rename = "sourceMap")]
    pub source_map: Option<String>,
    pub environment: String,
}

impl StoredModule {
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.source.as_bytes());
        if let Some(map) = &self.source_map {
            hasher.update(map.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

/// A function ready to call: its info and parsed validators.
pub(crate) struct CompiledFunction {
    pub info: FunctionInfo,
    pub args: Validator,
    pub returns: Option<Validator>,
}

/// The active code of a tenant.
///
/// **Code identity rule:** what runs is found by [`CodeId`], never by the tenant's name or
/// a counter: each activated push gets a fresh random one (see [`Deployment::activated`]),
/// so a runtime, a cached query result or a live query of one push is never used for
/// another push, nor for a tenant deleted and created again under the same name.
pub(crate) struct Deployment {
    /// Pushes activated so far (for people: stats and logs). Not an identity.
    pub generation: u64,
    pub code_id: CodeId,
    pub modules: Vec<StoredModule>,
    pub module_set: ModuleSet,
    pub functions: HashMap<(String, String), Arc<CompiledFunction>>,
    pub schema: Option<Arc<Schema>>,
    pub schema_json: Option<String>,
    pub crons_json: Option<String>,
    /// The crons of `crons.js`, checked against the functions (`scheduler/`).
    pub crons: Arc<Vec<crate::scheduler::CronJob>>,
    /// `auth.config.ts`'s default export as pushed, and the providers parsed from it.
    pub auth_json: Option<String>,
    pub auth: Arc<AuthConfig>,
    /// Environment variables (`process.env`), also in `module_set`.
    pub env: Arc<BTreeMap<String, String>>,
    /// What the texts above hold, counted once when built (see [`Deployment::memory_bytes`]).
    text_bytes: usize,
}

#[derive(Serialize, Deserialize)]
struct DeploymentRecord {
    format: u32,
    generation: u64,
    /// Hex of the code identity; absent in records written before it existed (those get a
    /// fresh one when loaded).
    #[serde(default)]
    code_id: Option<String>,
    modules: Vec<StoredModule>,
    functions: Vec<FunctionRecord>,
    schema_json: Option<String>,
    crons_json: Option<String>,
    /// Absent in records written before auth existed (no providers).
    #[serde(default)]
    auth_json: Option<String>,
    /// Absent in records written before environment variables existed (none set).
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// V8 code caches of the modules (base64), made at push time (`nimbus_runtime::
    /// CodeCache`). V8 checks each against its source, version and flags before use.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    code_cache: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct FunctionRecord {
    module_path: String,
    name: String,
    kind: String,
    public: bool,
    args_json: String,
    returns_json: Option<String>,
}

fn kind_name(kind: FunctionKind) -> &'static str {
    match kind {
        FunctionKind::Query => "query",
        FunctionKind::Mutation => "mutation",
        FunctionKind::Action => "action",
    }
}

fn kind_from_name(name: &str) -> Option<FunctionKind> {
    match name {
        "query" => Some(FunctionKind::Query),
        "mutation" => Some(FunctionKind::Mutation),
        "action" => Some(FunctionKind::Action),
        _ => None,
    }
}

impl Deployment {
    /// The deployment of a tenant that never pushed code.
    pub fn empty() -> Self {
        Deployment {
            generation: 0,
            code_id: CodeId::NONE,
            modules: Vec::new(),
            module_set: module_set(CodeId::NONE, &[], &Arc::default()),
            functions: HashMap::new(),
            schema: None,
            schema_json: None,
            crons_json: None,
            crons: Arc::default(),
            auth_json: None,
            auth: Arc::new(AuthConfig::default()),
            env: Arc::default(),
            text_bytes: 0,
        }
    }

    /// A deployment of analyzed code. `code_id` is [`CodeId::NONE`] until the push is
    /// activated ([`Deployment::activated`]), which also gives it the environment in force.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        generation: u64,
        code_id: CodeId,
        modules: Vec<StoredModule>,
        functions: Vec<FunctionInfo>,
        schema_json: Option<String>,
        crons_json: Option<String>,
        auth_json: Option<String>,
        env: Arc<BTreeMap<String, String>>,
    ) -> Result<Self, AppError> {
        let auth = match &auth_json {
            Some(text) => AuthConfig::parse(text).map_err(|message| AppError::PushFailed {
                code: "InvalidAuthConfig",
                message,
            })?,
            None => AuthConfig::default(),
        };
        let schema = match &schema_json {
            Some(text) => Some(Arc::new(Schema::parse_text(text).map_err(|e| {
                AppError::PushFailed {
                    code: "InvalidSchema",
                    message: e.to_string(),
                }
            })?)),
            None => None,
        };
        let mut table = HashMap::new();
        for info in functions {
            let args =
                Validator::parse_text(&info.args_json).map_err(|e| AppError::PushFailed {
                    code: "InvalidModule",
                    message: format!(
                        "{}:{}: invalid args validator: {e}",
                        info.module_path, info.name
                    ),
                })?;
            let returns = match &info.returns_json {
                Some(text) => {
                    Some(
                        Validator::parse_text(text).map_err(|e| AppError::PushFailed {
                            code: "InvalidModule",
                            message: format!(
                                "{}:{}: invalid returns validator: {e}",
                                info.module_path, info.name
                            ),
                        })?,
                    )
                }
                None => None,
            };
            table.insert(
                (info.module_path.clone(), info.name.clone()),
                Arc::new(CompiledFunction {
                    info,
                    args,
                    returns,
                }),
            );
        }
        // A push is refused for a bad cron; a stored deployment (checked when pushed, perhaps
        // by an older Nimbus) keeps its good crons.
        let strict = code_id == CodeId::NONE;
        let crons = match &crons_json {
            Some(text) => {
                crate::scheduler::parse_crons(text, &table, strict).map_err(|message| {
                    AppError::PushFailed {
                        code: "InvalidCrons",
                        message,
                    }
                })?
            }
            None => Vec::new(),
        };
        let mut deployment = Deployment {
            generation,
            code_id,
            module_set: module_set(code_id, &modules, &env),
            modules,
            functions: table,
            schema,
            schema_json,
            crons_json,
            crons: Arc::new(crons),
            auth_json,
            auth: Arc::new(auth),
            env,
            text_bytes: 0,
        };
        deployment.text_bytes = deployment.count_text_bytes();
        Ok(deployment)
    }

    /// Bytes this deployment holds in memory: its texts (see `count_text_bytes`) and the
    /// modules' code caches, which a runtime may add to after a call. Part of the tenant's
    /// memory ([`crate::Tenant::memory_bytes`]), which the instance's memory budget counts:
    /// a push of large modules with source maps holds megabytes per tenant, and the budget
    /// did not see them.
    pub fn memory_bytes(&self) -> usize {
        self.text_bytes + self.module_set.code_cache.bytes()
    }

    /// The texts held: each module's source twice (as pushed, with its source map, and in
    /// the module set the runtimes load), the environment (also twice), each function's
    /// validators (as text; parsed, about as much again), and the pushed schema, crons and
    /// auth texts. Counted from the lengths; allocation overhead is not counted.
    fn count_text_bytes(&self) -> usize {
        let modules: usize = self
            .modules
            .iter()
            .map(|m| {
                m.path.len()
                    + m.source.len()
                    + m.source_map.as_ref().map_or(0, String::len)
                    + m.environment.len()
            })
            .sum();
        let module_set: usize = self
            .module_set
            .modules
            .iter()
            .map(|(path, source)| path.len() + source.len())
            .sum();
        let env: usize = self.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        let functions: usize = self
            .functions
            .values()
            .map(|f| {
                let info = &f.info;
                info.module_path.len()
                    + info.name.len()
                    + 2 * (info.args_json.len() + info.returns_json.as_ref().map_or(0, String::len))
            })
            .sum();
        let texts: usize = [&self.schema_json, &self.crons_json, &self.auth_json]
            .into_iter()
            .map(|text| text.as_ref().map_or(0, |t| 2 * t.len()))
            .sum();
        modules + module_set + 2 * env + functions + texts
    }

    /// This staged push as it is activated: the next generation after `current`, a fresh
    /// code identity, and `current`'s environment (pushes do not change it).
    pub fn activated(&self, current: &Deployment) -> Deployment {
        self.with(current.generation + 1, current.env.clone())
    }

    /// The same code under other environment variables: a new code identity (runtimes bake
    /// `process.env` in, and cached results may depend on it), the same generation.
    pub fn with_env(&self, env: BTreeMap<String, String>) -> Deployment {
        self.with(self.generation, Arc::new(env))
    }

    fn with(&self, generation: u64, env: Arc<BTreeMap<String, String>>) -> Deployment {
        let code_id = CodeId::random();
        let mut deployment = Deployment {
            generation,
            code_id,
            modules: self.modules.clone(),
            // The same sources: their code caches (made at push time or by a runtime) hold.
            // A copy: the caches a runtime makes after a call are saved under the code id
            // (`saved_code_cache.rs`), so each identity makes and saves its own.
            module_set: ModuleSet {
                code_cache: Arc::new(self.module_set.code_cache.copy_for_new_code()),
                ..module_set(code_id, &self.modules, &env)
            },
            functions: self.functions.clone(),
            schema: self.schema.clone(),
            schema_json: self.schema_json.clone(),
            crons_json: self.crons_json.clone(),
            crons: self.crons.clone(),
            auth_json: self.auth_json.clone(),
            auth: self.auth.clone(),
            env,
            text_bytes: 0,
        };
        deployment.text_bytes = deployment.count_text_bytes();
        deployment
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, AppError> {
        let record = DeploymentRecord {
            format: DEPLOYMENT_FORMAT,
            generation: self.generation,
            code_id: Some(format!("{:032x}", self.code_id.0)),
            modules: self.modules.clone(),
            functions: self
                .functions
                .values()
                .map(|f| FunctionRecord {
                    module_path: f.info.module_path.clone(),
                    name: f.info.name.clone(),
                    kind: kind_name(f.info.kind).to_string(),
                    public: f.info.public,
                    args_json: f.info.args_json.clone(),
                    returns_json: f.info.returns_json.clone(),
                })
                .collect(),
            schema_json: self.schema_json.clone(),
            crons_json: self.crons_json.clone(),
            auth_json: self.auth_json.clone(),
            env: (*self.env).clone(),
            code_cache: self
                .module_set
                .code_cache
                .entries()
                .into_iter()
                .map(|(name, bytes)| (name, STANDARD.encode(bytes)))
                .collect(),
        };
        serde_json::to_vec(&record).map_err(|e| AppError::Internal(format!("deployment: {e}")))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AppError> {
        let record: DeploymentRecord = serde_json::from_slice(bytes)
            .map_err(|e| AppError::Internal(format!("stored deployment is unreadable: {e}")))?;
        if record.format != DEPLOYMENT_FORMAT {
            return Err(AppError::Internal(format!(
                "stored deployment has format {}, this Nimbus reads {DEPLOYMENT_FORMAT}",
                record.format
            )));
        }
        let mut functions = Vec::with_capacity(record.functions.len());
        for f in record.functions {
            let kind = kind_from_name(&f.kind).ok_or_else(|| {
                AppError::Internal(format!("stored function kind {:?} is unknown", f.kind))
            })?;
            functions.push(FunctionInfo {
                module_path: f.module_path,
                name: f.name,
                kind,
                public: f.public,
                args_json: f.args_json,
                returns_json: f.returns_json,
            });
        }
        let code_id = match &record.code_id {
            Some(hex) => CodeId(u128::from_str_radix(hex, 16).map_err(|e| {
                AppError::Internal(format!("stored deployment has a bad code id {hex:?}: {e}"))
            })?),
            None => CodeId::random(),
        };
        let deployment = Deployment::build(
            record.generation,
            code_id,
            record.modules,
            functions,
            record.schema_json,
            record.crons_json,
            record.auth_json,
            Arc::new(record.env),
        )?;
        for (name, encoded) in record.code_cache {
            // A cache is an optimization: one that cannot be read is compiled without.
            if let Ok(bytes) = STANDARD.decode(encoded) {
                deployment.module_set.code_cache.put(&name, bytes);
            }
        }
        Ok(deployment)
    }

    pub fn hashes(&self) -> Vec<ModuleHash> {
        self.modules
            .iter()
            .map(|m| ModuleHash {
                path: m.path.clone(),
                hash: m.hash(),
                environment: m.environment.clone(),
            })
            .collect()
    }
}

fn module_set(
    code_id: CodeId,
    modules: &[StoredModule],
    env: &Arc<BTreeMap<String, String>>,
) -> ModuleSet {
    let map: BTreeMap<String, String> = modules
        .iter()
        .map(|m| (m.path.clone(), m.source.clone()))
        .collect();
    ModuleSet::new(code_id, Arc::new(map), env.clone())
}

/// Splits a client's function path into (module path with `.js`, export name).
///
/// Accepts `orders:create`, `orders.js:create`, `orders` (default export),
/// `orders:default`, `dir/file:fn`.
pub(crate) fn canonical_path(path: &str) -> Option<(String, String)> {
    let path = path.trim();
    let (module, export) = match path.rsplit_once(':') {
        Some((module, export)) => (module, export),
        None => (path, "default"),
    };
    if module.is_empty() || export.is_empty() || module.starts_with('/') || module.contains("..") {
        return None;
    }
    let module = module.strip_suffix(".js").unwrap_or(module);
    Some((format!("{module}.js"), export.to_string()))
}

/// The function path a syscall names (`runQuery`, `scheduler.runAfter` ...) under `name`.
/// Otherwise, what it used that Nimbus does not support yet (`None`: nothing at all).
pub(crate) fn syscall_function_path(
    args: &serde_json::Value,
) -> Result<&str, Option<&'static str>> {
    match args.get("name").and_then(serde_json::Value::as_str) {
        Some(name) => Ok(name),
        None if args.get("functionHandle").is_some() => Err(Some("function handles")),
        None if args.get("reference").is_some() => Err(Some("component function references")),
        None => Err(None),
    }
}

/// The name Convex shows for a function: `orders:create`.
pub(crate) fn display_name(module_path: &str, export: &str) -> String {
    let module = module_path.strip_suffix(".js").unwrap_or(module_path);
    format!("{module}:{export}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths() {
        let expect = |p: &str, m: &str, e: &str| {
            assert_eq!(
                canonical_path(p),
                Some((m.to_string(), e.to_string())),
                "{p}"
            );
        };
        expect("orders:create", "orders.js", "create");
        expect("orders.js:create", "orders.js", "create");
        expect("orders", "orders.js", "default");
        expect("orders:default", "orders.js", "default");
        expect("dir/file:fn", "dir/file.js", "fn");
        assert_eq!(canonical_path(":x"), None);
        assert_eq!(canonical_path("../x:y"), None);
    }

    /// The modules' code caches are stored with the deployment and come back with it, and
    /// survive activation; a record without them (written before they existed) loads.
    #[test]
    fn code_caches_are_kept_with_the_deployment() {
        let module = StoredModule {
            path: "app.js".into(),
            source: "export const x = 1;".into(),
            source_map: None,
            environment: "isolate".into(),
        };
        let build = || {
            Deployment::build(
                3,
                CodeId(7),
                vec![module.clone()],
                Vec::new(),
                None,
                None,
                None,
                Arc::default(),
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let deployment = build();
        assert!(deployment
            .module_set
            .code_cache
            .put("app.js", vec![1, 2, 3, 255]));
        let bytes = deployment.to_bytes().unwrap_or_else(|e| panic!("{e}"));
        let loaded = Deployment::from_bytes(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            loaded.module_set.code_cache.get("app.js").as_deref(),
            Some(&[1u8, 2, 3, 255][..])
        );
        let activated = loaded.activated(&build());
        assert_ne!(activated.code_id, loaded.code_id);
        assert_eq!(activated.module_set.code_cache.len(), 1);

        let without = build().to_bytes().unwrap_or_else(|e| panic!("{e}"));
        assert!(!String::from_utf8_lossy(&without).contains("code_cache"));
        let loaded = Deployment::from_bytes(&without).unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.module_set.code_cache.is_empty());
    }
}
