//! Hot model reload: the control plane loads, validates and warms up a new
//! engine off the hot path; the scoring thread swaps it in between two model
//! runs (one atomic load per loop turn when nothing is pending), and hands the
//! old engine back to be dropped off the hot path.
//!
//! The scoring thread may be asleep (an idle server in block or adaptive
//! polling, or spinning with no jobs): the control plane wakes it through the
//! waker the server registered, and the scoring thread polls the slot on every
//! loop turn, jobs or not, so a reload before the open takes milliseconds.
//!
//! A reload reports failure only when the new engine was taken back unswapped:
//! the scoring thread swaps while holding `incoming`'s lock, so at the deadline
//! the control plane either finds its engine still there (not swapped: taken
//! back, failure) or gone (swapped: success).
//!
//! A reload must keep the wire contract the connected clients were given in
//! their hello ack: the same price scale and the same number of extra
//! features. A model that changes either is refused (restart the server for
//! that), and a model that fails to load or validate is refused with the
//! reason; in both cases the old model keeps serving.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::engine::{Engine, EngineOptions, ModelInfo};

/// The serving model: its info, manifest path, and the options it was loaded with.
type Current = (ModelInfo, PathBuf, EngineOptions);

/// Wakes the scoring thread (the I/O loop's mio waker, or an unpark of the worker).
type Wake = Box<dyn Fn() + Send + Sync>;

/// `ReloadSlot::reset` when no reset is pending (the default, 0, would be symbol 0).
const NO_RESET: u32 = 0;
/// Reset every symbol.
const RESET_ALL: u32 = 1 << 16;
/// A symbol's reset is stored as `symbol + RESET_SYMBOL` (0 stays "none").
const RESET_SYMBOL: u32 = 1 << 17;

/// How long a reload waits for the scoring thread to take the new engine.
const SWAP_TIMEOUT: Duration = Duration::from_secs(30);

/// How a wait for the scoring thread ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waited {
    Done,
    /// The scoring thread stopped (the server drained).
    Stopped,
    TimedOut,
}

