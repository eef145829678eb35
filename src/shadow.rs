//! Shadow candidates: models that see a copy of every request the primary scores, in the
//! same order, off the hot path, with their own per-symbol state, and whose answers are
//! never sent: timed, compared with the primary's (direction agreement) and scored by live
//! signal quality ([`crate::quality`]), side by side with the primary. `promote` makes one
//! the primary between two requests, warm; the old primary becomes a shadow with its own
//! warm state, so rollback is one more `promote`.
//!
//! Three parties:
//! - the control plane ([`Registry::add`], [`Registry::remove`], [`Registry::promote`]):
//!   loads a candidate off the hot path, starts its thread, hands each change to the scoring
//!   thread through the [`Registry`] (one atomic load per loop turn while nothing is
//!   pending, like a reload) and waits for it, bounded;
//! - the scoring thread ([`Taps`], owned by `server::stage::Scorer`): per shadow a bounded
//!   SPSC ring (`rtrb`); each request the primary admits to the model is pushed with the
//!   primary's answer, never waited for: a full ring is a counted drop, and the shadow
//!   clears its state at the hole (stale until every symbol it had seen has warmed again);
//! - the shadow thread (off the hot cores, lowered priority): pops runs of records, admits
//!   and scores them on its own engine and state, compares, publishes every 100 ms.
//!
//! Promotion, the only time the scoring thread waits for a shadow: the control plane first
//! waits until the shadow has caught up (at most [`CAUGHT_UP`] records queued); the scoring
//! thread, between two runs, queues a handover after the last request it scored, wakes the
//! shadow and waits (at most [`HANDOVER_TIMEOUT_NS`]) for its [`Bundle`] — engine, state,
//! signal quality — which has then seen exactly the requests the primary has. It installs
//! the bundle and hands its own back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::clock::now_ns;
use crate::engine::{Engine, ModelInfo};
use crate::manifest::Prediction;
use crate::quality::{Quality, Tally};
use crate::state::{Admitted, State};
use crate::stats::{Percentiles, ShadowReport};
use crate::wire::{MlRequest, MlResponse, Status, RESPONSE_WARMING};

/// Shadows attached at most.
pub const MAX_SHADOWS: usize = 4;

/// Records a shadow's ring holds: at 5 µs a row, 80 ms of the primary's traffic.
const QUEUE: usize = 16_384;

/// Records queued at most before a promotion asks the scoring thread to hand over (its
/// wait for the shadow is then this many rows of the shadow's model at most).
pub const CAUGHT_UP: u64 = 64;

/// How long the scoring thread waits for a shadow's bundle before giving up on it.
pub const HANDOVER_TIMEOUT_NS: u64 = 2_000_000_000;

/// How long a promotion waits for the shadow to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the control plane waits for the scoring thread to take a change.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// A shadow thread's sleep when nothing is queued: doubling from the shortest to the longest.
/// Long on purpose: each wake-up preempts whatever shares its core (on 2 cores, the spinning
/// client), so it wakes at most 1 000 times a second and scores the queue in one go (a
/// promotion wakes it at once). Measured: sleeping from 50 µs, one shadow cost the primary's
/// e2e p50 +34 % and p99 +97 % in a 200 000-request `tickinfer bench` run.
const IDLE_SHORTEST: Duration = Duration::from_millis(1);
const IDLE_LONGEST: Duration = Duration::from_millis(4);

/// A shadow thread publishes its counters this often.
const PUBLISH_EVERY_NS: u64 = 100_000_000;

/// One request the primary admitted to its model, and its answer.
#[derive(Clone, Copy, Debug)]
struct Record {
    req: MlRequest,
    /// The scoring stage's clock for the run: the shadow's state admits the symbol at the
    /// same instant the primary's did (the same eviction decisions, the same slots).
    seen_ns: u64,
    /// The primary's answer: wire status code and direction.
    status: u16,
    direction: i8,
    /// Requests were dropped just before this one (the ring was full): the state has a hole.
    gap: bool,
}

