//! The server: a pinned mio event loop, the scoring stage inline or on a pinned
//! worker behind SPSC rings, per-connection order, bounded everything, drain.
//!
//! # The event loop
//! Rules, as mio requires and as this loop keeps them:
//! - Readiness is edge-triggered: a readable connection is read until the
//!   kernel has nothing more — `WouldBlock`, or a short read, which on a stream
//!   socket returns all that was queued (one syscall less per request) — or EOF,
//!   or until it must pause (see below; it is then put on the resume list and
//!   read again without waiting for an event), or until its turn of 4 reads
//!   ends: then it is read again first thing next iteration, after the answers
//!   so far are flushed — one busy client can neither starve the others nor
//!   grow its write buffer past the bound between two flushes.
//! - `EINTR` is retried everywhere (`poll`, `read`, `write`).
//! - Spurious events are harmless: every handler tolerates finding nothing to do.
//! - Each iteration: poll → accept/read/write per event → score (inline) or
//!   exchange with the worker (pipeline) → route responses to their connections
//!   → flush → close what is finished → stats tick → shutdown check.
//!
//! # Order and bounds
//! Every request read becomes one job, valid or not, and every job flows through
//! the same FIFO path (the inline stage, or the request ring, worker and
//! response ring), so responses leave each connection in request order and
//! error answers never overtake model answers. A connection may have
//! `max_inflight` runnable requests in flight; beyond that, requests are
//! answered `ML_ERR_OVERLOADED` (in order) for up to one read buffer more, and
//! then the connection is not read until answers drain (backpressure). That
//! hard limit bounds the rings: `max_connections × hard limit` slots, so a push
//! never fails. A connection whose unsent answers exceed `write_buffer_limit`
//! is a slow reader: it is disconnected with a log line; others never wait on it.
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

pub mod config;
pub mod reload;
pub mod stage;
mod worker;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mio::net::UnixListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

pub use config::{Mode, PollMode, ServeOptions, ServerConfig};
use stage::{Done, Job, Scorer};
use worker::{publish, Worker};

use crate::clock::now_ns;
use crate::engine::{Engine, EngineError, ModelInfo};
use crate::ratelog::RateLimited;
use crate::stats::{Stats, StatsReport};
use crate::transport::{Conn, Decoded, ListenError, ReadOutcome, SocketFile, READ_BUFFER};
use crate::wire::{Limits, MlHelloAck, ServerInfo, Status, REQUEST_SIZE};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(usize::MAX);
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
    /// Jobs waiting in the request ring (pipeline mode; gauge, sampled every 200 ms).
    pub queue_depth: AtomicU64,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared::default())
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
    cfg: ServerConfig,
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
    log::info!(
        "mode {mode:?} (asked {:?}; {} usable cores {cores:?}), poll {:?}, io core {io_core:?}, worker core {worker_core:?}",
        cfg.mode,
        cores.len(),
        cfg.poll
    );

    // Bind first: a live server on the path is refused before the model loads.
    let (std_listener, socket_file) = SocketFile::bind(&cfg.socket, &cfg.policy)?;
    pin(io_core, if mode == Mode::Inline { "inline thread" } else { "I/O thread" });

    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let _ = shared.shutdown.waker.set(waker.clone());
    let mut listener = UnixListener::from_std(std_listener);
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;

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
                scorer: Box::new(Scorer::new(engine, cfg.max_symbols)),
                jobs: Vec::with_capacity(INLINE_JOBS),
                dones: Vec::with_capacity(INLINE_JOBS),
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
            Some(crate::record::Recorder::start(path, model.price_scale, &cfg.record_options)?)
        }
        None => None,
    };
    shared.reload.set_current(model.clone(), cfg.model.clone(), cfg.engine.clone());
    let ready = Ready { mode, poll: cfg.poll, io_core, worker_core, model };

    let mut io = IoLoop {
        poll,
        events: Events::with_capacity(256),
        listener: Some(listener),
        socket_file: Some(socket_file),
        conns: Slab::with_capacity(cfg.max_connections + cfg.max_pending),
        established: 0,
        pending: 0,
        accept_retry_at: None,
        flood_log: RateLimited::new(1_000_000_000),
        refused_log: RateLimited::new(1_000_000_000),
        next_generation: 1,
        info,
        limits,
        hard_limit,
        stage,
        dirty: Vec::with_capacity(cfg.max_connections),
        resume: Vec::with_capacity(cfg.max_connections),
        deferred: Vec::with_capacity(cfg.max_connections),
        stats: Stats::default(),
        shared,
        last_publish: now_ns(),
        last_log: now_ns(),
        last_work: now_ns(),
        recorder,
        seen_swaps: 0,
        ready: Vec::with_capacity(256),
        ticks: 0,
        spinning: false,
        cfg,
    };
    log::info!("listening on {} (control: {}.ctl)", io.cfg.socket.display(), io.cfg.socket.display());
    on_ready(&ready);
    let ran = io.run();
    // Drained (or failed): no scoring thread will take a reload any more.
    io.shared.reload.close();
    ran?;
    io.publish(true);
    if let Some(mut r) = io.recorder.take() {
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
    },
    Pipeline(Worker),
}

