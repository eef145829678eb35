//! The live verifier: while a native evaluator serves, one of its answers in
//! `verify_every` is re-run on ONNX Runtime off the hot path, on the same feature row
//! and (recurrent models) the same input state, so that only the model is compared.
//!
//! The scoring thread's end is a [`Tap`]: a countdown per native row; a sampled row's
//! features, input state, output, returned state and request are copied into two
//! bounded SPSC rings (`rtrb`) — never a wait, never an allocation: a full ring is a
//! counted drop. The verifier thread (unpinned from the hot cores, lowered priority)
//! owns a second ONNX Runtime session of the same model (a reference [`Engine`] built on
//! that thread, so ONNX Runtime's denormals-as-zero applies there too) and compares with
//! [`gate::compare`], the load-time gate's rule. A disagreement is counted
//! (`tickinfer_backend_disagreements_total`), logged with its row at a bounded rate, and
//! with `on_disagreement = "fallback"` (the default) sets the engine's switch: the
//! scoring thread drops the native evaluator before its next run, and ONNX Runtime
//! answers from then on (`engine::run_slot`). Counters are the server's, kept across
//! reloads ([`VerifyOptions::counters`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::clock::now_ns;
use crate::engine::gate::{self, Check, Reference};
use crate::engine::{Backend, Engine, EngineError, EngineOptions, ExecutionProvider};
use crate::manifest::{Manifest, OnDisagreement};
use crate::ratelog::RateLimited;
use crate::wire::MlRequest;

/// Samples queued at most (the rings hold this many records).
const QUEUE: usize = 64;

/// How long the verifier sleeps when nothing is queued: from the shortest, doubling while
/// nothing comes, to the longest (fewer wake-ups beside the hot threads when traffic is
/// sparse; the queue holds `QUEUE` samples meanwhile).
const IDLE_SHORTEST: Duration = Duration::from_millis(1);
const IDLE_LONGEST: Duration = Duration::from_millis(16);

/// The server's verification counters, cumulative across reloads. Relaxed: statistics
/// only, no other memory is published through them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Native answers re-run on ONNX Runtime.
    pub checked: AtomicU64,
    /// Of those, answers ONNX Runtime gave differently (outside the tolerance, or a different
    /// signal from a tree ensemble).
    pub disagreed: AtomicU64,
    /// Answers within the tolerance whose decoded signal differed at a rounding edge.
    pub boundary: AtomicU64,
    /// Samples not queued because the verifier was behind.
    pub dropped: AtomicU64,
    /// Engines switched to ONNX Runtime after a disagreement.
    pub fallbacks: AtomicU64,
}

/// How the server verifies whatever model it serves natively.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Re-run one native answer in this many (0: never); `None`: the manifest's `verify_every`.
    pub every: Option<u32>,
    /// `None`: the manifest's `on_disagreement`.
    pub on_disagreement: Option<OnDisagreement>,
    pub counters: Arc<Counters>,
    /// Cores the verifier thread may run on (the server's cores not pinned to a hot thread);
    /// empty: any.
    pub cores: Vec<usize>,
}

/// One engine's verification, as its `ModelInfo` shows it.
#[derive(Clone, Debug)]
pub struct Verification {
    pub every: u32,
    pub on_disagreement: OnDisagreement,
    pub counters: Arc<Counters>,
    /// Why this engine fell back to ONNX Runtime, once it did (set by the verifier thread).
    pub fell_back: Arc<OnceLock<String>>,
}

/// The counters and the serving engine's setting, for `tickinfer stats`.
pub fn report(counters: &Counters, serving: Option<&Verification>) -> crate::stats::VerifyReport {
    // Relaxed: statistics (see `Counters`).
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    crate::stats::VerifyReport {
        every: serving.filter(|v| v.fell_back.get().is_none()).map_or(0, |v| v.every),
        on_disagreement: serving
            .map(|v| match v.on_disagreement {
                OnDisagreement::Fallback => "fallback",
                OnDisagreement::Log => "log",
            })
            .unwrap_or("")
            .to_string(),
        checked: n(&counters.checked),
        disagreed: n(&counters.disagreed),
        boundary: n(&counters.boundary),
        dropped: n(&counters.dropped),
        fallbacks: n(&counters.fallbacks),
    }
}

/// The scoring thread's end of the verifier.
pub struct Tap {
    every: u32,
    /// Native rows until the next sample (1: this one).
    countdown: u32,
    width: usize,
    memory: usize,
    /// One record: features | input state | output | returned state | ok (1.0 or 0.0).
    staging: Vec<f32>,
    floats: rtrb::Producer<f32>,
    reqs: rtrb::Producer<MlRequest>,
    counters: Arc<Counters>,
    /// Set by the verifier (Release) when a disagreement calls for ONNX Runtime; read
    /// (Acquire) by the scoring thread once per run.
    switch: Arc<AtomicBool>,
}