// Every ring slot is a record's size either way; boxing would allocate per request.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug)]
enum Msg {
    Score(Record),
    /// Promotion: hand the bundle over after every record queued before this.
    Handover,
}

/// What moves between the scoring thread and a shadow at promotion: the model and
/// everything that is its own.
pub struct Bundle {
    pub engine: Engine,
    pub state: State,
    pub quality: Quality,
    /// The quality counts of `quality`'s answers (the primary's live in its `Stats`).
    pub tally: Tally,
}

/// `Shadow::handover` phases.
const IDLE: u8 = 0;
/// The scoring thread queued a handover and waits.
const ASKED: u8 = 1;
/// The shadow put its bundle in `exchange`.
const HANDED: u8 = 2;
/// The scoring thread put the old primary's bundle in `exchange`.
const RETURNED: u8 = 3;
/// The scoring thread gave up waiting: the shadow is out of step for good (remove it).
const BROKEN: u8 = 4;

/// A shadow's counters, as its thread publishes them.
#[derive(Clone, Debug)]
struct Counts {
    scored: u64,
    /// Model runs' time, per run (as the primary's `inference`).
    inference: Histogram<u64>,
    /// Rows: the primary's direction (−1, 0, +1); columns: the shadow's. Both answered.
    agreement: [[u64; 3]; 3],
    /// The primary answered and the shadow did not (a model failure or no symbol slot), and
    /// the other way round.
    shadow_only_failed: u64,
    primary_only_failed: u64,
    /// Symbols whose last answer carried the warming flag (or, after a hole, not yet answered).
    warming_symbols: u64,
    /// A hole in the stream (dropped requests) not yet warmed over.
    stale: bool,
    gaps: u64,
    tally: Tally,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            scored: 0,
            inference: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds"),
            agreement: [[0; 3]; 3],
            shadow_only_failed: 0,
            primary_only_failed: 0,
            warming_symbols: 0,
            stale: false,
            gaps: 0,
            tally: Tally::default(),
        }
    }
}

/// One shadow, as the control plane, the scoring thread and its own thread share it.
pub struct Shadow {
    /// The model it runs now and its manifest (swapped with the primary's at promotion).
    model: Mutex<(ModelInfo, PathBuf)>,
    /// Records dropped because its ring was full. Relaxed: a statistic.
    dropped: AtomicU64,
    /// Records queued (set by its thread after each run). Relaxed: a gauge.
    queued: AtomicU64,
    /// Its thread's counters, published every 100 ms and after each handover.
    published: Mutex<Counts>,
    /// [`IDLE`] … [`BROKEN`]: the promotion hand-shake.
    handover: AtomicU8,
    /// The bundle in transit during a promotion.
    exchange: Mutex<Option<Bundle>>,
    thread: OnceLock<std::thread::Thread>,
}

impl Shadow {
    pub fn name(&self) -> String {
        self.model.lock().map(|m| m.0.name.clone()).unwrap_or_default()
    }

    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Its report and the quality counts behind it (for the metrics endpoint).
    /// Both from one snapshot of its counters.
    fn report_and_tally(&self) -> (ShadowReport, Tally) {
        let c = self.counts();
        let tally = c.tally.clone();
        (self.report_of(c), tally)
    }

    fn report(&self) -> ShadowReport {
        self.report_of(self.counts())
    }

