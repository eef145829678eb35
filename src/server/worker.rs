//! The pipeline's inference worker: a pinned thread that owns the engine, pops
//! jobs from the request ring, scores them and pushes answers to the response
//! ring, sleeping on a doorbell when idle (block/adaptive polling).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::Waker;

use super::stage::{Done, Job, Scorer};
use super::{pin, PollMode, ServerConfig, ServerError, Shared, Stage, PUBLISH_EVERY_NS};
use crate::clock::now_ns;
use crate::engine::{Engine, ModelInfo};
use crate::ring::{self, Consumer, Doorbell, Producer};
use crate::stats::Stats;

/// The pipeline's inference worker, seen from the I/O thread.
pub(super) struct Worker {
    pub(super) jobs_tx: Producer<Job>,
    pub(super) done_rx: Consumer<Done>,
    /// The worker sleeps on this when its ring is empty (block/adaptive).
    pub(super) worker_bell: Arc<Doorbell>,
    /// The I/O thread sleeps on this when waiting in epoll (block/adaptive).
    pub(super) io_bell: Arc<Doorbell>,
    stop: Arc<AtomicBool>,
    pub(super) thread: Option<JoinHandle<()>>,
    /// Jobs were pushed since the last doorbell check.
    pub(super) pushed: bool,
    /// Jobs pushed whose answers are not popped yet: in the request ring, being scored,
    /// or in the response ring, whether or not their connection is still open.
    /// Invariant: `in_flight <= capacity`, so neither ring can overflow.
    pub(super) in_flight: usize,
    /// Slots of each ring.
    pub(super) capacity: usize,
}

impl Worker {
    pub(super) fn spawn(
        cfg: &ServerConfig,
        capacity: usize,
        core: Option<usize>,
        waker: Arc<Waker>,
        shared: Arc<Shared>,
    ) -> Result<(Stage, ModelInfo), ServerError> {
        let (jobs_tx, mut jobs_rx) = ring::ring::<Job>(capacity);
        let (mut done_tx, done_rx) = ring::ring::<Done>(capacity);
        let worker_bell = Arc::new(Doorbell::default());
        let io_bell = Arc::new(Doorbell::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (model_path, engine_opts, poll, spin, max_symbols) =
            (cfg.model.clone(), cfg.engine.clone(), cfg.poll, cfg.spin, cfg.max_symbols);
        let evict_idle_symbols = cfg.evict_idle_symbols;
        let keep_warm_ns = cfg.keep_warm.map(|d| d.as_nanos() as u64);
        let (wb, ib, st) = (worker_bell.clone(), io_bell.clone(), stop.clone());
        let control = shared.clone();
        let thread = std::thread::Builder::new().name("tickinfer-worker".into()).spawn(move || {
            pin(core, "inference worker");
            crate::engine::fpenv::denormals_as_zero();
            // The engine is built on the thread that runs it (ORT sessions stay on one thread).
            let mut scorer = match Engine::load(&model_path, &engine_opts) {
                Ok(engine) => {
                    let _ = ready_tx.send(Ok(engine.info().clone()));
                    Scorer::new(engine, max_symbols).with_symbol_eviction(evict_idle_symbols)
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let max_batch = scorer.engine().max_batch();
            let mut jobs = Vec::with_capacity(max_batch);
            let mut stats = Stats::default();
            let mut last_work = now_ns();
            let mut last_warm = now_ns();
            let mut last_publish = now_ns();
            loop {
                // Every turn, jobs or not: an idle worker takes a reload at once (one atomic load).
                scorer.poll_reload(&shared.reload);
                scorer.poll_shadows(&shared.shadows, &shared.reload, &mut stats);
                jobs.clear();
                if ring::pop_into(&mut jobs_rx, &mut jobs, max_batch) == 0 {
                    // Acquire: pairs with the I/O thread's Release store after its last push.
                    if st.load(Ordering::Acquire) && jobs_rx.is_empty() {
                        break;
                    }
                    let idle_ns = now_ns() - last_work;
                    let spin_more = match poll {
                        PollMode::Spin => true,
                        PollMode::Adaptive => idle_ns < spin.as_nanos() as u64,
                        PollMode::Block => false,
                    };
                    if spin_more {
                        // --keep-warm-us: one model run once idle that long (crate::keep_warm).
                        if keep_warm_ns.is_some_and(|every| now_ns() - last_work.max(last_warm) >= every) {
                            scorer.keep_warm(&mut stats);
                            last_warm = now_ns();
                        }
                        std::hint::spin_loop();
                    } else {
                        wb.announce_sleep();
                        if jobs_rx.is_empty()
                            && !st.load(Ordering::Acquire)
                            && !shared.reload.is_pending()
                            && !shared.shadows.is_pending()
                        {
                            std::thread::park_timeout(Duration::from_millis(100));
                        }
                        wb.wake_pending();
                    }
                    if now_ns() - last_publish > PUBLISH_EVERY_NS {
                        publish(&mut stats, &shared.stats, false);
                        last_publish = now_ns();
                    }
                    continue;
                }
                scorer.answer(&jobs, &mut stats, |done| {
                    if done_tx.push(done).is_err() {
                        // The I/O thread counts every job until its answer is popped and
                        // keeps that count within the capacity of each ring.
                        unreachable!("response ring full: more jobs in flight than its capacity");
                    }
                });
                last_work = now_ns();
                if ib.should_wake() {
                    let _ = waker.wake();
                }
                // The answers are out: now their quality and shadow taps.
                scorer.observe(&jobs, &mut stats);
            }
            publish(&mut stats, &shared.stats, true);
        })?;
        let model = match ready_rx.recv() {
            Ok(Ok(model)) => model,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(ServerError::Worker("the worker thread died while loading the model".into()))
            }
        };
        let worker_thread = thread.thread().clone();
        control.reload.set_waker(move || worker_thread.unpark());
        let worker = Worker {
            jobs_tx,
            done_rx,
            worker_bell,
            io_bell,
            stop,
            thread: Some(thread),
            pushed: false,
            in_flight: 0,
            capacity,
        };
        Ok((Stage::Pipeline(worker), model))
    }

    pub(super) fn stop(&mut self) {
        // Release: the worker's Acquire load sees every job pushed before this.
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fold `local` into `shared`: with `try_lock` on the hot path (never wait),
/// with `lock` when `force`.
pub(super) fn publish(local: &mut Stats, shared: &Mutex<Stats>, force: bool) {
    if local.is_empty() {
        return;
    }
    let guard = if force { shared.lock().ok() } else { shared.try_lock().ok() };
    if let Some(mut s) = guard {
        s.merge(local);
        local.reset();
    }
}
