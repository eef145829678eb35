//! The scoring stage, shared by inline and pipeline modes: a run of jobs in,
//! one response per job out, in the same order. It owns the per-symbol state
//! ([`State`]): runnable jobs update it in the order they arrive here, so
//! batching never changes an answer.

use crate::clock::now_ns;
use crate::engine::Engine;
use crate::manifest::Prediction;
use crate::quality::Quality;
use crate::ratelog::RateLimited;
use crate::shadow::{Primary, Registry, Taps};
use crate::state::{Admitted, State};
use crate::stats::Stats;
use crate::wire::{MlRequest, MlResponse, Status, RESPONSE_END, RESPONSE_WARMING};

/// One request on its way through the pipeline.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    /// Connection slot and its generation (see `transport::Conn::generation`).
    pub slot: u32,
    pub generation: u32,
    /// `CLOCK_MONOTONIC` ns when the bytes were read.
    pub recv_ns: u64,
    /// `Ok`: run the model. Anything else: answer with this status, in order.
    pub status: Status,
    pub req: MlRequest,
}

/// One answer on its way back to its connection.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    pub slot: u32,
    pub generation: u32,
    pub resp: MlResponse,
}

/// A prediction's signal into its answer (direction, confidence, target, warming flag).
#[inline]
pub fn signal_into(resp: &mut MlResponse, p: &Prediction) {
    resp.direction = p.direction;
    resp.confidence = p.confidence;
    resp.target_price = p.target_price;
    if p.warming {
        resp.flags |= RESPONSE_WARMING;
    }
}

/// Jobs one call of [`Scorer::score`] looks at per batch at most (runnable or not).
const SPAN: usize = 1024;

/// Runs the model over jobs, batching consecutive runnable ones.
pub struct Scorer {
    engine: Engine,
    /// Per-symbol history of the stateful features (empty for a stateless model).
    state: State,
    /// The status each job of the batch being collected is answered with (capacity `SPAN`).
    statuses: Vec<Status>,
    model_version: u32,
    max_batch: usize,
    /// Requests of the batch being run; capacity `max_batch`, never grows.
    batch: Vec<MlRequest>,
    /// Their signals; `None` where the model's output was not finite.
    preds: Vec<Option<Prediction>>,
    /// Non-finite outputs are logged at most once a second.
    nonfinite_log: RateLimited,
    /// Symbol evictions (`--evict-idle-symbols-ms`) likewise.
    eviction_log: RateLimited,
    /// `--keep-warm-us`: the made-up request a keep-warm run scores, and that run's own
    /// one-symbol state (the serving state never sees it).
    warm_req: MlRequest,
    warm_state: State,
    warm_log: RateLimited,
    /// Live signal quality: every answer scored when its symbol's mid reaches the horizon.
    quality: Quality,
    /// Shadow candidates: each request admitted to the model, with its answer, queued for
    /// each (never waited for).
    shadows: Taps,
    /// The answers of the last [`Scorer::answer`], in job order, until [`Scorer::observe`]
    /// gives them to quality and the shadows (capacity `ANSWERED`, never grows).
    answered: Vec<MlResponse>,
    /// The clock of that call (0 when stateless without shadows: no symbol ages).
    answered_seen_ns: u64,
}

/// Jobs one call of [`Scorer::answer`] takes at most without allocating: the inline stage's
/// buffer (a pipeline worker's batch is smaller unless `max_batch` is larger still).
const ANSWERED: usize = super::INLINE_JOBS;

impl Scorer {
    /// `max_symbols`: state slots for a stateful model (allocated now).
    pub fn new(engine: Engine, max_symbols: usize) -> Scorer {
        let max_batch = engine.max_batch();
        let state = engine.new_state(max_symbols);
        if !state.is_stateless() {
            log::info!(
                "per-symbol state: {} symbols x {} B = {:.1} MiB, allocated",
                max_symbols,
                state.spec().bytes_per_symbol(),
                state.bytes() as f64 / (1 << 20) as f64
            );
        }
        Scorer {
            quality: Quality::new(engine.manifest(), max_symbols),
            state,
            warm_req: engine.warm_request(0),
            warm_state: engine.new_state(1),
            warm_log: RateLimited::new(1_000_000_000),
            statuses: Vec::with_capacity(SPAN),
            model_version: engine.info().version,
            engine,
            max_batch,
            batch: Vec::with_capacity(max_batch),
            preds: vec![None; max_batch],
            nonfinite_log: RateLimited::new(1_000_000_000),
            eviction_log: RateLimited::new(1_000_000_000),
            shadows: Taps::default(),
            answered: Vec::with_capacity(ANSWERED.max(max_batch)),
            answered_seen_ns: 0,
        }
    }

