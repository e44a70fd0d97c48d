//! The worker pool: threads that own tenant isolates and run calls.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::isolate::{downcast_host, Isolate};
use crate::{
    FunctionError, Invocation, Outcome, PoolConfig, PoolError, RuntimeError, RuntimeLimits,
    SyscallHost,
};

type Job = Box<dyn FnOnce(&mut WorkerState) + Send>;

/// A fixed pool of JavaScript worker threads shared by all tenants.
pub struct JsPool {
    sender: Option<Sender<Job>>,
    capacity: usize,
    threads: Vec<JoinHandle<()>>,
}

struct Cached {
    tenant: Arc<str>,
    generation: u64,
    isolate: Isolate,
    last_used: u64,
}

struct WorkerState {
    cache: Vec<Cached>,
    max_cached: usize,
    limits: RuntimeLimits,
    clock: u64,
}

impl WorkerState {
    fn run(
        &mut self,
        inv: &Invocation,
        host: Box<dyn SyscallHost>,
    ) -> (Box<dyn SyscallHost>, Outcome) {
        self.clock += 1;
        // Drop this tenant's isolates of older code.
        self.cache
            .retain(|c| !(c.tenant == inv.tenant && c.generation != inv.modules.generation));
        let position = self
            .cache
            .iter()
            .position(|c| c.tenant == inv.tenant && c.generation == inv.modules.generation);
        let index = match position {
            Some(index) => index,
            None => {
                let isolate = match Isolate::new(&inv.modules, &self.limits) {
                    Ok(isolate) => isolate,
                    Err(message) => {
                        let outcome = Outcome {
                            result: Err(FunctionError::Internal(format!(
                                "cannot load the tenant's code: {message}"
                            ))),
                            log_lines: Vec::new(),
                            cpu_time: std::time::Duration::ZERO,
                        };
                        return (host, outcome);
                    }
                };
                if self.cache.len() >= self.max_cached {
                    if let Some(oldest) = self
                        .cache
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, c)| c.last_used)
                        .map(|(i, _)| i)
                    {
                        self.cache.swap_remove(oldest);
                    }
                }
                self.cache.push(Cached {
                    tenant: inv.tenant.clone(),
                    generation: inv.modules.generation,
                    isolate,
                    last_used: 0,
                });
                self.cache.len() - 1
            }
        };
        let cached = &mut self.cache[index];
        cached.last_used = self.clock;
        let (host, outcome) = cached.isolate.invoke(inv, host);
        if cached.isolate.broken {
            self.cache.swap_remove(index);
        }
        (host, outcome)
    }
}

fn worker(receiver: Receiver<Job>, max_cached: usize, limits: RuntimeLimits) {
    let mut state = WorkerState {
        cache: Vec::new(),
        max_cached: max_cached.max(1),
        limits,
        clock: 0,
    };
    while let Ok(job) = receiver.recv() {
        // A panic fails one call (its reply channel is dropped); the worker carries on
        // with fresh isolates, since a panic may have left one half-updated.
        if catch_unwind(AssertUnwindSafe(|| job(&mut state))).is_err() {
            tracing::error!("a JavaScript job panicked; dropping this worker's cached isolates");
            state.cache.clear();
        }
    }
}

impl JsPool {
    pub fn new(config: PoolConfig) -> Result<JsPool, RuntimeError> {
        let capacity = config.queue_capacity.max(1);
        let (sender, receiver) = bounded::<Job>(capacity);
        let mut threads = Vec::with_capacity(config.workers.max(1));
        for n in 0..config.workers.max(1) {
            let receiver = receiver.clone();
            let limits = config.limits.clone();
            let max_cached = config.isolates_per_worker;
            let thread = std::thread::Builder::new()
                .name(format!("nimbus-js-{n}"))
                // QuickJS's own stack limit is set per runtime; give the thread room above it.
                .stack_size(8 << 20)
                .spawn(move || worker(receiver, max_cached, limits))
                .map_err(|e| RuntimeError::Start(e.to_string()))?;
            threads.push(thread);
        }
        Ok(JsPool {
            sender: Some(sender),
            capacity,
            threads,
        })
    }

    /// Number of calls waiting for a worker.
    pub fn queued(&self) -> usize {
        self.sender.as_ref().map_or(0, Sender::len)
    }

    /// Runs a call on a worker; resolves when it finished.
    pub async fn invoke<H: SyscallHost>(
        &self,
        inv: Invocation,
        host: H,
    ) -> Result<(H, Outcome), PoolError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |state: &mut WorkerState| {
            let (host, outcome) = state.run(&inv, Box::new(host));
            if let Some(host) = downcast_host::<H>(host) {
                let _ = reply.send((host, outcome));
            }
        });
        let Some(sender) = &self.sender else {
            return Err(PoolError::ShutDown);
        };
        match sender.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(PoolError::QueueFull(self.capacity)),
            Err(TrySendError::Disconnected(_)) => return Err(PoolError::ShutDown),
        }
        answer.await.map_err(|_| PoolError::WorkerFailed)
    }
}

impl Drop for JsPool {
    fn drop(&mut self) {
        self.sender = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
