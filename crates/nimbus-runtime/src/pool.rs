//! The worker pool: threads that own tenant isolates and run calls.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};

use crate::action::{ActionState, ActionStep, OpResult};
use crate::isolate::{downcast_host, Isolate};
use crate::vm::Engine;
use crate::{
    CodeId, FunctionError, FunctionKind, Invocation, Outcome, PoolConfig, PoolError, RuntimeError,
    RuntimeLimits, SyscallHost,
};

type Job = Box<dyn FnOnce(&mut WorkerState) + Send>;

/// Messages about actions parked on a worker. They go through a channel of their own,
/// read before the job queue: they continue work already admitted. Each live action has
/// at most a resume and a drop in it, so it holds at most two per action the pool allows.
enum Control {
    Resume {
        id: u64,
        results: Vec<(u64, OpResult)>,
        reply: tokio::sync::oneshot::Sender<ActionStep>,
    },
    Drop {
        id: u64,
    },
}

/// Compare-and-swap attempts to claim the least busy home before settling for a plain
/// increment (each failed attempt means another call just claimed a worker).
const CLAIM_ATTEMPTS: usize = 8;

/// A fixed pool of JavaScript worker threads shared by all tenants.
///
/// Each worker has its own bounded queue, and each tenant a few *home* workers (a window
/// of `workers_per_tenant` consecutive workers starting at a hash of its name): a call
/// goes to the home worker with the shortest queue. A worker keeps the isolates of the
/// tenants it serves, so with a shared queue every worker would end up holding an isolate
/// of every busy tenant, and with more tenants than a worker caches, calls would keep
/// paying for a new isolate (loading the tenant's code). With homes, a tenant's isolates
/// live on `workers_per_tenant` workers, and the cache covers `workers / workers_per_tenant`
/// times more tenants. A hot tenant still spreads over several workers.
///
/// "Least busy" counts the call a worker is running, not only its queue: a worker stuck in
/// a long call (up to the CPU limit) with an empty queue must not look idle.
pub struct JsPool {
    /// One queue per worker; empty once the pool is shut down.
    senders: Vec<Sender<Job>>,
    /// Calls queued or running, per worker: raised before a call is queued, lowered by
    /// the worker when the call is done.
    load: Arc<Vec<AtomicUsize>>,
    /// Calls each worker's queue holds.
    per_worker: usize,
    workers_per_tenant: usize,
    threads: Vec<JoinHandle<()>>,
    /// One control queue per worker (see [`Control`]).
    controls: Vec<Sender<Control>>,
    /// Actions alive, and how many may be.
    actions: Arc<AtomicUsize>,
    max_actions: usize,
    next_action: AtomicU64,
    gauges: Vec<Arc<CacheGauge>>,
    engine: Engine,
}

/// The workers' runtime caches, summed ([`JsPool::cache_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub runtimes: usize,
    pub bytes: usize,
    pub evictions: u64,
}

struct Cached {
    tenant: Arc<str>,
    code_id: CodeId,
    isolate: Isolate,
    last_used: u64,
    /// Its heap as last measured (at load, then every [`MEASURE_EVERY`] calls: measuring
    /// walks the heap, so not on every call).
    bytes: usize,
    calls: u64,
}

/// Calls of a cached runtime between two measurements of its heap.
const MEASURE_EVERY: u64 = 32;

/// What a worker's runtime cache holds, shared with the pool for its metrics.
#[derive(Default)]
pub(crate) struct CacheGauge {
    pub runtimes: AtomicUsize,
    pub bytes: AtomicUsize,
    pub evictions: AtomicU64,
}

struct WorkerState {
    cache: Vec<Cached>,
    max_cached: usize,
    max_cached_bytes: usize,
    /// Sum of `bytes` over `cache`.
    cached_bytes: usize,
    gauge: Arc<CacheGauge>,
    engine: Engine,
    limits: RuntimeLimits,
    clock: u64,
    /// The pool's load counters and this worker's index in them.
    load: Arc<Vec<AtomicUsize>>,
    index: usize,
    /// Whether the current job already lowered this worker's load.
    released: bool,
    /// Actions parked here between steps, by id.
    actions: HashMap<u64, ActionState>,
    /// The runtime (by its code) to make code caches of once the current job replied.
    code_caches_due: Option<CodeId>,
    /// A blank runtime made ahead of need (`Isolate::blank`): the next runtime this worker
    /// makes for a tenant starts from it, so a tenant's first call does not wait for an
    /// engine, a context and Nimbus's globals to be set up. Made when the worker starts and
    /// again after the reply of a job that used it; one per worker, outside the cache's
    /// bounds (it holds a runtime's baseline: about 1 MiB in V8).
    spare: Option<Isolate>,
    /// Whether to make a spare after this job's reply: set when a runtime was made (from
    /// the spare or, if there was none or it did not fit, afresh). A worker whose spare
    /// cannot be made does not try again after every job, only after the next runtime.
    spare_due: bool,
}