    /// `--evict-idle-symbols-ms`: a new symbol may take the slot of the least recently
    /// seen one idle that long, when every slot is taken ([`State::set_eviction`]).
    pub fn with_symbol_eviction(mut self, idle: Option<std::time::Duration>) -> Scorer {
        self.state.set_eviction(idle);
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Between two runs: apply a pending state reset, swap in a pending reloaded engine.
    /// A new engine keeps the state when its state spec is the same (same history kept
    /// per symbol; a sequence model's same window over the same features, or the same
    /// recurrent weights); otherwise the state starts empty (logged).
    #[inline]
    pub fn poll_reload(&mut self, slot: &super::reload::ReloadSlot) {
        if let Some(symbol) = slot.take_reset() {
            self.state.reset(symbol);
            match symbol {
                Some(s) => log::info!("state of symbol {s} reset"),
                None => log::info!("state of every symbol reset ({} symbols)", self.state.symbols()),
            }
            slot.reset_done();
        }
        if !slot.poll(&mut self.engine) {
            return;
        }
        if self.engine.state_spec() == self.state.spec() {
            if !self.state.is_stateless() {
                log::info!("reload: same state spec, {} symbols' state kept", self.state.symbols());
            }
        } else {
            // Once per reload, on this thread: the new table is allocated and the old one freed here.
            log::warn!(
                "reload: the stateful features or sequence memory changed: every symbol's state starts empty"
            );
            let eviction = self.state.eviction();
            self.state = self.engine.new_state(self.state.max_symbols());
            self.state.set_eviction(eviction);
        }
        self.quality.reload(self.engine.manifest());
        self.model_changed();
    }

    /// Between two runs: apply a pending shadow change (`crate::shadow`); a promotion swaps
    /// in the shadow's engine, state and quality (its counts into `stats`), warm.
    #[inline]
    pub fn poll_shadows(
        &mut self,
        shadows: &Registry,
        serving: &super::reload::ReloadSlot,
        stats: &mut Stats,
    ) {
        if !shadows.is_pending() {
            return;
        }
        let primary = Primary {
            engine: &mut self.engine,
            state: &mut self.state,
            quality: &mut self.quality,
            tally: &mut stats.quality,
        };
        if shadows.poll(&mut self.shadows, primary, serving) {
            log::info!(
                "promoted: {} v{} serves from the next request, with its warm state ({} symbols)",
                self.engine.info().name,
                self.engine.info().version,
                self.state.symbols()
            );
            self.model_changed();
        }
    }

    /// After the engine changed (a reload or a promotion): what follows from the model.
    fn model_changed(&mut self) {
        self.model_version = self.engine.info().version;
        self.warm_req = self.engine.warm_request(0);
        if self.engine.state_spec() != self.warm_state.spec() {
            self.warm_state = self.engine.new_state(1);
        }
        if self.engine.max_batch() != self.max_batch {
            self.max_batch = self.engine.max_batch();
            self.batch = Vec::with_capacity(self.max_batch);
            self.preds = vec![None; self.max_batch];
        }
    }

    /// `--keep-warm-us`: one model run on a made-up request, with its own state, the
    /// output dropped — keeps the model's code and weights in cache while no request
    /// comes (see [`crate::keep_warm`]). Counted in `stats.keep_warm_runs`, in no
    /// latency histogram. No allocation.
    pub fn keep_warm(&mut self, stats: &mut Stats) {
        if let Err(e) = self.engine.run_rows(std::slice::from_ref(&self.warm_req), &mut self.warm_state) {
            if let Some(left_out) = self.warm_log.event(now_ns()) {
                log::error!("keep-warm model run failed: {e} ({left_out} more such lines left out)");
            }
        }
        stats.keep_warm_runs += 1;
    }

    /// Score `jobs` and call `emit` once per job, in order, then [`Scorer::observe`] them:
    /// [`Scorer::answer`] and [`Scorer::observe`] in one call. No allocation.
    pub fn score(&mut self, jobs: &[Job], stats: &mut Stats, emit: impl FnMut(Done)) {
        self.answer(jobs, stats, emit);
        self.observe(jobs, stats);
    }

    /// Give the answers of the last [`Scorer::answer`] (`jobs`, the same slice) to live
    /// signal quality and the shadows, in order — after the answers are on their way: the
    /// request's path does not wait for them (in situ, quality's tables cost ~0.2 µs a
    /// request on the Unix socket's round trip, measured). Due before the next `answer`,
    /// reload or promotion (the stage calls it first thing). No allocation.
    pub fn observe(&mut self, jobs: &[Job], stats: &mut Stats) {
        debug_assert_eq!(jobs.len(), self.answered.len(), "observe the jobs last answered");
        let seen_ns = self.answered_seen_ns;
        for (job, resp) in jobs.iter().zip(&self.answered) {
            self.quality.observe(&job.req, resp, &mut stats.quality);
            if !self.shadows.is_empty() && job.status == Status::Ok {
                self.shadows.offer(&job.req, seen_ns, resp);
            }
        }
        self.answered.clear();
    }

    /// Score `jobs` and call `emit` once per job, in order; [`Scorer::observe`] is due next.
    /// Runnable jobs are run in batches of up to `max_batch` (a batch spans the error answers
    /// between them). No allocation for up to `ANSWERED` jobs.
    pub fn answer(&mut self, jobs: &[Job], stats: &mut Stats, mut emit: impl FnMut(Done)) {
        debug_assert!(self.answered.is_empty(), "the last answers were observed");
        debug_assert!(jobs.len() <= self.answered.capacity(), "more jobs than ANSWERED");
        // One clock for the whole call: a symbol admitted in it is never idle within it.
        // Shadows admit symbols at the same instant (their state may be stateful).
        let seen_ns = if self.state.is_stateless() && self.shadows.is_empty() { 0 } else { now_ns() };
        self.answered_seen_ns = seen_ns;
        let mut start = 0;
        while start < jobs.len() {
            // Take jobs until max_batch runnable ones are collected (at most SPAN looked at).
            self.batch.clear();
            self.statuses.clear();
            let mut end = start;
            while end < jobs.len() && self.batch.len() < self.max_batch && end - start < SPAN {
                let job = &jobs[end];
                let status = match job.status {
                    // A stateful model gives a new symbol a slot, or refuses it when none is left.
                    Status::Ok => match self.state.admit_at(job.req.symbol_id, seen_ns) {
                        Admitted::Yes => Status::Ok,
                        Admitted::No => Status::TooManySymbols,
                        Admitted::Evicting(old) => {
                            stats.symbols_evicted += 1;
                            if let Some(left_out) = self.eviction_log.event(seen_ns) {
                                log::info!(
                                    "symbol {} takes the state slot of symbol {old}, the least recently seen \
                                     (idle past --evict-idle-symbols-ms) ({left_out} more evictions since the \
                                     last such line)",
                                    { job.req.symbol_id }
                                );
                            }
                            Status::Ok
                        }
                    },
                    s => s,
                };
                if status == Status::Ok {
                    self.batch.push(job.req);
                }
                self.statuses.push(status);
                end += 1;
            }
            let n = self.batch.len();
            let t0 = now_ns();
            let (outcome, t1) = if n > 0 {
                let r = self.engine.predict(&self.batch, &mut self.state, &mut self.preds[..n]);
                let t1 = now_ns();
                stats.inference.saturating_record(t1 - t0);
                stats.batch.saturating_record(n as u64);
                if let Err(e) = &r {
                    log::error!("model run of {n} requests failed: {e}");
                }
                (r.is_ok(), t1)
            } else {
                (true, t0)
            };
            let mut k = 0;
            for (job, &status) in jobs[start..end].iter().zip(&self.statuses) {
                stats.queue.saturating_record(t0.saturating_sub(job.recv_ns));
                let mut resp = MlResponse::error(job.req.request_id, job.req.symbol_id, status, job.recv_ns);
                if status == Status::Ok {
                    match self.preds[k] {
                        Some(p) if outcome => signal_into(&mut resp, &p),
                        None if outcome => {
                            resp.status = Status::ModelFailure.code();
                            stats.nonfinite_outputs += 1;
                            if let Some(left_out) = self.nonfinite_log.event(t1) {
                                log::error!(
                                    "model output for request {} (symbol {}) is NaN or infinite: answered {} \
                                     ({left_out} more since the last such line)",
                                    { job.req.request_id },
                                    { job.req.symbol_id },
                                    Status::ModelFailure
                                );
                            }
                        }
                        _ => resp.status = Status::ModelFailure.code(),
                    }
                    resp.inference_latency_ns = t1 - t0;
                    resp.batch_size = n as u16;
                    resp.model_version = self.model_version;
                    k += 1;
                }
                debug_assert_eq!({ resp.frame_end }, RESPONSE_END);
                self.answered.push(resp);
                emit(Done { slot: job.slot, generation: job.generation, resp });
            }
            start = end;
        }
    }
}
