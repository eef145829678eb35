//! The server: a pinned mio event loop, the scoring stage inline or on a pinned
//! worker behind SPSC rings, per-connection order, bounded everything, drain.
//!
//! # Files
//! `event_loop` (the loop and its rules), `admission` (accept, pending pool,
//! refusals, close), `reading` (socket reads, the hello, admitting requests),
//! `shm_sessions` (shared-memory sessions: granting, reading their request
//! rings, doorbells), `routing` (stage exchange, answers to connections,
//! flush), `drain`; `stage` and `worker` score; `reload` swaps models.
//!
//! # Order and bounds
//! Every request read becomes one job, valid or not, and every job flows through
//! the same FIFO path (the inline stage, or the request ring, worker and
//! response ring), so responses leave each connection in request order and
//! error answers never overtake model answers. A connection may have
//! `max_inflight` runnable requests in flight; beyond that, requests are
//! answered `ML_ERR_OVERLOADED` (in order) for up to one read buffer more, and
//! then the connection is not read until answers drain (backpressure). That
//! hard limit sizes the rings: `max_connections × hard limit` slots. A connection
//! may close with requests in flight and its slot be reused at once, while its
//! jobs are still in the pipeline: so the stage itself counts every job from its
//! push until its answer is popped (orphans included) and takes no job past the
//! rings' capacity (the reader waits, as on a full inline batch); a push never
//! fails. A connection whose unsent answers exceed `write_buffer_limit` is a slow reader: it is disconnected with a log line; others never wait on it.
//!
//! # Admission
//! A new connection is *pending* until its hello is accepted: pending ones live
//! in their own pool of `max_pending`, apart from the `max_connections`
//! established ones, so sockets that connect and say nothing can never take a
//! serving slot. When the pool is full the oldest pending connection is dropped
//! for the new one (a flood cannot lock real clients out: a client that sends
//! its hello right after connecting is established at once); one that sends no
//! hello within 5 s is closed. The hello is refused `ML_ERR_TOO_MANY_CONNECTIONS`
//! only when the established slots are full. Floods are logged once a second.
//! When `accept` fails for want of descriptors (`EMFILE`/`ENFILE`), the
//! edge-triggered listener would not report the waiting clients again, so
//! accepting is retried every 50 ms until it succeeds (logged once per episode).

mod admission;
pub mod config;
mod direct_read;
mod drain;
mod event_loop;
mod reading;
pub mod reload;
mod routing;
mod shm_sessions;
pub mod stage;
mod tcp;
mod tuning;
mod worker;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mio::net::{TcpListener, UnixListener};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

pub use config::{Mode, PollMode, ServeOptions, ServerConfig, TcpListen};
use stage::{Done, Job, Scorer};
use worker::Worker;

use crate::clock::now_ns;
use crate::engine::{Engine, EngineError, ModelInfo};
use crate::ratelog::RateLimited;
use crate::stats::{Stats, StatsReport};
use crate::transport::{Conn, ListenError, SocketFile, READ_BUFFER};
use crate::wire::{Limits, ServerInfo, REQUEST_SIZE};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(usize::MAX);
/// The TCP listener (`--listen-tcp`).
const TCP_LISTENER: Token = Token(usize::MAX - 1);
/// Inline mode scores at most this many jobs at once (the buffer never grows).
const INLINE_JOBS: usize = 1024;
/// How often hot threads fold their stats into the shared copy.
const PUBLISH_EVERY_NS: u64 = 200_000_000;
/// `read()`s of one connection per loop iteration (each up to 64 KiB, 337 requests).
const READS_PER_TURN: usize = 4;
/// How long a new connection may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `accept` is retried after it failed for want of descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// Doorbell tokens of shared-memory sessions: `SHM_DOORBELL + slot` (sockets are `slot + 1`).
const SHM_DOORBELL: usize = 1 << 40;
const _: () = assert!(usize::BITS >= 64, "tokens: 64-bit Linux only (x86-64, AArch64)");
/// How long the loop blocks while a session has requests it cannot take yet
/// (its client is not reading answers): no doorbell will say when it can.
const SHM_STALLED_POLL: Duration = Duration::from_millis(1);
/// How long a shared-memory session the server ended (not the client) keeps its
/// answers readable before its pages are given back.
const SHM_LINGER: Duration = Duration::from_secs(1);
/// How long a drain may take before unsent answers are given up.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("inference worker: {0}")]
    Worker(String),
    /// `--lock-memory` or `--rt-priority` refused (the message names the limit and the fix).
    #[error("{0}")]
    Tuning(String),
}