impl Stage {
    /// Room for another job without growing a buffer.
    fn has_room(&self) -> bool {
        match self {
            Stage::Inline { jobs, .. } => jobs.len() < jobs.capacity(),
            Stage::Pipeline(w) => w.jobs_tx.slots() > 0,
        }
    }

    fn admit(&mut self, job: Job) {
        match self {
            Stage::Inline { jobs, .. } => jobs.push(job),
            Stage::Pipeline(w) => {
                if w.jobs_tx.push(job).is_err() {
                    // The hard in-flight limit sizes the ring so this cannot happen.
                    unreachable!("request ring full despite the in-flight bound");
                }
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
    next_generation: u32,
    info: ServerInfo,
    limits: Limits,
    /// In-flight requests past which a connection is not read (backpressure).
    hard_limit: u32,
    stage: Stage,
    /// Connections with queued output; each at most once (`Conn::dirty`).
    dirty: Vec<usize>,
    /// Connections paused at the hard limit whose in-flight count fell.
    resume: Vec<usize>,
    /// Connections with bytes left after their turn; read first thing next iteration.
    deferred: Vec<usize>,
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
    /// `--record`: requests go to the capture writer thread.
    recorder: Option<crate::record::Recorder>,
    cfg: ServerConfig,
}

impl IoLoop {
    fn run(&mut self) -> io::Result<()> {
        loop {
            let timeout = if self.deferred.is_empty() { self.poll_timeout() } else { Some(Duration::ZERO) };
            self.spinning = timeout == Some(Duration::ZERO);
            self.poll_once(timeout)?;
            self.read_deferred();
            self.advance();
            if self.shared.shutdown.is_triggered() {
                return self.drain();
            }
        }
    }

    /// Everything after the poll: stage work, routing, flushing, stats.
    fn advance(&mut self) {
        loop {
            let moved = self.exchange();
            self.resume_paused();
            if moved == 0 {
                break;
            }
        }
        self.flush_dirty();
        self.tick();
        self.refresh_model_info();
        self.retry_accept();
    }

    /// After a reload swap (by this thread or the worker), new connections are told the
    /// model now serving. Called before events are handled too: a hello acked right after
    /// a reload reports the new version. One atomic load when nothing changed.
    fn refresh_model_info(&mut self) {
        let swaps = self.shared.reload.swaps();
        if swaps != self.seen_swaps {
            self.seen_swaps = swaps;
            if let Some((model, _)) = self.shared.reload.current() {
                self.info.model_version = model.version;
                self.info.model_name = model.name;
            }
        }
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        let spin = match self.cfg.poll {
            PollMode::Spin => true,
            PollMode::Adaptive => now_ns() - self.last_work < self.cfg.spin.as_nanos() as u64,
            PollMode::Block => false,
        };
        if spin {
            return Some(Duration::ZERO);
        }
        // About to block: in pipeline mode, make sure no answer is waiting first.
        if let Stage::Pipeline(w) = &self.stage {
            w.io_bell.announce_sleep();
            if !w.done_rx.is_empty() {
                w.io_bell.wake_pending();
                return Some(Duration::ZERO);
            }
        }
        // Blocking: wake in time for an accept retry, if one is due.
        Some(if self.accept_retry_at.is_some() { ACCEPT_RETRY } else { Duration::from_millis(200) })
    }

    fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        loop {
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if let Stage::Pipeline(w) = &self.stage {
            w.io_bell.wake_pending();
        }
        self.refresh_model_info();
        // Collect first: handlers need `&mut self`. (A reused buffer: zeroing a 6 KB
        // array on every spin iteration showed up at the top of `perf`.)
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        for ev in self.events.iter() {
            ready.push((
                ev.token(),
                ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                ev.is_writable(),
            ));
        }
        let n = ready.len();
        for &(token, readable, writable) in &ready {
            match token {
                LISTENER => self.accept(),
                WAKER => {}
                Token(t) => {
                    let slot = t - 1;
                    if writable {
                        self.mark_dirty(slot);
                    }
                    if readable {
                        self.read_conn(slot);
                    }
                }
            }
        }
        self.ready = ready;
        if n > 0 && self.cfg.poll == PollMode::Adaptive {
            self.last_work = now_ns();
        }
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else { return };
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Queue drained with descriptors to spare (at the limit, accept says EMFILE
                    // even with nothing queued): the episode is over.
                    if self.accept_retry_at.take().is_some() {
                        log::info!("accept recovered: descriptors are available again");
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let out_of_fds = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    if out_of_fds {
                        // Edge-triggered: the clients already queued raise no new event. Retry on a timer.
                        if self.accept_retry_at.is_none() {
                            // Logged once per episode: the timer stays set until accept says WouldBlock.
                            log::warn!(
                                "accept failed: {e}; retrying every {ACCEPT_RETRY:?} until descriptors free up \
                                 (logged once until it recovers; raise `ulimit -n` / LimitNOFILE=)"
                            );
                        }
                        self.accept_retry_at = Some(now_ns() + ACCEPT_RETRY.as_nanos() as u64);
                    } else {
                        log::warn!("accept failed: {e}");
                    }
                    return;
                }
            };
            let generation = self.next_generation;
            self.next_generation = self.next_generation.wrapping_add(1).max(1);
            let mut conn = match Conn::new(stream, generation) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("new connection: cannot read peer credentials: {e}");
                    continue;
                }
            };
            if !self.cfg.policy.admits(&conn.peer) {
                self.refuse(&mut conn, Status::PermissionDenied);
                continue;
            }
            if self.pending >= self.cfg.max_pending {
                self.drop_oldest_pending();
            }
            let entry = self.conns.vacant_entry();
            let slot = entry.key();
            if let Err(e) =
                self.poll.registry().register(&mut conn.stream, Token(slot + 1), Interest::READABLE)
            {
                log::warn!("cannot register connection: {e}");
                continue;
            }
            log::debug!("connection {slot} from pid {} uid {}", conn.peer.pid, conn.peer.uid);
            entry.insert(conn);
            self.pending += 1;
            self.stats.connections_accepted += 1;
            // Data may already be waiting (edge-triggered): read now.
            self.read_conn(slot);
        }
    }

