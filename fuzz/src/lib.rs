//! A running server for the targets that fuzz Nimbus through its network surfaces
//! (`sync_session`, `http_api`): one in-process `Nimbus` with one tenant holding a small
//! pushed module, served by the real router on a loopback port, made once per fuzzing
//! process and shared by every input.
//!
//! Its data lives in `$NIMBUS_FUZZ_DATA_DIR` when set (`scripts/fuzz.sh` points it at a
//! tmpfs and removes it after each target: commits fsync, and a fuzzer commits a lot),
//! else in a temporary directory that is left behind.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use nimbus_app::{Nimbus, NimbusConfig, PushModule, PushRequest};
use parking_lot::Mutex;

/// The tenant every input talks to.
pub const TENANT: &str = "fz";

/// The instance admin key (at least 32 characters, as the server requires).
pub const INSTANCE_KEY: &str = "fuzz-instance-admin-key-0123456789abcdef";

/// Functions of the tenant's module `f.js`, as `f:<name>`. The wrapper has the shape the
/// Convex library gives registered functions; each function reaches the database through
/// the same syscalls bundled Convex code uses.
const MODULE: &str = r#"
function register(kind, handler) {
  const f = { [kind]: true, isPublic: true, exportArgs: () => '{"type":"any"}', exportReturns: () => "null" };
  f.invokeQuery = f.invokeMutation = async (argsJson) => {
    const args = JSON.parse(argsJson)[0];
    return JSON.stringify((await handler(args === undefined ? {} : args)) ?? null);
  };
  return f;
}
const sys = async (name, args) => JSON.parse(await Convex.asyncSyscall(name, JSON.stringify(args)));
export const count = register("isQuery", async () => sys("1.0/count", { table: "notes" }));
export const echo = register("isQuery", async (args) => args);
export const fail = register("isQuery", async () => { throw new Error("this query fails"); });
export const whoami = register("isQuery", async () => sys("1.0/getUserIdentity", {}));
export const add = register("isMutation", async (args) =>
  sys("1.0/insert", { table: "notes", value: { n: typeof args.n === "number" ? args.n : 0 } }));
export const reject = register("isMutation", async (args) => {
  const error = new Error("rejected");
  error.name = "ConvexError";
  error.data = JSON.stringify(args);
  throw error;
});
export const crash = register("isMutation", async () => { throw new Error("a plain failure"); });
"#;

pub struct Server {
    pub runtime: tokio::runtime::Runtime,
    pub nimbus: Arc<Nimbus>,
    pub router: axum::Router,
    pub addr: SocketAddr,
    /// The tenant's current admin key (an input may rotate it or delete the tenant).
    tenant_key: Mutex<String>,
    _data: Option<tempfile::TempDir>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The shared server, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(start)
}

fn start() -> Server {
    let (data_dir, temp) = match std::env::var_os("NIMBUS_FUZZ_DATA_DIR") {
        Some(dir) => (PathBuf::from(dir), None),
        None => {
            let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let (nimbus, router, addr) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local addr: {e}"));
        let mut config = NimbusConfig::new(data_dir, format!("http://{addr}"));
        config.admin_key = Some(INSTANCE_KEY.into());
        config.set_js_workers(2);
        // QuickJS, not V8: these targets fuzz the protocol and the API, and V8 keeps
        // pointers to the memory it mallocs inside its own mmap'd heap pages, which
        // LeakSanitizer does not scan, so every live isolate reads as a leak.
        config.pool.engine = nimbus_app::JsEngine::QuickJs;
        let nimbus = Nimbus::open(config)
            .await
            .unwrap_or_else(|e| panic!("open: {e}"));
        // Log polls answer at once: an input must not wait the production long-poll out.
        let server_config = nimbus_server::ServerConfig {
            log_poll_wait: std::time::Duration::from_millis(10),
            ..nimbus_server::ServerConfig::default()
        };
        let router = nimbus_server::router(nimbus.clone(), server_config);
        tokio::spawn(nimbus_server::serve(
            listener,
            router.clone(),
            std::future::pending(),
        ));
        (nimbus, router, addr)
    });
    let server = Server {
        runtime,
        nimbus,
        router,
        addr,
        tenant_key: Mutex::new(String::new()),
        _data: temp,
    };
    server.ensure_tenant();
    server
}

impl Server {
    /// The tenant's admin key now.
    pub fn tenant_key(&self) -> String {
        self.tenant_key.lock().clone()
    }

    /// An input rotated the tenant's key: this is the new one.
    pub fn set_tenant_key(&self, key: String) {
        *self.tenant_key.lock() = key;
    }

    /// Makes sure the tenant exists with its module pushed (an input may have deleted it).
    pub fn ensure_tenant(&self) {
        self.runtime.block_on(async {
            if self.nimbus.tenant_info(TENANT).await.is_ok() && !self.tenant_key().is_empty() {
                return;
            }
            let _ = self.nimbus.delete_tenant(TENANT).await;
            let created = self
                .nimbus
                .create_tenant(TENANT)
                .await
                .unwrap_or_else(|e| panic!("create the tenant: {e}"));
            self.set_tenant_key(created.admin_key);
            let tenant = self
                .nimbus
                .tenant(TENANT)
                .await
                .unwrap_or_else(|e| panic!("open the tenant: {e}"));
            let staged = tenant
                .start_push(PushRequest {
                    modules: vec![PushModule {
                        path: "f.js".into(),
                        source: MODULE.into(),
                        source_map: None,
                        environment: "isolate".into(),
                    }],
                    unchanged: vec![],
                    schema_source: None,
                    dry_run: false,
                })
                .await
                .unwrap_or_else(|e| panic!("push: {e}"));
            tenant
                .finish_push(&staged.token, false)
                .await
                .unwrap_or_else(|e| panic!("finish the push: {e}"));
        });
    }
}