    /// Its thread's last published counters.
    fn counts(&self) -> Counts {
        self.published.lock().map(|c| c.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    fn report_of(&self, c: Counts) -> ShadowReport {
        let (info, path) = self.model.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let both: u64 = c.agreement.iter().flatten().sum();
        let same: u64 = (0..3).map(|i| c.agreement[i][i]).sum();
        ShadowReport {
            name: info.name.clone(),
            version: info.version,
            path: path.display().to_string(),
            backend: info.backend_now(),
            scored: c.scored,
            // Relaxed: statistics.
            dropped: self.dropped.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            gaps: c.gaps,
            stale: c.stale,
            broken: self.handover.load(Ordering::Acquire) == BROKEN,
            warming_symbols: c.warming_symbols,
            inference_ns: Percentiles::of(&c.inference),
            agreement: c.agreement,
            agreement_rate: (both > 0).then(|| same as f64 / both as f64),
            shadow_only_failed: c.shadow_only_failed,
            primary_only_failed: c.primary_only_failed,
            quality: c.tally.report(),
        }
    }
}

/// The scoring thread's end of one shadow.
pub struct Tap {
    tx: rtrb::Producer<Msg>,
    shadow: Arc<Shadow>,
    /// Records were dropped since the last one queued.
    gap: bool,
}

/// The scoring thread's shadows (capacity [`MAX_SHADOWS`], allocated once).
pub struct Taps {
    taps: Vec<Tap>,
}

impl Default for Taps {
    fn default() -> Taps {
        Taps { taps: Vec::with_capacity(MAX_SHADOWS) }
    }
}

impl Taps {
    /// A request the primary admitted to its model (`seen_ns`: the run's clock), with its
    /// answer: queued for every shadow, never waited for. No allocation.
    #[inline]
    pub fn offer(&mut self, req: &MlRequest, seen_ns: u64, answer: &MlResponse) {
        for tap in &mut self.taps {
            let record = Record {
                req: *req,
                seen_ns,
                status: answer.status,
                direction: answer.direction,
                gap: tap.gap,
            };
            if tap.tx.push(Msg::Score(record)).is_ok() {
                tap.gap = false;
            } else {
                tap.gap = true;
                // Relaxed: a statistic.
                tap.shadow.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.taps.is_empty()
    }

    fn position(&self, shadow: &Arc<Shadow>) -> Option<usize> {
        self.taps.iter().position(|t| Arc::ptr_eq(&t.shadow, shadow))
    }
}

/// A change for the scoring thread.
enum Op {
    Add(Tap),
    Remove(Arc<Shadow>),
    Promote(Arc<Shadow>),
}

/// What the scoring thread applies a promotion to: its model, its state, its signal
/// quality and that quality's counts (in its `Stats`).
pub struct Primary<'a> {
    pub engine: &'a mut Engine,
    pub state: &'a mut State,
    pub quality: &'a mut Quality,
    pub tally: &'a mut Tally,
}

impl Primary<'_> {
    /// Swap in `bundle` (the shadow's), returning the primary's.
    fn install(&mut self, mut bundle: Bundle) -> Bundle {
        std::mem::swap(self.engine, &mut bundle.engine);
        std::mem::swap(self.state, &mut bundle.state);
        std::mem::swap(self.quality, &mut bundle.quality);
        std::mem::swap(self.tally, &mut bundle.tally);
        // The shared stats took the old tally: the new one is numbered after it.
        self.tally.succeed(&bundle.tally);
        bundle
    }
}

/// The server's shadows, shared by the control plane and the scoring thread.
#[derive(Default)]
pub struct Registry {
    shadows: Mutex<Vec<Arc<Shadow>>>,
    /// A change waits in `op`.
    pending: AtomicBool,
    op: Mutex<Option<Op>>,
    /// The scoring thread's outcome of the last change (taken by the control plane).
    outcome: Mutex<Option<Result<(), String>>>,
    /// One change at a time.
    busy: Mutex<()>,
    /// The primary's state layout: symbol slots and eviction (set once at start), so that a
    /// shadow's state can take the primary's place.
    layout: OnceLock<(usize, Option<Duration>)>,
}

impl Registry {
    /// The primary's state layout (once, when the server starts).
    pub fn set_layout(&self, max_symbols: usize, eviction: Option<Duration>) {
        let _ = self.layout.set((max_symbols, eviction));
    }

    /// A change waits for the scoring thread (it must not sleep long).
    #[inline]
    pub fn is_pending(&self) -> bool {
        // Acquire: pairs with the Release store in `post`, after `op` was filled.
        self.pending.load(Ordering::Acquire)
    }

    /// Every shadow's report, in the order they were attached.
    pub fn reports(&self) -> Vec<ShadowReport> {
        self.list().iter().map(|s| s.report()).collect()
    }

    /// Every shadow's report with its quality counts (the metrics endpoint).
    pub fn reports_and_tallies(&self) -> Vec<(ShadowReport, Tally)> {
        self.list().iter().map(|s| s.report_and_tally()).collect()
    }

    fn list(&self) -> Vec<Arc<Shadow>> {
        self.shadows.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn find(&self, name: &str) -> Result<Arc<Shadow>, String> {
        let list = self.list();
        list.iter().find(|s| s.name() == name).cloned().ok_or_else(|| {
            let names: Vec<String> = list.iter().map(|s| s.name()).collect();
            if names.is_empty() {
                format!("no shadow named `{name}`: no shadow is attached")
            } else {
                format!("no shadow named `{name}` (attached: {})", names.join(", "))
            }
        })
    }

    /// Scoring thread, between two runs: apply a pending change. `primary`: what a promotion
    /// swaps; `serving`: the reload slot whose record of the serving model a promotion updates.
    /// Returns whether the primary's model changed (a promotion).
    pub fn poll(
        &self,
        taps: &mut Taps,
        mut primary: Primary<'_>,
        serving: &crate::server::reload::ReloadSlot,
    ) -> bool {
        let Ok(mut op) = self.op.try_lock() else { return false };
        let Some(op) = op.take() else { return false };
        let mut promoted = false;
        let outcome = match op {
            Op::Add(tap) => {
                debug_assert!(taps.taps.len() < MAX_SHADOWS, "the control plane counts the shadows");
                taps.taps.push(tap);
                Ok(())
            }
            Op::Remove(shadow) => {
                // Dropping the producer ends the shadow's thread once it has drained.
                if let Some(i) = taps.position(&shadow) {
                    taps.taps.remove(i);
                }
                Ok(())
            }
            Op::Promote(shadow) => match taps.position(&shadow) {
                None => Err("the shadow is not attached".into()),
                Some(i) => {
                    let r = promote(&mut taps.taps[i], &mut primary, serving);
                    promoted = r.is_ok();
                    r
                }
            },
        };
        if let Ok(mut o) = self.outcome.lock() {
            *o = Some(outcome);
        }
        // Release: the control plane's Acquire load sees the outcome.
        self.pending.store(false, Ordering::Release);
        promoted
    }

    /// Control plane: hand `op` to the scoring thread, wake it and wait for the outcome.
    fn post(&self, op: Op, serving: &crate::server::reload::ReloadSlot) -> Result<(), String> {
        if let Ok(mut o) = self.outcome.lock() {
            *o = None;
        }
        *self.op.lock().map_err(|_| "poisoned")? = Some(op);
        // Release: the scoring thread's Acquire load of `pending` sees `op` filled.
        self.pending.store(true, Ordering::Release);
        serving.wake();
        let t0 = Instant::now();
        loop {
            // Acquire: pairs with `poll`'s Release store.
            if !self.pending.load(Ordering::Acquire) {
                return self.outcome.lock().map_err(|_| "poisoned")?.take().unwrap_or(Ok(()));
            }
            if serving.is_closed() || t0.elapsed() > OP_TIMEOUT {
                // Under the lock `poll` takes: either the op is still here (not applied) or gone.
                let mut op = self.op.lock().map_err(|_| "poisoned")?;
                if op.take().is_some() {
                    self.pending.store(false, Ordering::Relaxed);
                    return Err(if serving.is_closed() {
                        "the server is stopping".into()
                    } else {
                        format!("the scoring thread did not take the change within {OP_TIMEOUT:?}")
                    });
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Control plane: load `manifest` as a shadow of the serving model and attach it.
    /// Blocking (use a blocking thread).
    pub fn add(
        &self,
        serving: &crate::server::reload::ReloadSlot,
        manifest: &Path,
    ) -> Result<ShadowReport, String> {
        let _one = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if serving.is_closed() {
            return Err("the server is stopping".into());
        }
        if self.list().len() >= MAX_SHADOWS {
            return Err(format!("{MAX_SHADOWS} shadows are attached already (the most); remove one first"));
        }
        let (primary, opts) = serving.current_with_options().ok_or("the server is not serving yet")?;
        let &(max_symbols, eviction) = self.layout.get().ok_or("the server is not serving yet")?;
        let engine = Engine::load(manifest, &opts).map_err(|e| e.to_string())?;
        let info = engine.info().clone();
        // A shadow may become the primary: it must keep the contract the clients were given.
        crate::server::reload::same_wire(&primary, &info)?;
        if info.name == primary.name {
            return Err(format!(
                "`{}` is the serving model's name: give the candidate its own `name` in its manifest (names pick \
                 shadows and label their metrics)",
                info.name
            ));
        }
        if self.list().iter().any(|s| s.name() == info.name) {
            return Err(format!("a shadow named `{}` is attached already (names pick shadows)", info.name));
        }
        let shadow = Arc::new(Shadow {
            model: Mutex::new((info.clone(), manifest.to_path_buf())),
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            published: Mutex::new(Counts::new()),
            handover: AtomicU8::new(IDLE),
            exchange: Mutex::new(None),
            thread: OnceLock::new(),
        });
        let (tx, rx) = rtrb::RingBuffer::new(QUEUE);
        let cores = if opts.verify.cores.is_empty() {
            crate::verify::off_this_threads_cores()
        } else {
            opts.verify.cores.clone()
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let runner_shadow = shadow.clone();
        let thread = std::thread::Builder::new()
            .name("tickinfer-shadow".into())
            .spawn(move || {
                if let Err(e) = crate::sys::run_on_cores(&cores) {
                    log::warn!("shadow: cannot keep off the hot cores ({e})");
                }
                crate::engine::fpenv::denormals_as_zero();
                let _ = crate::sys::set_thread_nice(10);
                let mut state = engine.new_state(max_symbols);
                state.set_eviction(eviction);
                let quality = Quality::new(engine.manifest(), max_symbols);
                let runner = Runner::new(
                    runner_shadow,
                    rx,
                    Bundle { engine, state, quality, tally: Tally::default() },
                );
                let _ = ready_tx.send(());
                runner.run();
            })
            .map_err(|e| format!("cannot start the shadow's thread: {e}"))?;
        let _ = shadow.thread.set(thread.thread().clone());
        ready_rx.recv().map_err(|_| "the shadow's thread died at start".to_string())?;
        self.post(Op::Add(Tap { tx, shadow: shadow.clone(), gap: false }), serving)?;
        if let Ok(mut l) = self.shadows.lock() {
            l.push(shadow.clone());
        }
        log::info!(
            "shadow attached: {} v{} ({}) from {}, beside {} v{}; its answers are compared, never sent",
            info.name,
            info.version,
            info.backend_now(),
            manifest.display(),
            primary.name,
            primary.version
        );
        Ok(shadow.report())
    }

    /// Control plane: detach the shadow named `name` (its thread ends once it has drained).
    pub fn remove(&self, serving: &crate::server::reload::ReloadSlot, name: &str) -> Result<(), String> {
        let _one = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let shadow = self.find(name)?;
        self.post(Op::Remove(shadow.clone()), serving)?;
        if let Ok(mut l) = self.shadows.lock() {
            l.retain(|s| !Arc::ptr_eq(s, &shadow));
        }
        shadow.wake();
        log::info!("shadow {name} removed");
        Ok(())
    }

    /// Control plane: make the shadow named `name` the primary, between two requests, with
    /// its warm state; the primary becomes that shadow. Refused while the shadow is stale or
    /// warming symbols (unless `force`), or behind. Returns the new primary's name and version.
    pub fn promote(
        &self,
        serving: &crate::server::reload::ReloadSlot,
        name: &str,
        force: bool,
    ) -> Result<(String, u32), String> {
        let _one = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let shadow = self.find(name)?;
        let report = shadow.report();
        if report.broken {
            return Err(format!("shadow {name} failed an earlier handover and is out of step: remove it"));
        }
        if !force && (report.stale || report.warming_symbols > 0) {
            return Err(format!(
                "shadow {name} is {}: {} symbols' last answers carry the warming flag; wait, or promote with \
                 --force (those symbols' answers then carry the warming flag)",
                if report.stale { "stale after dropped requests" } else { "still warming" },
                report.warming_symbols
            ));
        }
        // Caught up first: the scoring thread's wait for the handover is then short.
        let t0 = Instant::now();
        while shadow.queued.load(Ordering::Relaxed) > CAUGHT_UP {
            if t0.elapsed() > CATCH_UP_TIMEOUT {
                return Err(format!(
                    "shadow {name} is {} requests behind the primary after {CATCH_UP_TIMEOUT:?} (it cannot keep up \
                     with this traffic); not promoted",
                    shadow.queued.load(Ordering::Relaxed)
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.post(Op::Promote(shadow.clone()), serving)?;
        let (info, _) = serving.current().ok_or("no serving model")?;
        log::info!(
            "promoted: {} v{} now serves; the old primary is shadow {}",
            info.name,
            info.version,
            shadow.name()
        );
        Ok((info.name, info.version))
    }
}

/// Scoring thread: the handover with `tap`'s shadow. The shadow's bundle is installed in
/// `primary`; the primary's goes back to the shadow, and the serving model's record swaps.
fn promote(
    tap: &mut Tap,
    primary: &mut Primary<'_>,
    serving: &crate::server::reload::ReloadSlot,
) -> Result<(), String> {
    let shadow = tap.shadow.clone();
    if tap.gap {
        // Requests dropped just now and the shadow not told yet (the next record carries it).
        return Err("requests were dropped for the shadow just now; not promoted (try again)".into());
    }
    // Release: the shadow's Acquire load sees the handover asked before it pops the message.
    shadow.handover.store(ASKED, Ordering::Release);
    let t0 = now_ns();
    let give_up = |why: &str| {
        // The shadow may hand over later, out of step: never promotable again.
        shadow.handover.store(BROKEN, Ordering::Release);
        Err(format!("{why}; not promoted (the shadow is out of step: remove it)"))
    };
    // After the last request scored: the shadow then has seen exactly the primary's requests.
    while tap.tx.push(Msg::Handover).is_err() {
        if now_ns() - t0 > HANDOVER_TIMEOUT_NS {
            return give_up("the shadow's queue stayed full");
        }
        std::thread::yield_now();
    }
    shadow.wake();
    loop {
        match shadow.handover.load(Ordering::Acquire) {
            HANDED => break,
            _ if now_ns() - t0 > HANDOVER_TIMEOUT_NS => {
                // Unless it handed over just now.
                if shadow
                    .handover
                    .compare_exchange(ASKED, BROKEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Err("the shadow did not hand over within 2 s; not promoted (it is out of step: remove it)"
                        .into());
                }
            }
            _ => std::thread::yield_now(),
        }
    }
    let theirs =
        shadow.exchange.lock().map_err(|_| "poisoned")?.take().ok_or("the shadow handed over nothing")?;
    let ours = primary.install(theirs);
    // The serving model's record: the shadow's model serves, the old primary is the shadow.
    let their_model = shadow.model.lock().map_err(|_| "poisoned")?.clone();
    if let Some(old) = serving.promoted(their_model.0, their_model.1) {
        *shadow.model.lock().map_err(|_| "poisoned")? = old;
    }
    *shadow.exchange.lock().map_err(|_| "poisoned")? = Some(ours);
    // Release: the shadow's Acquire load sees the old primary's bundle in `exchange`.
    shadow.handover.store(RETURNED, Ordering::Release);
    shadow.wake();
    Ok(())
}

/// A shadow's thread.
struct Runner {
    shadow: Arc<Shadow>,
    rx: rtrb::Consumer<Msg>,
    /// `None` only during a handover.
    bundle: Option<Bundle>,
    counts: Counts,
    records: Vec<Record>,
    reqs: Vec<MlRequest>,
    statuses: Vec<Status>,
    preds: Vec<Option<Prediction>>,
    /// Symbols seen, and those whose last answer was warming (bitsets over symbol ids).
    seen: Vec<u64>,
    warming: Vec<u64>,
    last_publish: u64,
    /// Test only (`TICKINFER_TEST_SHADOW_DELAY_US`): a pause per run, a shadow slower than
    /// any real model, so that tests can fill its queue.
    delay: Option<Duration>,
}

fn bit(set: &[u64], symbol: u16) -> bool {
    set[symbol as usize / 64] & (1 << (symbol % 64)) != 0
}

fn set_bit(set: &mut [u64], symbol: u16, on: bool) {
    let (w, b) = (symbol as usize / 64, 1u64 << (symbol % 64));
    if on {
        set[w] |= b
    } else {
        set[w] &= !b
    }
}

/// −1, 0, +1 → 0, 1, 2.
fn index(direction: i8) -> usize {
    (direction.clamp(-1, 1) + 1) as usize
}

impl Runner {
    fn new(shadow: Arc<Shadow>, rx: rtrb::Consumer<Msg>, bundle: Bundle) -> Runner {
        let max_batch = bundle.engine.max_batch();
        Runner {
            shadow,
            rx,
            bundle: Some(bundle),
            counts: Counts::new(),
            records: Vec::with_capacity(max_batch),
            reqs: Vec::with_capacity(max_batch),
            statuses: Vec::with_capacity(max_batch),
            preds: vec![None; max_batch],
            seen: vec![0; 1 << 10],
            warming: vec![0; 1 << 10],
            last_publish: now_ns(),
            delay: std::env::var("TICKINFER_TEST_SHADOW_DELAY_US")
                .ok()
                .and_then(|us| us.parse().ok())
                .map(Duration::from_micros),
        }
    }

    /// Until the scoring thread drops its end and the queue is drained.
    fn run(mut self) {
        let mut idle = IDLE_SHORTEST;
        loop {
            self.collect();
            if self.records.is_empty() {
                if matches!(self.rx.peek(), Ok(Msg::Handover)) {
                    let _ = self.rx.pop();
                    self.handover();
                    continue;
                }
                if self.rx.is_abandoned() && self.rx.is_empty() {
                    self.publish();
                    return;
                }
                if now_ns() - self.last_publish > PUBLISH_EVERY_NS {
                    self.publish();
                }
                std::thread::park_timeout(idle);
                idle = (idle * 2).min(IDLE_LONGEST);
                continue;
            }
            idle = IDLE_SHORTEST;
            if let Some(pause) = self.delay {
                std::thread::sleep(pause);
            }
            self.score();
            // Relaxed: a gauge.
            self.shadow.queued.store(self.rx.slots() as u64, Ordering::Relaxed);
            if now_ns() - self.last_publish > PUBLISH_EVERY_NS {
                self.publish();
            }
        }
    }

    /// The next run of records: up to the model's batch, stopping before a handover and
    /// before a hole (a run is scored on one unbroken stretch of the stream).
    fn collect(&mut self) {
        self.records.clear();
        let max = self.preds.len();
        while self.records.len() < max {
            match self.rx.peek() {
                Ok(Msg::Score(r)) if self.records.is_empty() || !r.gap => {
                    let r = *r;
                    let _ = self.rx.pop();
                    self.records.push(r);
                }
                _ => break,
            }
        }
    }

    fn score(&mut self) {
        let Runner { bundle, counts, records, reqs, statuses, preds, seen, warming, .. } = self;
        let b = bundle.as_mut().expect("a bundle outside a handover");
        if records[0].gap {
            // Requests dropped before this one: no symbol's history is whole. Every symbol
            // starts again, and the shadow is stale until each one seen has warmed again.
            b.state.reset(None);
            counts.gaps += 1;
            counts.stale = true;
            counts.warming_symbols = seen.iter().map(|w| w.count_ones() as u64).sum();
            warming.copy_from_slice(seen);
        }
        reqs.clear();
        statuses.clear();
        for r in records.iter() {
            let status = match b.state.admit_at(r.req.symbol_id, r.seen_ns) {
                Admitted::Yes | Admitted::Evicting(_) => {
                    reqs.push(r.req);
                    Status::Ok
                }
                Admitted::No => Status::TooManySymbols,
            };
            statuses.push(status);
        }
        let n = reqs.len();
        let ran = if n > 0 {
            let t0 = now_ns();
            let r = b.engine.predict(reqs, &mut b.state, &mut preds[..n]);
            counts.inference.saturating_record(now_ns() - t0);
            if let Err(e) = &r {
                log::error!("shadow {}: model run of {n} requests failed: {e}", b.engine.info().name);
            }
            r.is_ok()
        } else {
            true
        };
        let mut k = 0;
        for (r, &status) in records.iter().zip(statuses.iter()) {
            let mut resp = MlResponse::error(r.req.request_id, r.req.symbol_id, status, 0);
            if status == Status::Ok {
                match preds[k] {
                    Some(p) if ran => crate::server::stage::signal_into(&mut resp, &p),
                    _ => resp.status = Status::ModelFailure.code(),
                }
                k += 1;
            }
            b.quality.observe(&r.req, &resp, &mut b.tally);
            counts.scored += 1;
            let ours = resp.status == Status::Ok.code();
            match (r.status == Status::Ok.code(), ours) {
                (true, true) => counts.agreement[index(r.direction)][index(resp.direction)] += 1,
                (true, false) => counts.shadow_only_failed += 1,
                (false, true) => counts.primary_only_failed += 1,
                (false, false) => {}
            }
            let symbol = r.req.symbol_id;
            set_bit(seen, symbol, true);
            if ours {
                let warm_now = resp.flags & RESPONSE_WARMING != 0;
                if warm_now != bit(warming, symbol) {
                    set_bit(warming, symbol, warm_now);
                    if warm_now {
                        counts.warming_symbols += 1;
                    } else {
                        counts.warming_symbols -= 1;
                    }
                }
            }
        }
        if counts.stale && counts.warming_symbols == 0 {
            counts.stale = false;
        }
    }

    /// A promotion: hand the bundle over, wait for the old primary's, become its shadow.
    fn handover(&mut self) {
        // Acquire: pairs with the scoring thread's Release store of ASKED (or BROKEN).
        if self.shadow.handover.load(Ordering::Acquire) != ASKED {
            return; // a handover the scoring thread gave up on: out of step, stays so
        }
        let ours = self.bundle.take().expect("a bundle outside a handover");
        if let Ok(mut x) = self.shadow.exchange.lock() {
            *x = Some(ours);
        }
        // AcqRel: publishes the bundle; fails when the scoring thread gave up just now.
        if self.shadow.handover.compare_exchange(ASKED, HANDED, Ordering::AcqRel, Ordering::Acquire).is_err()
        {
            self.bundle = self.shadow.exchange.lock().ok().and_then(|mut x| x.take());
            return;
        }
        // The scoring thread installs ours and hands back the old primary's at once.
        while self.shadow.handover.load(Ordering::Acquire) != RETURNED {
            std::thread::park_timeout(Duration::from_micros(100));
        }
        let theirs = self.shadow.exchange.lock().ok().and_then(|mut x| x.take());
        self.bundle = theirs;
        debug_assert!(self.bundle.is_some(), "the scoring thread returns a bundle");
        let max_batch = self.bundle.as_ref().map_or(1, |b| b.engine.max_batch());
        if max_batch != self.preds.len() {
            self.preds = vec![None; max_batch];
            self.records = Vec::with_capacity(max_batch);
            self.reqs = Vec::with_capacity(max_batch);
            self.statuses = Vec::with_capacity(max_batch);
        }
        // Counters start afresh for the model this shadow runs now (its quality counts come
        // with its bundle); the symbols seen and warming are the old primary's, warm.
        self.counts = Counts::new();
        self.warming.iter_mut().for_each(|w| *w = 0);
        self.shadow.dropped.store(0, Ordering::Relaxed);
        self.shadow.handover.store(IDLE, Ordering::Release);
        self.publish();
    }

    fn publish(&mut self) {
        self.last_publish = now_ns();
        if let Some(b) = &self.bundle {
            self.counts.tally.clone_from(&b.tally);
        }
        if let Ok(mut p) = self.shadow.published.lock() {
            p.clone_from(&self.counts);
        }
        self.shadow.queued.store(self.rx.slots() as u64, Ordering::Relaxed);
    }
}