    /// Accept was retried on a timer after running out of descriptors: is it time?
    fn retry_accept(&mut self) {
        if let Some(at) = self.accept_retry_at {
            if now_ns() >= at {
                self.accept();
            }
        }
    }

    /// Answer a connection's hello (or its first bytes) with a refusal, without registering it.
    fn refuse(&mut self, conn: &mut Conn, status: Status) {
        if let Some(left_out) = self.refused_log.event(now_ns()) {
            log::warn!(
                "refusing connection from pid {} uid {} gid {}: {status} ({left_out} more refused since the last such line)",
                conn.peer.pid,
                conn.peer.uid,
                conn.peer.gid,
            );
        }
        self.stats.connections_refused += 1;
        // A fresh socket's buffer always takes one 64-byte ack; the client reads it after its hello.
        conn.queue(bytemuck::bytes_of(&MlHelloAck::new(status, &self.info)));
        let _ = conn.flush();
    }

    /// The pending pool is full: close its oldest connection (a scan, only under a flood).
    fn drop_oldest_pending(&mut self) {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| !c.established)
            .min_by_key(|(_, c)| c.accepted_ns)
            .map(|(k, c)| (k, c.peer));
        if let Some((slot, peer)) = oldest {
            if let Some(left_out) = self.flood_log.event(now_ns()) {
                log::warn!(
                    "{} connections without a hello (--max-pending): dropping the oldest, from pid {} uid {} \
                     ({left_out} more dropped since the last such line)",
                    self.pending,
                    peer.pid,
                    peer.uid
                );
            }
            self.close(slot);
        }
    }

    /// Read and decode one connection until `WouldBlock`, EOF, the hard
    /// in-flight limit (→ resume list) or a full stage (→ score, continue).
    fn read_conn(&mut self, slot: usize) {
        let mut reads = 0;
        loop {
            let Some(conn) = self.conns.get_mut(slot) else { return };
            if reads == READS_PER_TURN {
                // Fairness and the write-buffer bound: answers are flushed and other
                // connections served before this one is read again (next iteration).
                if !conn.read_deferred {
                    conn.read_deferred = true;
                    self.deferred.push(slot);
                }
                return;
            }
            reads += 1;
            if conn.close_after_flush || conn.peer_closed {
                return;
            }
            let outcome = conn.read_some();
            let recv_ns = now_ns();
            let mut blocked = false; // stopped decoding with bytes left
            loop {
                if conn.inflight >= self.hard_limit {
                    conn.read_paused = true;
                    blocked = true;
                    break;
                }
                if !self.stage.has_room() {
                    blocked = true;
                    break;
                }
                match conn.decode_next() {
                    Decoded::NeedMore => break,
                    Decoded::Hello => {
                        if self.established >= self.cfg.max_connections {
                            conn.queue_ack(Status::TooManyConnections, &self.info);
                            conn.close_after_flush = true;
                            conn.mark_dirty(slot, &mut self.dirty);
                            self.stats.connections_refused += 1;
                            if let Some(left_out) = self.refused_log.event(recv_ns) {
                                log::warn!(
                                    "refusing connection from pid {} uid {}: {} established (--max-connections) \
                                     ({left_out} more refused since the last such line)",
                                    conn.peer.pid,
                                    conn.peer.uid,
                                    self.established
                                );
                            }
                            return;
                        }
                        conn.established = true;
                        self.pending -= 1;
                        self.established += 1;
                        conn.queue_ack(Status::Ok, &self.info);
                        conn.mark_dirty(slot, &mut self.dirty);
                    }
                    Decoded::Request(req) => {
                        if let Some(r) = &mut self.recorder {
                            r.record(recv_ns, &req);
                        }
                        let status = if conn.inflight >= self.cfg.max_inflight {
                            Status::Overloaded
                        } else {
                            crate::wire::validate(&req, &self.limits)
                        };
                        conn.inflight += 1;
                        self.stage.admit(Job {
                            slot: slot as u32,
                            generation: conn.generation,
                            recv_ns,
                            status,
                            req,
                        });
                    }
                    Decoded::Error(e) => {
                        log::warn!(
                            "connection {slot} (pid {} uid {}): {e}; answering {} and closing",
                            conn.peer.pid,
                            conn.peer.uid,
                            e.status()
                        );
                        if conn.decoder.is_open() {
                            // Behind the requests already in flight, so it arrives last.
                            conn.inflight += 1;
                            let req = crate::wire::MlRequest::new();
                            self.stage.admit(Job {
                                slot: slot as u32,
                                generation: conn.generation,
                                recv_ns,
                                status: Status::BadFrame,
                                req,
                            });
                            conn.close_after_flush = true;
                        } else {
                            conn.queue_ack(e.status(), &self.info);
                            conn.close_after_flush = true;
                            conn.mark_dirty(slot, &mut self.dirty);
                        }
                        return;
                    }
                }
            }
            if blocked {
                if conn.read_paused {
                    return; // resumed from resume_paused() when answers drain
                }
                self.exchange(); // full stage: score/route now, then keep reading
                continue;
            }
            match outcome {
                ReadOutcome::Data => continue,
                // A short read drained the socket: skip the read() that would only say WouldBlock
                // (one syscall less per request on the hot path).
                ReadOutcome::Drained | ReadOutcome::WouldBlock => return,
                ReadOutcome::Closed => {
                    conn.peer_closed = true;
                    conn.mark_dirty(slot, &mut self.dirty); // so close-when-done is checked
                    return;
                }
            }
        }
    }

    /// Score (inline) or hand over / collect (pipeline); route answers.
    /// Returns how many answers were routed.
    fn exchange(&mut self) -> usize {
        // Stage work: score the inline jobs, or ring the worker for the ones pushed.
        match &mut self.stage {
            Stage::Inline { scorer, jobs, dones } => {
                // Every turn, jobs or not: an idle server takes a reload at once (one atomic load).
                scorer.poll_reload(&self.shared.reload);
                if !jobs.is_empty() {
                    scorer.score(jobs, &mut self.stats, |done| dones.push(done));
                    jobs.clear();
                }
            }
            Stage::Pipeline(w) => {
                if w.pushed {
                    w.pushed = false;
                    if w.worker_bell.should_wake() {
                        if let Some(t) = &w.thread {
                            t.thread().unpark();
                        }
                    }
                }
            }
        }
        // Route the answers, in order, to their connections.
        let send_ns = now_ns();
        let IoLoop { stage, conns, dirty, resume, stats, hard_limit, .. } = self;
        let mut routed = 0;
        let mut deliver = |done| {
            route(conns, dirty, resume, stats, *hard_limit, done, send_ns);
            routed += 1;
        };
        match stage {
            Stage::Inline { dones, .. } => dones.drain(..).for_each(&mut deliver),
            Stage::Pipeline(w) => {
                while let Ok(done) = w.done_rx.pop() {
                    deliver(done);
                }
            }
        }
        if routed > 0 && self.cfg.poll == PollMode::Adaptive {
            self.last_work = now_ns();
        }
        routed
    }

    /// Continue the connections whose turn ended with bytes left (taken as a batch:
    /// a connection deferred again goes to the next iteration).
    fn read_deferred(&mut self) {
        let mut slots = std::mem::take(&mut self.deferred);
        for &slot in &slots {
            if let Some(conn) = self.conns.get_mut(slot) {
                conn.read_deferred = false;
                self.read_conn(slot);
            }
        }
        slots.clear();
        if self.deferred.is_empty() {
            self.deferred = slots; // keep the allocation
        }
    }

    fn resume_paused(&mut self) {
        while let Some(slot) = self.resume.pop() {
            self.read_conn(slot); // tolerates a slot closed meanwhile
        }
    }

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.mark_dirty(slot, &mut self.dirty);
        }
    }

    /// Flush connections with output; switch WRITABLE interest; close finished ones.
    fn flush_dirty(&mut self) {
        while let Some(slot) = self.dirty.pop() {
            let Some(conn) = self.conns.get_mut(slot) else { continue };
            conn.dirty = false;
            let close = match conn.flush() {
                Ok(true) => {
                    if conn.want_write {
                        conn.want_write = false;
                        let _ = self.poll.registry().reregister(
                            &mut conn.stream,
                            Token(slot + 1),
                            Interest::READABLE,
                        );
                    }
                    (conn.close_after_flush || conn.peer_closed) && conn.inflight == 0
                }
                Ok(false) if conn.queued() > self.cfg.write_buffer_limit => {
                    log::warn!(
                        "connection {slot} (pid {} uid {}): slow reader, {} bytes of answers unread (limit {}); \
                         disconnecting",
                        conn.peer.pid,
                        conn.peer.uid,
                        conn.queued(),
                        self.cfg.write_buffer_limit
                    );
                    self.stats.slow_reader_disconnects += 1;
                    true
                }
                Ok(false) => {
                    log::debug!("connection {slot}: kernel buffer full, {} bytes queued", conn.queued());
                    if !conn.want_write {
                        conn.want_write = true;
                        let _ = self.poll.registry().reregister(
                            &mut conn.stream,
                            Token(slot + 1),
                            Interest::READABLE | Interest::WRITABLE,
                        );
                    }
                    false
                }
                Err(e) => {
                    log::debug!("connection {slot}: write failed ({e}); closing");
                    true
                }
            };
            if close {
                self.close(slot);
            }
        }
    }

    /// A connection that sent no hello within `HELLO_TIMEOUT` is closed, so idle
    /// sockets cannot hold the connection slots other clients need.
    fn close_silent_connections(&mut self, now: u64) {
        let limit = HELLO_TIMEOUT.as_nanos() as u64;
        let silent: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.decoder.is_open() && !c.close_after_flush && now - c.accepted_ns > limit)
            .map(|(k, _)| k)
            .collect();
        if let (Some(&first), n) = (silent.first(), silent.len()) {
            if let Some(c) = self.conns.get(first) {
                log::warn!(
                    "{n} connection(s) sent no hello within {HELLO_TIMEOUT:?}; closing them (first: pid {} uid {})",
                    c.peer.pid,
                    c.peer.uid,
                );
            }
        }
        for slot in silent {
            self.close(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut conn) = self.conns.try_remove(slot) {
            if conn.established {
                self.established -= 1;
            } else {
                self.pending -= 1;
            }
            debug_assert_eq!(self.established + self.pending, self.conns.len());
            let _ = self.poll.registry().deregister(&mut conn.stream);
            log::debug!("connection {slot} closed ({} in flight dropped)", conn.inflight);
        }
    }

    fn publish(&mut self, force: bool) {
        publish(&mut self.stats, &self.shared.stats, force);
        // Relaxed: gauges, read by the metrics endpoint with no ordering needs.
        self.shared.connections.store(self.established as u64, Ordering::Relaxed);
        let depth = match &self.stage {
            Stage::Pipeline(w) => (w.jobs_tx.buffer().capacity() - w.jobs_tx.slots()) as u64,
            Stage::Inline { .. } => 0,
        };
        self.shared.queue_depth.store(depth, Ordering::Relaxed);
    }

    fn tick(&mut self) {
        // While spinning, a clock read every 64 iterations is plenty for 200 ms periods.
        self.ticks = self.ticks.wrapping_add(1);
        if self.spinning && self.ticks % 64 != 0 {
            return;
        }
        let now = now_ns();
        if now - self.last_publish > PUBLISH_EVERY_NS {
            self.publish(false);
            self.last_publish = now;
            self.close_silent_connections(now);
        }
        let every = self.cfg.stats_interval.as_nanos() as u64;
        if every > 0 && now - self.last_log > every {
            self.last_log = now;
            if let Ok(s) = self.shared.stats.lock() {
                let r = s.report();
                log::info!(
                    "stats: {} answered; total p50 {} ns p99 {} p99.9 {}; inference p50 {} ns; queue p50 {} ns; \
                     {} connections",
                    r.responses,
                    r.total_ns.p50,
                    r.total_ns.p99,
                    r.total_ns.p999,
                    r.inference_ns.p50,
                    r.queue_ns.p50,
                    self.conns.len()
                );
            }
        }
    }

    /// Stop accepting, answer every request already sent, flush, close.
    fn drain(&mut self) -> io::Result<()> {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.socket_file.take(); // removes the socket file: no new clients find us
        log::info!("draining: stopped accepting; answering {} connections' requests", self.conns.len());
        let deadline = now_ns() + DRAIN_DEADLINE.as_nanos() as u64;
        loop {
            // Everything clients sent before now is read and answered.
            let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for &slot in &slots {
                self.read_conn(slot);
            }
            self.advance();
            let pending: usize = self.conns.iter().map(|(_, c)| c.inflight as usize + c.queued()).sum();
            if pending == 0 && self.deferred.is_empty() {
                break;
            }
            self.deferred.clear(); // every connection is read again on the next pass
            for (_, c) in self.conns.iter_mut() {
                c.read_deferred = false;
            }
            if now_ns() > deadline {
                log::warn!("drain deadline passed with {pending} requests/bytes unanswered");
                break;
            }
            self.poll_once(Some(Duration::from_millis(1)))?;
        }
        let n = self.conns.len();
        let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for slot in slots {
            self.close(slot);
        }
        if let Stage::Pipeline(w) = &mut self.stage {
            w.stop();
        }
        log::info!("drained: {n} connections closed");
        Ok(())
    }
}

/// Deliver one answer to its connection (if it is still the same connection).
fn route(
    conns: &mut Slab<Conn>,
    dirty: &mut Vec<usize>,
    resume: &mut Vec<usize>,
    stats: &mut Stats,
    hard_limit: u32,
    done: Done,
    send_ns: u64,
) {
    let slot = done.slot as usize;
    let Some(conn) = conns.get_mut(slot) else { return };
    if conn.generation != done.generation {
        return; // the connection closed and its slot was reused
    }
    let mut resp = done.resp;
    resp.server_send_ns = send_ns;
    conn.queue_response(&resp);
    debug_assert!(conn.inflight > 0);
    conn.inflight -= 1;
    stats.total.saturating_record(send_ns.saturating_sub(resp.server_recv_ns));
    if let Some(c) = stats.status.get_mut(resp.status as usize) {
        *c += 1;
    }
    conn.mark_dirty(slot, dirty);
    if conn.read_paused && conn.inflight < hard_limit {
        // Once per pause: the list never holds a connection twice (and never grows).
        conn.read_paused = false;
        resume.push(slot);
    }
}