/// Asks a running server to drain and stop (SIGTERM/SIGINT do this).
#[derive(Debug, Default)]
pub struct Shutdown {
    flag: AtomicBool,
    waker: OnceLock<Arc<Waker>>,
}

impl Shutdown {
    /// Start the drain. Safe from any thread, any number of times.
    pub fn trigger(&self) {
        // Release: pairs with the Acquire load in the loop; nothing else is published through it.
        self.flag.store(true, Ordering::Release);
        if let Some(w) = self.waker.get() {
            let _ = w.wake();
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

/// Everything the server's threads share with the control plane.
#[derive(Default)]
pub struct Shared {
    pub shutdown: Shutdown,
    /// Cumulative stats (hot threads fold theirs in every 200 ms).
    pub stats: Mutex<Stats>,
    pub reload: reload::ReloadSlot,
    /// Open client connections (gauge).
    pub connections: AtomicU64,
    /// Of them, shared-memory sessions (gauge).
    pub shm_sessions: AtomicU64,
    /// `--max-connections` (set once at start).
    pub max_connections: AtomicU64,
    /// Jobs waiting in the request ring (pipeline mode; gauge, sampled every 200 ms).
    pub queue_depth: AtomicU64,
    /// The live verifier's counters (`crate::verify`), across reloads.
    pub verify: Arc<crate::verify::Counters>,
    /// Shadow candidates (`crate::shadow`).
    pub shadows: crate::shadow::Registry,
    /// The model is loaded and the loop about to run: connections are answered.
    serving: AtomicBool,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared::default())
    }

    /// Whether the server serves (its model is loaded; until then connections wait in
    /// the listen queue and control commands wait for this).
    pub fn is_serving(&self) -> bool {
        // Acquire: pairs with the Release store in `run`; the serving model is recorded before.
        self.serving.load(Ordering::Acquire)
    }
}

/// `--shadow`: attach each, off the hot path, once the loop runs (a shadow that cannot load
/// is logged; the primary serves regardless).
fn attach_shadows(shared: &Arc<Shared>, paths: &[std::path::PathBuf]) {
    if paths.is_empty() {
        return;
    }
    let (shared, paths) = (shared.clone(), paths.to_vec());
    let spawned = std::thread::Builder::new().name("tickinfer-shadows".into()).spawn(move || {
        for path in paths {
            if let Err(e) = shared.shadows.add(&shared.reload, &path) {
                log::error!("--shadow {}: not attached: {e}", path.display());
            }
        }
    });
    if let Err(e) = spawned {
        log::error!("--shadow: cannot start the thread that attaches them: {e}");
    }
}

/// What the server reports once it accepts connections.
#[derive(Clone, Debug)]
pub struct Ready {
    pub mode: Mode,
    pub poll: PollMode,
    pub io_core: Option<usize>,
    pub worker_core: Option<usize>,
    pub model: ModelInfo,
}

/// Cores this process may run on, isolated ones (`isolcpus`) first, core 0 last.
pub fn usable_cores() -> Vec<usize> {
    let mut cores: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    let isolated = std::fs::read_to_string("/sys/devices/system/cpu/isolated")
        .map(|t| crate::sys::parse_cpu_list(&t))
        .unwrap_or_default();
    cores.sort_by_key(|c| (!isolated.contains(c), *c == 0, *c));
    cores
}

fn pin(core: Option<usize>, what: &str) {
    if let Some(id) = core {
        if core_affinity::set_for_current(core_affinity::CoreId { id }) {
            log::info!("{what} pinned to core {id}");
        } else {
            log::warn!("{what}: could not pin to core {id}; running unpinned");
        }
    }
}

/// Run a server on the calling thread (which becomes the I/O thread) until
/// `shutdown` is triggered and the drain completes. `on_ready` is called once
/// the socket accepts connections and the model is warm.
pub fn run(
    mut cfg: ServerConfig,
    shared: Arc<Shared>,
    on_ready: impl FnOnce(&Ready),
) -> Result<StatsReport, ServerError> {
    crate::sys::ignore_sigpipe();
    let cores = usable_cores();
    let mode = match cfg.mode {
        Mode::Auto if cores.len() >= 3 => Mode::Pipeline,
        Mode::Auto => Mode::Inline,
        m => m,
    };
    let io_core = if cfg.pin { cfg.io_core.or(cores.first().copied()) } else { None };
    let worker_core = match mode {
        Mode::Pipeline if cfg.pin => {
            cfg.worker_core.or_else(|| cores.iter().copied().find(|&c| Some(c) != io_core))
        }
        _ => None,
    };
    // The live verifier (when a native evaluator serves) stays off the hot threads' cores.
    cfg.engine.verify.cores =
        cores.iter().copied().filter(|&c| Some(c) != io_core && Some(c) != worker_core).collect();
    cfg.engine.verify.counters = shared.verify.clone();
    log::info!(
        "mode {mode:?} (asked {:?}; {} usable cores {cores:?}), poll {:?}, io core {io_core:?}, worker core {worker_core:?}",
        cfg.mode,
        cores.len(),
        cfg.poll
    );

    let euid = crate::sys::geteuid();
    let others_may_connect = cfg.policy.mode & 0o077 != 0
        || cfg.policy.allow_uids.iter().any(|&uid| uid != euid)
        || !cfg.policy.allow_gids.is_empty();
    if others_may_connect && cfg.max_connections_per_uid == cfg.max_connections {
        log::warn!(
            "other users may connect (socket mode {:o} or an allow list) and any one uid may hold all {} \
             connection slots: consider --max-connections-per-uid (and --idle-timeout-s)",
            cfg.policy.mode,
            cfg.max_connections
        );
    }
    if let Some(every) = cfg.keep_warm {
        log::info!(
            "keep-warm: after {every:?} idle, a spinning hot thread runs the model on a made-up request and a \
             socket round trip on a private pair"
        );
    }
    // Bind first: a live server on the path is refused before the model loads. A socket
    // handed over by systemd is served as it is: its file, owner and mode are the unit's.
    let (std_listener, socket_file) = match cfg.inherited_listener.take() {
        Some(inherited) => {
            log::info!(
                "serving the socket systemd passed (socket activation): {}; its owner and mode are the \
                 socket unit's, the peer allowlist applies",
                cfg.socket.display()
            );
            let listener = std::sync::Arc::try_unwrap(inherited).or_else(|shared| shared.try_clone())?;
            (listener, None)
        }
        None => {
            let (listener, file) = SocketFile::bind(&cfg.socket, &cfg.policy)?;
            (listener, Some(file))
        }
    };
    // The TCP listener too, before the model loads: a bad address or a missing allowlist
    // is said at once. Its token file is read now (a secret: never from the command line).
    let (tcp_listener, tcp_token) = match &cfg.tcp {
        Some(listen) => {
            let listener = crate::transport::tcp::bind(listen.addr, &listen.policy)?;
            let token = match &listen.policy.token_file {
                Some(path) => Some(crate::transport::tcp::Token::load(path).map_err(ListenError::Tcp)?),
                None => None,
            };
            (Some(listener), token)
        }
        None => (None, None),
    };
    pin(io_core, if mode == Mode::Inline { "inline thread" } else { "I/O thread" });
    // The inline thread runs the model: the floating-point mode ONNX Runtime expects (and a
    // native evaluator must compare in), whichever thread built the session.
    crate::engine::fpenv::denormals_as_zero();

    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let _ = shared.shutdown.waker.set(waker.clone());
    let mut listener = UnixListener::from_std(std_listener);
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let tcp_listener = match tcp_listener {
        Some(std_listener) => {
            let mut l = TcpListener::from_std(std_listener);
            poll.registry().register(&mut l, TCP_LISTENER, Interest::READABLE)?;
            Some(l)
        }
        None => None,
    };

    let hard_limit = cfg.max_inflight + (READ_BUFFER / REQUEST_SIZE) as u32;
    let (stage, model) = match mode {
        Mode::Inline | Mode::Auto => {
            let w = waker.clone();
            shared.reload.set_waker(move || {
                let _ = w.wake();
            });
            let engine = Engine::load(&cfg.model, &cfg.engine)?;
            let model = engine.info().clone();
            let stage = Stage::Inline {
                scorer: Box::new(
                    Scorer::new(engine, cfg.max_symbols).with_symbol_eviction(cfg.evict_idle_symbols),
                ),
                jobs: Vec::with_capacity(INLINE_JOBS),
                dones: Vec::with_capacity(INLINE_JOBS),
                scored: 0,
            };
            (stage, model)
        }
        Mode::Pipeline => {
            let capacity = cfg.max_connections * hard_limit as usize;
            Worker::spawn(&cfg, capacity, worker_core, waker.clone(), shared.clone())?
        }
    };
    let info = ServerInfo {
        price_scale: model.price_scale,
        size_scale_digits: crate::wire::size_scale_digits(model.size_scale).unwrap_or(0),
        model_features: model.extra_features,
        max_inflight: cfg.max_inflight,
        model_version: model.version,
        model_name: model.name.clone(),
    };
    let limits = Limits {
        model_features: Some(model.extra_features),
        symbols: cfg.symbols.as_ref().map(|ids| {
            let mut table = vec![false; 1 << 16];
            for &id in ids {
                table[id as usize] = true;
            }
            table
        }),
    };
    let recorder = match &cfg.record {
        Some(path) => {
            log::info!("recording requests to {}", path.display());
            let digits = crate::wire::size_scale_digits(model.size_scale).unwrap_or(0);
            Some(crate::record::Recorder::start(path, model.price_scale, digits, &cfg.record_options)?)
        }
        None => None,
    };
    shared.reload.set_current(model.clone(), cfg.model.clone(), cfg.engine.clone());
    shared.shadows.set_layout(cfg.max_symbols, cfg.evict_idle_symbols);
    // Relaxed: a configuration value for the metrics endpoint, nothing else hangs on it.
    shared.max_connections.store(cfg.max_connections as u64, Ordering::Relaxed);
    let ready = Ready { mode, poll: cfg.poll, io_core, worker_core, model };

    let mut io = IoLoop {
        poll,
        events: Events::with_capacity(256),
        listener: Some(listener),
        socket_file,
        tcp_listener,
        tcp_token,
        tcp_refused_log: RateLimited::new(1_000_000_000),
        busy_poll_warned: false,
        conns: Slab::with_capacity(cfg.max_connections + cfg.max_pending),
        established: 0,
        pending: 0,
        accept_retry_at: None,
        flood_log: RateLimited::new(1_000_000_000),
        refused_log: RateLimited::new(1_000_000_000),
        quota_log: RateLimited::new(1_000_000_000),
        idle_log: RateLimited::new(1_000_000_000),
        uid_connections: std::collections::HashMap::new(),
        next_generation: 1,
        info,
        hard_limit,
        stage,
        dirty: Vec::with_capacity(cfg.max_connections),
        resume: Vec::with_capacity(cfg.max_connections),
        deferred: Vec::with_capacity(cfg.max_connections),
        shm_slots: Vec::with_capacity(cfg.max_connections),
        lingering: std::collections::VecDeque::with_capacity(cfg.max_connections),
        doorbells_armed: false,
        stats: Stats::default(),
        shared,
        last_publish: now_ns(),
        last_log: now_ns(),
        last_work: now_ns(),
        intake: reading::Intake { limits, recorder, max_inflight: cfg.max_inflight, admitted: 0 },
        direct: direct_read::DirectRead::default(),
        seen_swaps: 0,
        ready: Vec::with_capacity(256),
        ticks: 0,
        spinning: false,
        keep_warm: cfg.keep_warm.map(crate::keep_warm::KeepWarm::new).transpose()?,
        cfg,
    };
    // Warm and allocated: lock the pages and raise the hot threads now, before anyone is told.
    if io.cfg.lock_memory {
        tuning::lock_memory().map_err(ServerError::Tuning)?;
    }
    if let Some(priority) = io.cfg.rt_priority {
        use std::os::unix::thread::JoinHandleExt;
        let worker = match &io.stage {
            Stage::Pipeline(w) => {
                w.thread.as_ref().filter(|_| worker_core.is_some()).map(|t| t.as_pthread_t())
            }
            Stage::Inline { .. } => None,
        };
        let io_thread = io_core.map(|_| crate::sys::current_thread());
        let name = if mode == Mode::Inline { "inline thread" } else { "I/O thread" };
        tuning::realtime(&[(io_thread, name), (worker, "inference worker")], priority)
            .map_err(ServerError::Tuning)?;
    }
    log::info!("listening on {} (control: {}.ctl)", io.cfg.socket.display(), io.cfg.socket.display());
    if let (Some(l), Some(listen)) = (&io.tcp_listener, &io.cfg.tcp) {
        let addr = l.local_addr().map_or_else(|_| listen.addr.to_string(), |a| a.to_string());
        let allow = if listen.policy.allow.is_empty() {
            "loopback peers only".to_string()
        } else {
            listen.policy.allow.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
        };
        log::info!(
            "listening on tcp {addr} (allow: {allow}; token: {}; TCP_NODELAY; SO_BUSY_POLL: {})",
            if io.tcp_token.is_some() { "required" } else { "none" },
            listen.policy.busy_poll_us.map_or("system default".to_string(), |us| format!("{us} us"))
        );
    }
    // Release: a control command that sees this sees the serving model recorded above.
    io.shared.serving.store(true, Ordering::Release);
    on_ready(&ready);
    attach_shadows(&io.shared, &io.cfg.shadows);
    let ran = io.run();
    // Drained (or failed): no scoring thread will take a reload any more.
    io.shared.reload.close();
    ran?;
    io.publish(true);
    if let Some(mut r) = io.intake.recorder.take() {
        // Logs its own counts and error; a recorder failure never costs the exit status or stats.
        r.finish();
    }
    let report = io.shared.stats.lock().map(|s| s.report()).unwrap_or_default();
    Ok(report)
}

/// Where jobs go: scored on this thread, or handed to the worker.
enum Stage {
    Inline {
        scorer: Box<Scorer>,
        /// Jobs read this iteration; capacity INLINE_JOBS, never grows.
        jobs: Vec<Job>,
        /// Their answers, in order; same capacity.
        dones: Vec<Done>,
        /// `jobs[..scored]` were answered and wait for [`Stage::observe_answered`].
        /// Invariant: `scored <= jobs.len()`.
        scored: usize,
    },
    Pipeline(Worker),
}

impl Stage {
    /// Inline: the jobs answered since the last call go to live quality and the shadows, in
    /// order, and leave the buffer — after their answers were flushed, or before more jobs
    /// are scored, a reload or a promotion ([`Scorer::observe`]). Pipeline: the worker does it.
    fn observe_answered(&mut self, stats: &mut Stats) {
        if let Stage::Inline { scorer, jobs, scored, .. } = self {
            debug_assert!(*scored <= jobs.len());
            if *scored > 0 {
                scorer.observe(&jobs[..*scored], stats);
                jobs.drain(..*scored);
                *scored = 0;
            }
        }
    }