/// Shared between the control plane and the scoring thread.
#[derive(Default)]
pub struct ReloadSlot {
    /// A new engine waits in `incoming`.
    pending: AtomicBool,
    /// The new engine and what becomes `current` when it is swapped in.
    incoming: Mutex<Option<(Engine, Current)>>,
    /// The engine swapped out, to be dropped by the control plane.
    retired: Mutex<Option<Engine>>,
    /// Incremented by the scoring thread after each swap.
    swaps: AtomicU64,
    /// The serving model, its manifest path and the engine options to load with.
    current: Mutex<Option<Current>>,
    /// One reload at a time.
    busy: Mutex<()>,
    /// The scoring thread has stopped (the server drained): no swap can happen any more.
    closed: AtomicBool,
    /// Wakes the scoring thread when a new engine is pending.
    wake: std::sync::OnceLock<Wake>,
    /// How long to wait for the swap; `None`: [`SWAP_TIMEOUT`].
    swap_timeout: Option<Duration>,
    /// A state reset for the scoring thread: [`NO_RESET`], [`RESET_ALL`], or a symbol id.
    reset: AtomicU32,
    /// Resets applied by the scoring thread.
    resets_done: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl ReloadSlot {
    /// A slot whose reloads wait at most `swap_timeout` for the swap (tests).
    pub fn with_swap_timeout(swap_timeout: Duration) -> ReloadSlot {
        ReloadSlot { swap_timeout: Some(swap_timeout), ..Default::default() }
    }

    /// Register how to wake the scoring thread (once, when the server starts).
    pub fn set_waker(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.wake.set(Box::new(wake));
    }

    /// The scoring thread stopped: reloads from now on (and one waiting now) are refused.
    pub fn close(&self) {
        // Release: pairs with the Acquire loads in `reload_inner`.
        self.closed.store(true, Ordering::Release);
    }

    /// Wake the scoring thread (something waits for it: a shadow change).
    pub fn wake(&self) {
        if let Some(wake) = self.wake.get() {
            wake();
        }
    }

    /// The scoring thread has stopped.
    pub fn is_closed(&self) -> bool {
        // Acquire: pairs with `close`'s Release store.
        self.closed.load(Ordering::Acquire)
    }

    /// The serving model's info and the engine options it was loaded with.
    pub fn current_with_options(&self) -> Option<(ModelInfo, EngineOptions)> {
        self.current.lock().ok()?.as_ref().map(|(i, _, o)| (i.clone(), o.clone()))
    }

    /// Scoring thread, at a promotion (`crate::shadow`): `info` from `path` serves now (with
    /// the same engine options); the old record is returned. New connections learn it as
    /// after a reload.
    pub fn promoted(&self, info: ModelInfo, path: PathBuf) -> Option<(ModelInfo, PathBuf)> {
        let old = {
            let mut c = self.current.lock().ok()?;
            let (old_info, old_path, opts) = c.take()?;
            *c = Some((info, path, opts));
            (old_info, old_path)
        };
        // Release: whoever sees the count move reads the new `current`.
        self.swaps.fetch_add(1, Ordering::Release);
        Some(old)
    }

    /// Record the model the server started with.
    pub fn set_current(&self, info: ModelInfo, path: PathBuf, opts: EngineOptions) {
        if let Ok(mut c) = self.current.lock() {
            *c = Some((info, path, opts));
        }
    }

    /// A new engine or a state reset waits for the scoring thread (it must not sleep long).
    #[inline]
    pub fn is_pending(&self) -> bool {
        // Acquire: pairs with the Release stores in `reload` (after `incoming` was filled) and
        // `reset_state`.
        self.pending.load(Ordering::Acquire) || self.reset.load(Ordering::Acquire) != NO_RESET
    }

    /// Wake the scoring thread, then wait until `done` holds, the scoring thread stops,
    /// or the swap timeout passes. Blocking.
    fn wake_and_wait(&self, done: impl Fn() -> bool) -> Waited {
        if let Some(wake) = self.wake.get() {
            wake();
        }
        let timeout = self.swap_timeout.unwrap_or(SWAP_TIMEOUT);
        let t0 = Instant::now();
        loop {
            if done() {
                return Waited::Done;
            }
            // Acquire: pairs with `close`'s Release store.
            if self.closed.load(Ordering::Acquire) {
                return Waited::Stopped;
            }
            if t0.elapsed() > timeout {
                return Waited::TimedOut;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Control plane: clear the per-symbol state of `symbol` (or of all) and wait until the
    /// scoring thread did it. Blocking (use a blocking thread).
    pub fn reset_state(&self, symbol: Option<u16>) -> Result<(), String> {
        let _one = self.busy.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return Err("the server is stopping".into());
        }
        let before = self.resets_done.load(Ordering::Acquire);
        let code = symbol.map_or(RESET_ALL, |s| s as u32 + RESET_SYMBOL);
        // Release: pairs with `take_reset`'s AcqRel swap (nothing else is published with it).
        self.reset.store(code, Ordering::Release);
        // Acquire: pairs with `reset_done`'s Release increment.
        if self.wake_and_wait(|| self.resets_done.load(Ordering::Acquire) != before) == Waited::Done {
            return Ok(());
        }
        // Taken back unless the scoring thread took it just now (it is then applied).
        match self.reset.compare_exchange(code, NO_RESET, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Err("the scoring thread did not take the reset; nothing was reset".into()),
            Err(_) => Ok(()),
        }
    }

    /// Scoring thread: a pending reset, taken (`Some(None)`: every symbol).
    #[inline]
    pub fn take_reset(&self) -> Option<Option<u16>> {
        // Relaxed first (the common case, nothing pending), then the swap with Acquire.
        if self.reset.load(Ordering::Relaxed) == NO_RESET {
            return None;
        }
        match self.reset.swap(NO_RESET, Ordering::AcqRel) {
            NO_RESET => None,
            RESET_ALL => Some(None),
            code => Some(Some((code - RESET_SYMBOL) as u16)),
        }
    }

    /// Scoring thread: the reset taken by [`take_reset`](Self::take_reset) is applied.
    pub fn reset_done(&self) {
        // Release: the control plane's Acquire load sees the reset done.
        self.resets_done.fetch_add(1, Ordering::Release);
    }

    /// Swaps done so far (a reload changed the model when this moves).
    #[inline]
    pub fn swaps(&self) -> u64 {
        // Acquire: pairs with the Release increment in `poll`, made after `current` was updated.
        self.swaps.load(Ordering::Acquire)
    }

    /// The serving model's info and manifest path.
    pub fn current(&self) -> Option<(ModelInfo, PathBuf)> {
        self.current.lock().ok()?.as_ref().map(|(i, p, _)| (i.clone(), p.clone()))
    }

    /// Scoring thread, between two runs: swap in a pending engine.
    #[inline]
    /// Returns whether `engine` was replaced.
    pub fn poll(&self, engine: &mut Engine) -> bool {
        // Acquire: pairs with the Release store in `reload`, after `incoming` was filled.
        if !self.pending.load(Ordering::Acquire) {
            return false;
        }
        let Ok(mut incoming) = self.incoming.try_lock() else { return false };
        if let Some((new, current)) = incoming.take() {
            let old = std::mem::replace(engine, new);
            if let Ok(mut r) = self.retired.lock() {
                *r = Some(old);
            }
            // Before the count moves, so whoever sees the new count reads the new model's info.
            if let Ok(mut c) = self.current.lock() {
                *c = Some(current);
            }
            // Release (both): whoever sees `pending` cleared or the count moved also sees the
            // retired engine and the new `current`.
            self.swaps.fetch_add(1, Ordering::Release);
            self.pending.store(false, Ordering::Release);
            return true;
        }
        false
    }

    /// Control plane: load `manifest`, check it against the serving model,
    /// hand it over and wait for the swap. Blocking (use a blocking thread).
    pub fn reload(&self, manifest: &Path) -> Result<ModelInfo, String> {
        // One reload at a time. Never poisoned for good: a panic while loading is caught below,
        // and a lock poisoned anyway (by a panic elsewhere) guards nothing that can be torn.
        let _one = self.busy.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A model that panics the loader (a bug) refuses the reload; the old model keeps serving
        // and later reloads and resets still work.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.reload_inner(manifest)))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(format!("loading the model panicked ({what}): a bug in tickinfer, please report it"))
            });
        let counter = if result.is_ok() { &self.reloads_ok } else { &self.reloads_failed };
        counter.fetch_add(1, Ordering::Relaxed);
        match &result {
            Ok(i) => log::info!("reload: now serving {} v{} from {}", i.name, i.version, manifest.display()),
            Err(e) => {
                log::warn!("reload of {} refused, the old model keeps serving: {e}", manifest.display())
            }
        }
        result
    }

    fn reload_inner(&self, manifest: &Path) -> Result<ModelInfo, String> {
        const STOPPED: &str = "the server is stopping; not swapped";
        if self.closed.load(Ordering::Acquire) {
            return Err(STOPPED.into());
        }
        let (serving, _, opts) =
            self.current.lock().map_err(|_| "poisoned")?.clone().ok_or("the server is not serving yet")?;
        let engine = Engine::load(manifest, &opts).map_err(|e| e.to_string())?;
        let new = engine.info().clone();
        same_wire(&serving, &new)?;
        let next = (new.clone(), manifest.to_path_buf(), opts);
        *self.incoming.lock().map_err(|_| "poisoned")? = Some((engine, next));
        // Release: the scoring thread's Acquire load of `pending` sees `incoming` filled.
        self.pending.store(true, Ordering::Release);
        // Acquire: pairs with `poll`'s Release store after the swap.
        let waited = self.wake_and_wait(|| !self.pending.load(Ordering::Acquire));
        if waited != Waited::Done {
            // The swap happens under this lock: holding it, `incoming` tells the truth.
            let mut incoming = self.incoming.lock().map_err(|_| "poisoned")?;
            if incoming.take().is_some() {
                self.pending.store(false, Ordering::Relaxed);
                return Err(match waited {
                    Waited::Stopped => STOPPED.into(),
                    _ => format!(
                        "the scoring thread did not take the new model within {:?}; \
                         not swapped, the old model keeps serving",
                        self.swap_timeout.unwrap_or(SWAP_TIMEOUT)
                    ),
                });
            }
            // Taken just now: swapped.
        }
        // Dropped here, on the control plane, not on the hot path.
        drop(self.retired.lock().map_err(|_| "poisoned")?.take());
        Ok(new)
    }
}

/// Whether `new` keeps the wire contract the clients of a server serving `serving` were
/// given in their hello ack (the same size scale, price scale and extra features): what a
/// reload, and a shadow that may be promoted, must keep.
pub fn same_wire(serving: &ModelInfo, new: &ModelInfo) -> Result<(), String> {
    if new.size_scale != serving.size_scale {
        return Err(format!(
            "size_scale {} differs from the serving model's {} (clients were told {}); restart the server to change it",
            new.size_scale, serving.size_scale, serving.size_scale
        ));
    }
    if new.price_scale != serving.price_scale {
        return Err(format!(
            "price_scale {} differs from the serving model's {} (clients were told {}); restart the server to change it",
            new.price_scale, serving.price_scale, serving.price_scale
        ));
    }
    if new.extra_features != serving.extra_features {
        return Err(format!(
            "the model reads {} extra features, the serving one {} (clients were told {}); restart the server to change it",
            new.extra_features, serving.extra_features, serving.extra_features
        ));
    }
    Ok(())
}
