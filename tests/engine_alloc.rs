//! Zero heap allocations per request in steady state, counted by a global
//! allocator that tallies every allocation made by this thread. Covers the
//! engine's batch-1 and batched paths (features, model run, decoding), for stateless,
//! stateful, window and recurrent models (a batch holding a symbol twice included).
//!
//! Scope: this counts Rust heap allocations (ours and the `ort` crate's).
//! ONNX Runtime's own C++ allocations go through its arena allocator and are
//! not visible to Rust's global allocator.
mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tickinfer::engine::Engine;
use tickinfer::manifest::Prediction;
use tickinfer::wire::MlRequest;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counter is a thread-local Cell.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    COUNT.with(Cell::get)
}

#[test]
fn steady_state_requests_allocate_nothing() {
    use tickinfer::engine::{Backend, EngineOptions};
    // The models with a native evaluator run on each backend: ONNX Runtime and native.
    for (manifest, backend) in [
        ("models/lobster_direction.toml", Backend::Ort),
        ("models/lobster_direction.toml", Backend::Native),
        ("tests/fixtures/models/lgbm_direction.toml", Backend::Ort),
        ("tests/fixtures/models/lgbm_direction.toml", Backend::Native),
        ("tests/fixtures/models/stateful_linear.toml", Backend::Ort),
        ("tests/fixtures/models/stateful_linear.toml", Backend::Native),
        ("tests/fixtures/models/depth_linear.toml", Backend::Ort),
        ("tests/fixtures/models/depth_linear.toml", Backend::Native),
        ("tests/fixtures/models/lstm_step.toml", Backend::Ort),
        ("tests/fixtures/models/lstm_step.toml", Backend::Native),
        ("tests/fixtures/models/lstm_window.toml", Backend::Auto),
        ("tests/fixtures/models/mlp_direction.toml", Backend::Ort),
        ("tests/fixtures/models/mlp_direction.toml", Backend::Native),
        // Native for small runs, ORT above the crossover measured at load.
        ("tests/fixtures/models/mlp_direction.toml", Backend::Auto),
    ] {
        // Every native answer sampled for the live verifier: its tap is on the counted path.
        let verify = tickinfer::verify::VerifyOptions { every: Some(1), ..Default::default() };
        let opts = EngineOptions { backend: Some(backend), verify, ..util::test_engine_options() };
        let mut engine = Engine::load(&util::repo_root().join(manifest), &opts).unwrap();
        let manifest = format!("{manifest} ({})", engine.info().backend);
        let cases = util::parity_cases(if manifest.contains("lgbm") {
            "lgbm_direction"
        } else {
            "lobster_direction"
        });
        // Symbols 0..8 with growing timestamps: a stateful model's history fills and wraps its rings.
        let mut reqs: Vec<MlRequest> = cases.iter().map(|c| c.request).cycle().take(16).collect();
        for (i, r) in reqs.iter_mut().enumerate() {
            r.symbol_id = (i % 8) as u16;
            r.timestamp_ns = 1_000 * i as u64;
        }
        // Allocated once, before counting: the state table of a stateful model.
        let mut state = engine.new_state(8);
        let mut preds = vec![None::<Prediction>; reqs.len()];

        // The counter itself works: a Vec allocates.
        assert_eq!(allocations_during(|| drop(vec![1u8; 10])), 1);

        let n = allocations_during(|| {
            for i in 0..2000 {
                let one = &reqs[i % reqs.len()..][..1];
                engine.predict(one, &mut state, &mut preds[..1]).unwrap();
            }
        });
        assert_eq!(n, 0, "{manifest}: batch-1 path allocated {n} times in 2000 requests");

        let n = allocations_during(|| {
            for _ in 0..200 {
                engine.predict(&reqs, &mut state, &mut preds).unwrap();
            }
        });
        assert_eq!(n, 0, "{manifest}: batch-16 path allocated {n} times in 200 batches");
        assert!(preds.iter().all(|p| p.is_some_and(|p| p.confidence <= 100 && p.target_price > 0)));
    }
}

/// The scoring stage with live signal quality (answers pending per symbol, scored at the
/// horizon, counted since load and in the rolling window) allocates nothing per request:
/// a horizon in events and one in ms (its window ring wraps too).
#[test]
fn scoring_with_signal_quality_allocates_nothing() {
    use tickinfer::server::stage::{Job, Scorer};
    use tickinfer::stats::Stats;
    use tickinfer::wire::Status;
    for label in [
        "[label]\nhorizon_events = 10\nflat_bps = 0.0",
        "[label]\nhorizon_ms = 5\nflat_bps = 0.5",
        "[label]\nhorizon_events = 3\nhorizon_ms = 1\nflat_bps = 0.0",
    ] {
        let path = util::repo_root().join("models/lobster_direction.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let text = format!("{}\n{label}\n", text.split("\n[label]").next().unwrap());
        let manifest = tickinfer::manifest::Manifest::parse(&text, &path).unwrap();
        assert!(manifest.label.is_some());
        let engine = Engine::from_manifest(manifest, &util::test_engine_options()).unwrap();
        let mut scorer = Scorer::new(engine, 64);
        let mut stats = Stats::default();
        let jobs: Vec<Job> = (0..4096u64)
            .map(|i| Job {
                slot: 0,
                generation: 1,
                recv_ns: i,
                status: if i % 17 == 0 { Status::Overloaded } else { Status::Ok },
                req: util::stream_request(i, (i % 8) as u16),
            })
            .collect();
        let mut answers = 0u64;
        // Warm: every symbol has its slot.
        scorer.score(&jobs[..64], &mut stats, |_| {});
        let n = allocations_during(|| {
            for round in 0..4 {
                for one in jobs.chunks(if round % 2 == 0 { 1 } else { 16 }) {
                    scorer.score(one, &mut stats, |_| answers += 1);
                }
            }
        });
        assert_eq!(n, 0, "{label}: the scoring stage allocated {n} times in {answers} requests");
        let q = stats.quality.report().unwrap();
        assert!(
            q.since_load.scored + q.since_load.unscored > tickinfer::quality::WINDOW as u64,
            "{label}: {q:?}"
        );
    }
}