    /// Room for another job without growing a buffer.
    fn has_room(&self) -> bool {
        match self {
            Stage::Inline { jobs, .. } => jobs.len() < jobs.capacity(),
            Stage::Pipeline(w) => w.in_flight < w.capacity,
        }
    }

    fn admit(&mut self, job: Job) {
        match self {
            Stage::Inline { jobs, .. } => jobs.push(job),
            Stage::Pipeline(w) => {
                debug_assert!(w.in_flight < w.capacity, "admitted past has_room");
                if w.jobs_tx.push(job).is_err() {
                    // Every job is counted until its answer is popped: the ring cannot be full.
                    unreachable!("request ring full with {} jobs counted in flight", w.in_flight);
                }
                w.in_flight += 1;
                w.pushed = true;
            }
        }
    }
}

struct IoLoop {
    poll: Poll,
    events: Events,
    listener: Option<UnixListener>,
    socket_file: Option<SocketFile>,
    /// `--listen-tcp`: the TCP listener, and the token its hellos must carry.
    tcp_listener: Option<TcpListener>,
    tcp_token: Option<crate::transport::tcp::Token>,
    /// TCP peers refused (allowlist, token), logged once a second.
    tcp_refused_log: RateLimited,
    /// `--busy-poll-us` refused by the kernel: said once.
    busy_poll_warned: bool,
    conns: Slab<Conn>,
    /// Connections whose hello was accepted (at most `max_connections`).
    established: usize,
    /// Connections still handshaking (at most `max_pending`).
    pending: usize,
    /// `accept` failed for want of descriptors: try again at this time (ns).
    accept_retry_at: Option<u64>,
    /// Pending-pool evictions, logged once a second.
    flood_log: RateLimited,
    /// Refused connections (permissions, full), logged once a second.
    refused_log: RateLimited,
    /// Hellos refused for `--max-connections-per-uid`, logged once a second.
    quota_log: RateLimited,
    /// Connections closed for `--idle-timeout-s`, logged once a second.
    idle_log: RateLimited,
    /// Established connections per peer uid (uids holding none are absent).
    uid_connections: std::collections::HashMap<u32, usize>,
    next_generation: u32,
    info: ServerInfo,
    /// In-flight requests past which a connection is not read (backpressure).
    hard_limit: u32,
    stage: Stage,
    /// Connections with queued output; each at most once (`Conn::dirty`).
    dirty: Vec<usize>,
    /// Connections paused at the hard limit whose in-flight count fell.
    resume: Vec<usize>,
    /// Connections with bytes left after their turn; read first thing next iteration.
    deferred: Vec<usize>,
    /// Connections with an active shared-memory session (their rings are read every iteration).
    shm_slots: Vec<usize>,
    /// Sessions the server ended with answers unread, until their pages are given back
    /// (due time, ns); at most `max_connections`.
    lingering: std::collections::VecDeque<(u64, Box<crate::shm::ServerEnd>)>,
    /// The last poll may have blocked with the sessions' doorbells armed.
    doorbells_armed: bool,
    stats: Stats,
    shared: Arc<Shared>,
    last_publish: u64,
    last_log: u64,
    last_work: u64,
    /// Reload swaps already reflected in `info`.
    seen_swaps: u64,
    /// Events of the last poll (reused buffer, capacity 256).
    ready: Vec<(Token, bool, bool)>,
    /// Loop iterations, for `tick`'s sampling.
    ticks: u64,
    /// This iteration polled without blocking.
    spinning: bool,
    /// `--keep-warm-us`: when to warm, and this thread's private socket pair.
    keep_warm: Option<crate::keep_warm::KeepWarm>,
    /// Where requests read (from a socket or a ring) go: recorder, checks, in-flight bound.
    intake: reading::Intake,
    /// Spinning with one connection: which to read directly instead of polling.
    direct: direct_read::DirectRead,
    cfg: ServerConfig,
}