impl Tap {
    /// Whether this native row is sampled: one in `every`, by a countdown.
    #[inline]
    pub fn due(&mut self) -> bool {
        if self.countdown > 1 {
            self.countdown -= 1;
            false
        } else {
            self.countdown = self.every;
            true
        }
    }

    /// A sampled row, before the native step: its features and input state.
    #[inline]
    pub fn before(&mut self, x: &[f32], memory: &[f32]) {
        debug_assert_eq!((x.len(), memory.len()), (self.width, self.memory));
        self.staging[..self.width].copy_from_slice(x);
        self.staging[self.width..self.width + self.memory].copy_from_slice(memory);
    }

    /// After the step: its output, returned state and whether the state was kept; queued
    /// with its request, or counted as dropped when the verifier is behind. No allocation.
    #[inline]
    pub fn after(&mut self, req: &MlRequest, out: &[f32], memory: &[f32], ok: bool) {
        let at = self.width + self.memory;
        self.staging[at..at + out.len()].copy_from_slice(out);
        let at = at + out.len();
        self.staging[at..at + memory.len()].copy_from_slice(memory);
        *self.staging.last_mut().expect("a record has the ok flag") = if ok { 1.0 } else { 0.0 };
        let record = self.staging.len();
        if self.reqs.slots() == 0 || self.floats.slots() < record {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let chunk = self.floats.write_chunk_uninit(record).expect("slots checked above");
        chunk.fill_from_iter(self.staging.iter().copied());
        // The floats are committed first: the verifier reads them after popping the request.
        let _ = self.reqs.push(*req);
    }

    /// A disagreement called for ONNX Runtime.
    #[inline]
    pub fn fallback_requested(&self) -> bool {
        self.switch.load(Ordering::Acquire)
    }
}

/// Start verifying a native evaluator of `manifest`: the verifier thread builds its
/// reference engine (ONNX Runtime, CPU, one row) before this returns. `None` when
/// verification is off (`every` 0).
pub fn start(
    manifest: &Manifest,
    opts: &EngineOptions,
    memory: usize,
    exact: bool,
) -> Result<Option<(Tap, Verification)>, EngineError> {
    let every = opts.verify.every.unwrap_or(manifest.verify_every);
    if every == 0 {
        return Ok(None);
    }
    let policy = opts.verify.on_disagreement.unwrap_or(manifest.on_disagreement);
    let width = manifest.features.len();
    let record = width + memory + manifest.output.width() + memory + 1;
    let (floats, floats_rx) = rtrb::RingBuffer::new(QUEUE * record);
    let (reqs, reqs_rx) = rtrb::RingBuffer::new(QUEUE);
    let verification = Verification {
        every,
        on_disagreement: policy,
        counters: opts.verify.counters.clone(),
        fell_back: Arc::new(OnceLock::new()),
    };
    let switch = Arc::new(AtomicBool::new(false));
    let reference_opts = EngineOptions {
        max_batch: 1,
        warmup_runs: 1,
        intra_threads: 1,
        provider: ExecutionProvider::Cpu,
        backend: Some(Backend::Ort),
        quiet: true,
        ..opts.clone()
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let job = Verifier {
        manifest: manifest.clone(),
        floats: floats_rx,
        reqs: reqs_rx,
        record,
        memory,
        verification: verification.clone(),
        switch: switch.clone(),
        tolerance: if exact { 0.0 } else { gate::TOLERANCE },
        log: RateLimited::new(1_000_000_000),
    };
    let cores =
        if opts.verify.cores.is_empty() { off_this_threads_cores() } else { opts.verify.cores.clone() };
    std::thread::Builder::new()
        .name("tickinfer-verify".into())
        .spawn(move || {
            if let Err(e) = crate::sys::run_on_cores(&cores) {
                log::warn!("verifier: cannot keep off the hot cores ({e})");
            }
            crate::engine::fpenv::denormals_as_zero();
            match Engine::from_manifest(job.manifest.clone(), &reference_opts) {
                Ok(reference) => {
                    // Lowered once built: the load (which a reload waits for) runs at full priority.
                    let _ = crate::sys::set_thread_nice(10);
                    let _ = ready_tx.send(Ok(()));
                    job.run(reference);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| EngineError::Config(format!("cannot start the verifier thread: {e}")))?;
    ready_rx.recv().map_err(|_| EngineError::Config("the verifier thread died at start".into()))??;
    log::info!(
        "  live verification: 1 native answer in {every} re-run on ONNX Runtime off the hot path; on disagreement: {}",
        match policy {
            OnDisagreement::Fallback => "count, log, switch to ONNX Runtime",
            OnDisagreement::Log => "count and log",
        }
    );
    let tap = Tap {
        every,
        countdown: every,
        width,
        memory,
        staging: vec![0.0; record],
        floats,
        reqs,
        counters: opts.verify.counters.clone(),
        switch,
    };
    Ok(Some((tap, verification)))
}

/// The online cores but the calling thread's own when it is pinned to some of them (a
/// thread inherits its creator's affinity: a verifier started from a pinned hot thread must
/// not share its core); empty (any) when it is not pinned.
pub(crate) fn off_this_threads_cores() -> Vec<usize> {
    let mine: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    let online = std::thread::available_parallelism().map_or(1, |n| n.get()).max(crate::sys::online_cpus());
    let others: Vec<usize> = (0..online).filter(|c| !mine.contains(c)).collect();
    if mine.is_empty() || others.is_empty() {
        Vec::new()
    } else {
        others
    }
}

/// The verifier thread's state.
struct Verifier {
    manifest: Manifest,
    floats: rtrb::Consumer<f32>,
    reqs: rtrb::Consumer<MlRequest>,
    record: usize,
    memory: usize,
    verification: Verification,
    switch: Arc<AtomicBool>,
    /// The gate's: 0 for an evaluator that must be bit-identical (tree ensembles).
    tolerance: f32,
    log: RateLimited,
}

impl Verifier {
    /// Until the engine (the tap) is dropped: each queued sample re-run and compared.
    fn run(mut self, mut reference: Engine) {
        let width = self.manifest.features.len();
        let out_width = self.manifest.output.width();
        let mut record = vec![0f32; self.record];
        let (mut want, mut want_state) = (vec![0f32; out_width], vec![0f32; self.memory]);
        let tolerance = self.tolerance;
        let mut idle = IDLE_SHORTEST;
        loop {
            let req = match self.reqs.pop() {
                Ok(req) => req,
                Err(_) if self.reqs.is_abandoned() => return,
                Err(_) => {
                    std::thread::sleep(idle);
                    idle = (idle * 2).min(IDLE_LONGEST);
                    continue;
                }
            };
            idle = IDLE_SHORTEST;
            let Ok(chunk) = self.floats.read_chunk(self.record) else {
                log::error!("verifier: a request without its record (a bug): stopping");
                return;
            };
            let (a, b) = chunk.as_slices();
            record[..a.len()].copy_from_slice(a);
            record[a.len()..].copy_from_slice(b);
            chunk.commit_all();
            let (x, rest) = record.split_at(width);
            let (state_in, rest) = rest.split_at(self.memory);
            let (out, rest) = rest.split_at(out_width);
            let (state_out, ok) = rest.split_at(self.memory);
            if let Err(e) = reference.reference_rows(x, state_in, &mut want, &mut want_state) {
                log::error!("verifier: ONNX Runtime failed on a sampled row: {e}");
                continue;
            }
            let counters = &self.verification.counters;
            counters.checked.fetch_add(1, Ordering::Relaxed);
            let ours = Reference { out, state: state_out };
            let theirs = Reference { out: &want, state: &want_state };
            match gate::compare(&self.manifest, &req, tolerance, ours, ok[0] != 0.0, theirs) {
                Check::Agree(_) => {}
                Check::Boundary(_) => {
                    counters.boundary.fetch_add(1, Ordering::Relaxed);
                }
                Check::Disagree(why) => {
                    counters.disagreed.fetch_add(1, Ordering::Relaxed);
                    self.disagreement(&req, x, &why);
                }
            }
        }
    }

    fn disagreement(&mut self, req: &MlRequest, x: &[f32], why: &str) {
        let row: Vec<String> = x.iter().take(12).map(|v| format!("{v:e}")).collect();
        if let Some(left_out) = self.log.event(now_ns()) {
            log::error!(
                "verifier: the native backend disagrees with ONNX Runtime on request {} (symbol {}): {why}; \
                 features [{}{}] ({left_out} more disagreements since the last such line)",
                { req.request_id },
                { req.symbol_id },
                row.join(", "),
                if x.len() > 12 { ", …" } else { "" }
            );
        }
        if self.verification.on_disagreement == OnDisagreement::Fallback
            && self.verification.fell_back.set(format!("request {}: {why}", { req.request_id })).is_ok()
        {
            self.verification.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
            self.switch.store(true, Ordering::Release);
            log::error!(
                "verifier: switching {} to ONNX Runtime between two requests (on_disagreement = \"fallback\")",
                self.manifest.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::off_this_threads_cores;

    #[test]
    fn a_verifier_started_from_a_pinned_thread_keeps_off_its_core() {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let Some(&first) = cores.first() else { return };
        if cores.len() < 2 {
            return; // one core: nowhere else to go
        }
        std::thread::spawn(move || {
            assert!(core_affinity::set_for_current(first));
            let off = off_this_threads_cores();
            assert!(!off.is_empty() && !off.contains(&first.id), "{off:?}");
        })
        .join()
        .unwrap();
        // Unpinned (the test thread's whole mask): any core.
        if core_affinity::get_core_ids().unwrap_or_default().len() == crate::sys::online_cpus() {
            assert!(off_this_threads_cores().is_empty());
        }
    }
}