impl WorkerState {
    /// Lowers this worker's load for the current job. A job calls it before it replies:
    /// the caller may dispatch its next call the moment the reply arrives, and a worker
    /// that still counted the finished call would tie with a worker stuck in a long call
    /// (so the next call could queue behind that one).
    fn release(&mut self) {
        if !self.released {
            self.released = true;
            self.load[self.index].fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn run(
        &mut self,
        inv: &Invocation,
        host: Box<dyn SyscallHost>,
    ) -> (Box<dyn SyscallHost>, Outcome) {
        self.clock += 1;
        // Drop this tenant's isolates of other code (an older push, or a deleted tenant of
        // the same name). Only the code identity finds an isolate: names are reused.
        let code_id = inv.modules.code_id;
        let before = self.cache.len();
        self.cache
            .retain(|c| !(c.tenant == inv.tenant && c.code_id != code_id));
        if self.cache.len() != before {
            self.recount();
        }
        // A call's own memory limit: made with it, or replaced when an engine cannot change
        // it in place (V8).
        let mut limits = self.limits.clone();
        if let Some(call) = inv.limits {
            limits.memory_bytes = call.memory_bytes;
        }
        let mut position = self.cache.iter().position(|c| c.code_id == code_id);
        if let Some(index) = position {
            if !self.cache[index]
                .isolate
                .accepts_memory_limit(limits.memory_bytes)
            {
                self.cache.swap_remove(index);
                self.recount();
                position = None;
            }
        }
        let index = match position {
            Some(index) => index,
            None => {
                let isolate = match self.new_runtime(inv, &limits) {
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
                let bytes = isolate.heap_bytes();
                self.make_room(1, bytes);
                self.cache.push(Cached {
                    tenant: inv.tenant.clone(),
                    code_id,
                    isolate,
                    last_used: 0,
                    bytes,
                    calls: 0,
                });
                self.recount();
                self.cache.len() - 1
            }
        };
        let cached = &mut self.cache[index];
        cached.last_used = self.clock;
        cached.calls += 1;
        let (host, outcome) = cached.isolate.invoke(inv, host);
        if outcome.result.is_ok() && cached.isolate.wants_code_caches() {
            self.code_caches_due = Some(code_id);
        }
        if cached.isolate.broken {
            self.cache.swap_remove(index);
            self.recount();
        } else if cached.calls.is_multiple_of(MEASURE_EVERY) {
            // A runtime's heap grows with what its tenant's code keeps; the cache stays
            // within its bytes by dropping the least recently used others.
            cached.bytes = cached.isolate.heap_bytes();
            self.recount();
            self.make_room(0, 0);
        }
        (host, outcome)
    }

    /// A runtime for `inv`'s push: the spare if it fits the call's limits, else a new one.
    fn new_runtime(&mut self, inv: &Invocation, limits: &RuntimeLimits) -> Result<Isolate, String> {
        Isolate::from_spare(
            self.take_spare(),
            self.engine,
            &inv.modules,
            &inv.system_env,
            limits,
        )
    }

    /// The spare, for a runtime about to be made (a new spare is then due).
    fn take_spare(&mut self) -> Option<Isolate> {
        self.spare_due = true;
        self.spare.take()
    }

    /// A new spare runtime if one is due and the worker has none (a failure only means
    /// none).
    fn make_spare(&mut self) {
        if std::mem::take(&mut self.spare_due) && self.spare.is_none() {
            self.spare = Isolate::blank(self.engine, &self.limits).ok();
        }
    }

    /// Work for after a job's reply: the code caches of a runtime whose first call just
    /// succeeded, and a spare runtime in place of one just used.
    ///
    /// The worker does not count as busy meanwhile (a millisecond or two): a worker that did
    /// would tie with one stuck in a long call, and a tenant's next call could then queue
    /// behind that call (seen: a bystander waiting out another tenant's 1 s loop).
    fn after_reply(&mut self) {
        self.make_code_caches();
        self.make_spare();
    }

    /// Makes the code caches of the runtime whose first call just succeeded (see
    /// `crate::code_cache`).
    fn make_code_caches(&mut self) {
        let Some(code_id) = self.code_caches_due.take() else {
            return;
        };
        if let Some(cached) = self.cache.iter_mut().find(|c| c.code_id == code_id) {
            cached.isolate.make_code_caches();
        }
    }

    /// Drops least recently used runtimes until `entries` more and `bytes` more fit (the
    /// runtime just used, the most recent, is never dropped here).
    fn make_room(&mut self, entries: usize, bytes: usize) {
        while !self.cache.is_empty()
            && (self.cache.len() + entries > self.max_cached
                || self.cached_bytes + bytes > self.max_cached_bytes)
        {
            let Some((oldest, _)) = self
                .cache
                .iter()
                .enumerate()
                .filter(|(_, c)| c.last_used != self.clock)
                .min_by_key(|(_, c)| c.last_used)
            else {
                break;
            };
            let dropped = self.cache.swap_remove(oldest);
            self.cached_bytes -= dropped.bytes.min(self.cached_bytes);
            self.gauge.evictions.fetch_add(1, Ordering::Relaxed);
        }
        self.recount();
    }

    /// Recomputes the cache's byte total and publishes both gauges.
    fn recount(&mut self) {
        self.cached_bytes = self.cache.iter().map(|c| c.bytes).sum();
        self.gauge
            .runtimes
            .store(self.cache.len(), Ordering::Relaxed);
        self.gauge.bytes.store(self.cached_bytes, Ordering::Relaxed);
    }
}

fn worker(
    receiver: Receiver<Job>,
    control: Receiver<Control>,
    load: Arc<Vec<AtomicUsize>>,
    index: usize,
    (max_cached, max_cached_bytes, gauge): (usize, usize, Arc<CacheGauge>),
    (engine, limits): (Engine, RuntimeLimits),
) {
    let mut state = WorkerState {
        cache: Vec::new(),
        max_cached: max_cached.max(1),
        max_cached_bytes: max_cached_bytes.max(1),
        cached_bytes: 0,
        gauge,
        engine,
        limits,
        clock: 0,
        load,
        index,
        released: false,
        actions: HashMap::new(),
        code_caches_due: None,
        spare: None,
        spare_due: true,
    };
    state.make_spare();
    loop {
        // Parked actions first: they continue work that was already admitted.
        let next = match control.try_recv() {
            Ok(message) => Next::Control(message),
            Err(_) => select! {
                recv(control) -> message => message.map_or(Next::Stop, Next::Control),
                recv(receiver) -> job => job.map_or(Next::Stop, Next::Job),
            },
        };
        match next {
            Next::Control(message) => state.control(message),
            Next::Job(job) => {
                state.released = false;
                // A panic fails one call (its reply channel is dropped); the worker carries
                // on with fresh isolates, since a panic may have left one half-updated.
                if catch_unwind(AssertUnwindSafe(|| job(&mut state))).is_err() {
                    tracing::error!(
                        "a JavaScript job panicked; dropping this worker's cached isolates"
                    );
                    state.cache.clear();
                    state.recount();
                }
                state.release();
                // After the reply: the caller does not wait for it.
                state.after_reply();
            }
            Next::Stop => break,
        }
    }
}

enum Next {
    Control(Control),
    Job(Job),
    Stop,
}

impl WorkerState {
    /// Resumes or drops a parked action.
    fn control(&mut self, message: Control) {
        match message {
            Control::Drop { id } => {
                self.actions.remove(&id);
            }
            Control::Resume { id, results, reply } => {
                let action = self.actions.remove(&id);
                let stepped =
                    action.map(|action| catch_unwind(AssertUnwindSafe(|| action.resume(results))));
                // Raised by `ActionHandle::resume` for this message.
                self.load[self.index].fetch_sub(1, Ordering::AcqRel);
                let Some(stepped) = stepped else {
                    // Dropped meanwhile: the reply is dropped, and the driver sees a failure.
                    return;
                };
                match stepped {
                    Ok((parked, step)) => self.park(id, parked, step, reply),
                    Err(_) => tracing::error!("an action step panicked; the action is dropped"),
                }
            }
        }
    }

    /// Keeps a waiting action and answers its driver; an action nobody waits for any more
    /// (its driver gave up) is dropped at once.
    fn park(
        &mut self,
        id: u64,
        parked: Option<ActionState>,
        step: ActionStep,
        reply: tokio::sync::oneshot::Sender<ActionStep>,
    ) {
        if reply.send(step).is_ok() {
            if let Some(action) = parked {
                self.actions.insert(id, action);
            }
        }
    }
}

/// A running action (see `action.rs`): resume it with operation results until it is done.
/// Dropping the handle drops the action, wherever it is.
pub struct ActionHandle {
    id: u64,
    /// The worker the action lives on, once its first step has been answered.
    worker: Option<usize>,
    /// Every worker's control queue (ids are unique in the pool, so a drop sent to every
    /// worker, for an action whose worker is not known yet, drops only that action).
    controls: Vec<Sender<Control>>,
    load: Arc<Vec<AtomicUsize>>,
    actions: Arc<AtomicUsize>,
    /// The action ended (nothing of it is parked on any worker).
    finished: bool,
}

impl ActionHandle {
    /// Hands results to the action and waits for its next step.
    pub async fn resume(&mut self, results: Vec<(u64, OpResult)>) -> Result<ActionStep, PoolError> {
        let Some(worker) = self.worker.filter(|_| !self.finished) else {
            return Err(PoolError::WorkerFailed);
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.load[worker].fetch_add(1, Ordering::AcqRel);
        let message = Control::Resume {
            id: self.id,
            results,
            reply,
        };
        if self.controls[worker].try_send(message).is_err() {
            // Not `finished`: dropping the handle still asks the worker to drop the action.
            self.load[worker].fetch_sub(1, Ordering::AcqRel);
            return Err(PoolError::WorkerFailed);
        }
        let step = answer.await.map_err(|_| PoolError::WorkerFailed);
        if !matches!(step, Ok(ActionStep::Pending(_))) {
            self.finished = true;
        }
        step
    }
}

impl Drop for ActionHandle {
    fn drop(&mut self) {
        if !self.finished {
            match self.worker {
                Some(worker) => {
                    let _ = self.controls[worker].try_send(Control::Drop { id: self.id });
                }
                // Dropped while its first step was under way: wherever it was parked, it
                // goes (a worker that has not run the step yet finds nothing, and the
                // step's answer then finds nobody waiting, so the action is not parked).
                None => {
                    for control in &self.controls {
                        let _ = control.try_send(Control::Drop { id: self.id });
                    }
                }
            }
        }
        self.actions.fetch_sub(1, Ordering::AcqRel);
    }
}

impl JsPool {
    pub fn new(config: PoolConfig) -> Result<JsPool, RuntimeError> {
        let workers = config.workers.max(1);
        let per_worker = config.queue_capacity.max(1).div_ceil(workers);
        let mut senders = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        let mut controls = Vec::with_capacity(workers);
        let max_actions = config.max_actions.max(1);
        let load: Arc<Vec<AtomicUsize>> =
            Arc::new((0..workers).map(|_| AtomicUsize::new(0)).collect());
        let gauges: Vec<Arc<CacheGauge>> = (0..workers).map(|_| Arc::default()).collect();
        for (n, gauge) in gauges.iter().enumerate() {
            let (sender, receiver) = bounded::<Job>(per_worker);
            let (control, control_receiver) = bounded::<Control>(2 * max_actions);
            let limits = (config.engine, config.limits.clone());
            let cache_bounds = (
                config.isolates_per_worker,
                config.cache_bytes_per_worker,
                gauge.clone(),
            );
            let worker_load = load.clone();
            let thread = std::thread::Builder::new()
                .name(format!("nimbus-js-{n}"))
                // Each runtime's own stack limit (QuickJS's, V8's) is set below the worker's
                // frame; give the thread room above it.
                .stack_size(8 << 20)
                .spawn(move || {
                    worker(
                        receiver,
                        control_receiver,
                        worker_load,
                        n,
                        cache_bounds,
                        limits,
                    )
                })
                .map_err(|e| RuntimeError::Start(e.to_string()))?;
            senders.push(sender);
            controls.push(control);
            threads.push(thread);
        }
        Ok(JsPool {
            senders,
            load,
            per_worker,
            workers_per_tenant: config.workers_per_tenant.clamp(1, workers),
            threads,
            controls,
            actions: Arc::new(AtomicUsize::new(0)),
            max_actions,
            next_action: AtomicU64::new(0),
            gauges,
            engine: config.engine,
        })
    }

    /// The engine the workers run functions in.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Runtimes cached on all workers, their bytes, and how many were dropped to make room
    /// since the start.
    pub fn cache_stats(&self) -> CacheStats {
        let mut stats = CacheStats::default();
        for gauge in &self.gauges {
            stats.runtimes += gauge.runtimes.load(Ordering::Relaxed);
            stats.bytes += gauge.bytes.load(Ordering::Relaxed);
            stats.evictions += gauge.evictions.load(Ordering::Relaxed);
        }
        stats
    }

    /// Drops every cached isolate of `tenant` (it was deleted). Each worker drops them
    /// before its next call; a worker whose queue is full drops them when a call of the
    /// tenant's name reaches it (isolates of other code are dropped then) or when its LRU
    /// evicts them. Either way a cached isolate is only ever used for the exact code it was
    /// built from ([`CodeId`]), so this frees memory; it is not what keeps tenants apart.
    pub fn forget_tenant(&self, tenant: &str) {
        let tenant: Arc<str> = Arc::from(tenant);
        for (w, sender) in self.senders.iter().enumerate() {
            let tenant = tenant.clone();
            self.load[w].fetch_add(1, Ordering::AcqRel);
            let job: Job = Box::new(move |state: &mut WorkerState| {
                state.cache.retain(|c| c.tenant != tenant);
                state.recount();
            });
            if sender.try_send(job).is_err() {
                self.load[w].fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Isolates cached on all workers for `tenant` (waits for each worker to answer).
    pub async fn cached_isolates(&self, tenant: &str) -> Result<usize, PoolError> {
        let tenant: Arc<str> = Arc::from(tenant);
        self.count_on_workers(move |state| {
            state.cache.iter().filter(|c| c.tenant == tenant).count()
        })
        .await
    }

    /// Actions parked on the workers, waiting between steps (waits for each worker to
    /// answer, after what is queued before).
    pub async fn parked_actions(&self) -> Result<usize, PoolError> {
        self.count_on_workers(|state| state.actions.len()).await
    }

    /// Sums what `count` finds on every worker.
    async fn count_on_workers(
        &self,
        count: impl Fn(&WorkerState) -> usize + Clone + Send + 'static,
    ) -> Result<usize, PoolError> {
        let mut total = 0;
        for (w, sender) in self.senders.iter().enumerate() {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let count = count.clone();
            self.load[w].fetch_add(1, Ordering::AcqRel);
            let job: Job = Box::new(move |state: &mut WorkerState| {
                let _ = reply.send(count(state));
            });
            if sender.try_send(job).is_err() {
                self.load[w].fetch_sub(1, Ordering::AcqRel);
                return Err(PoolError::QueueFull(self.per_worker));
            }
            total += answer.await.map_err(|_| PoolError::WorkerFailed)?;
        }
        Ok(total)
    }

    /// Number of calls waiting for a worker.
    pub fn queued(&self) -> usize {
        self.senders.iter().map(Sender::len).sum()
    }

    /// The tenant's home workers: a window of consecutive workers starting at a hash of
    /// its name (stable for the life of the process).
    fn homes(&self, tenant: &str) -> impl Iterator<Item = usize> + '_ {
        use std::hash::{Hash as _, Hasher as _};
        let workers = self.senders.len();
        // SipHash with fixed keys: the same tenant always gets the same homes.
        let mut hasher = std::hash::DefaultHasher::new();
        tenant.hash(&mut hasher);
        let start = (hasher.finish() % workers.max(1) as u64) as usize;
        (0..self.workers_per_tenant).map(move |i| (start + i) % workers)
    }

    /// Claims the least busy of `homes` (skipping `full`), raising its load. The claim is a
    /// compare-and-swap against the load that was read, so two calls dispatched at the same
    /// moment cannot both take a worker for idle: the second sees the first's claim and goes
    /// elsewhere (else a quiet tenant's call could land behind a long call that was being
    /// dispatched at the same time). Ties go to the first home in the window.
    fn claim_least_busy(&self, homes: &[usize], full: &[usize]) -> Option<usize> {
        let least = || {
            homes
                .iter()
                .filter(|w| !full.contains(w))
                .map(|&w| (w, self.load[w].load(Ordering::Acquire)))
                .min_by_key(|&(_, load)| load)
        };
        for _ in 0..CLAIM_ATTEMPTS {
            let (w, seen) = least()?;
            if self.load[w]
                .compare_exchange(seen, seen + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(w);
            }
        }
        // Under heavy contention: the least busy as last seen, without the guarantee.
        let (w, _) = least()?;
        self.load[w].fetch_add(1, Ordering::AcqRel);
        Some(w)
    }

    /// Runs a call on a worker; resolves when it finished.
    pub async fn invoke<H: SyscallHost>(
        &self,
        inv: Invocation,
        host: H,
    ) -> Result<(H, Outcome), PoolError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let tenant = inv.tenant.clone();
        let job: Job = Box::new(move |state: &mut WorkerState| {
            let (host, outcome) = state.run(&inv, Box::new(host));
            state.release();
            if let Some(host) = downcast_host::<H>(host) {
                let _ = reply.send((host, outcome));
            }
        });
        self.dispatch(&tenant, job)?;
        answer.await.map_err(|_| PoolError::WorkerFailed)
    }

    /// Starts an action on one of its tenant's home workers, in an isolate of its own, and
    /// runs its first step. The handle resumes it (on the same worker) after that.
    pub async fn start_action(
        &self,
        inv: Invocation,
    ) -> Result<(ActionHandle, ActionStep), PoolError> {
        if inv.kind != FunctionKind::Action {
            return Err(PoolError::WorkerFailed);
        }
        if self.actions.fetch_add(1, Ordering::AcqRel) >= self.max_actions {
            self.actions.fetch_sub(1, Ordering::AcqRel);
            return Err(PoolError::TooManyActions(self.max_actions));
        }
        let id = self.next_action.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let tenant = inv.tenant.clone();
        let job: Job = Box::new(move |state: &mut WorkerState| {
            // An action has an isolate of its own: the worker's spare, if it has one (the
            // next is made after the reply).
            let spare = state.take_spare();
            let (parked, step) = ActionState::start(state.engine, spare, inv, &state.limits);
            state.release();
            // Kept only if its driver still waits for it.
            if reply.send((state.index, step)).is_ok() {
                if let Some(action) = parked {
                    state.actions.insert(id, action);
                }
            }
        });
        let handle_parts = self.dispatch(&tenant, job);
        if let Err(error) = handle_parts {
            self.actions.fetch_sub(1, Ordering::AcqRel);
            return Err(error);
        }
        // Made before waiting, so that a caller giving up while the first step runs
        // still drops the action (see `Drop`).
        let mut handle = ActionHandle {
            id,
            worker: None,
            controls: self.controls.clone(),
            load: self.load.clone(),
            actions: self.actions.clone(),
            finished: false,
        };
        let (worker, step) = answer.await.map_err(|_| PoolError::WorkerFailed)?;
        handle.worker = Some(worker);
        handle.finished = !matches!(step, ActionStep::Pending(_));
        Ok((handle, step))
    }

    /// Queues a job on the least busy of the tenant's home workers.
    fn dispatch(&self, tenant: &str, job: Job) -> Result<(), PoolError> {
        if self.senders.is_empty() {
            return Err(PoolError::ShutDown);
        }
        // The least busy home first; the others if its queue filled up meanwhile.
        let homes: Vec<usize> = self.homes(tenant).collect();
        let mut full: Vec<usize> = Vec::new();
        let mut job = Some(job);
        while let Some(w) = self.claim_least_busy(&homes, &full) {
            let Some(next) = job.take() else { break };
            match self.senders[w].try_send(next) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => {
                    self.load[w].fetch_sub(1, Ordering::AcqRel);
                    full.push(w);
                    job = Some(back);
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.load[w].fetch_sub(1, Ordering::AcqRel);
                    return Err(PoolError::ShutDown);
                }
            }
        }
        // What this tenant's calls could have queued: its homes' queues.
        Err(PoolError::QueueFull(
            self.per_worker * self.workers_per_tenant,
        ))
    }
}

impl Drop for JsPool {
    fn drop(&mut self) {
        self.senders.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
