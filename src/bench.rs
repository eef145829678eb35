//! `tickinfer bench`: in one run, pinned and sized to the cores it finds —
//! the transport floor (socket and shared memory), a bare ORT run, tickinfer
//! end to end in each poll mode and over shared memory,
//! throughput with pipelining connections, the quick Python alternative, and
//! TCP (a ping-pong floor and tickinfer end to end, on loopback and, as root,
//! across two network namespaces joined by a veth pair) —
//! with the ratio of tickinfer to the floor, a host profile, and JSON, markdown
//! and plot outputs. Tail latency from HdrHistogram only.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::clock::now_ns;
use crate::engine::{ort_environment, Engine, EngineOptions};
use crate::manifest::{Manifest, Prediction, Sequence};
use crate::server::{Mode, PollMode, ServerConfig};
use crate::wire::{MlRequest, MlResponse, REQUEST_SIZE, RESPONSE_SIZE};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub model: PathBuf,
    /// Round trips per latency row.
    pub requests: usize,
    /// Seconds of the throughput row.
    pub throughput_secs: f64,
    pub connections: usize,
    pub window: usize,
    /// Python interpreter for the sidecar row (skipped when onnxruntime is not importable).
    pub python: String,
    /// Further models timed engine beside bare ORT (stateful and sequence models).
    pub more_models: Vec<PathBuf>,
    pub out: PathBuf,
}

/// The models `tickinfer bench` times beside the main one: an MLP 16→64→64→3 (random
/// weights), a LightGBM of 100 rounds × 31 leaves × 3 classes (trained on the synthetic sample), the
/// trained stateful default and LSTM, and LSTM steps of three sizes (`benches/models/`).
pub const MORE_MODELS: [&str; 9] = [
    "tests/fixtures/models/mlp_direction.toml",
    "benches/models/lgbm_100x31.toml",
    "models/lobster_stateful.toml",
    "models/lobster_lstm_step.toml",
    "models/lobster_lstm_window.toml",
    "benches/models/lstm_h32_step.toml",
    "benches/models/lstm_h32_window.toml",
    "benches/models/lstm_h64_step.toml",
    "benches/models/lstm_2x128_step.toml",
];

impl BenchOptions {
    /// CI's short mode: every row runs, briefly.
    pub fn short(model: PathBuf, out: PathBuf) -> BenchOptions {
        BenchOptions {
            model,
            requests: 2_000,
            throughput_secs: 0.3,
            connections: 2,
            window: 128,
            python: std::env::var("TICKINFER_PYTHON").unwrap_or_else(|_| "python3".into()),
            more_models: vec![],
            out,
        }
    }
}

/// One row of the table (latencies in ns).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub throughput_per_s: Option<f64>,
    pub note: String,
    #[serde(skip)]
    pub hist: Option<Histogram<u64>>,
}

impl Row {
    fn of(name: &str, h: Histogram<u64>, note: String) -> Row {
        Row {
            name: name.into(),
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            throughput_per_s: None,
            note,
            hist: Some(h),
        }
    }
    fn skipped(name: &str, why: String) -> Row {
        Row {
            name: name.into(),
            count: 0,
            p50: 0,
            p99: 0,
            p999: 0,
            max: 0,
            throughput_per_s: None,
            note: why,
            hist: None,
        }
    }
}

/// The host the numbers come from.
#[derive(Clone, Debug, Serialize)]
pub struct HostProfile {
    pub cpu: String,
    pub cores_online: usize,
    pub usable_cores: Vec<usize>,
    pub server_core: usize,
    pub client_core: usize,
    pub clocksource: String,
    pub isolated: String,
    pub governor: String,
    pub steal_percent: f64,
    pub kernel: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratios {
    /// tickinfer (spin) p50 / (floor p50 + bare ORT p50); target ≤ 1.2.
    pub p50: f64,
    /// Same at p99; target ≤ 1.3.
    pub p99: f64,
    /// Best pipelined throughput, signals/s; target ≥ 500 000.
    pub throughput_per_s: f64,
    /// tickinfer e2e over shared memory minus the engine alone, p50 ns; target ≤ 500.
    pub shm_minus_engine_p50_ns: i64,
    /// Same at p99; target ≤ 1000.
    pub shm_minus_engine_p99_ns: i64,
    /// One request per ms / back to back (e2e spin), p50: what idle costs; as is, and
    /// with both ends kept warm (target ≤ 2, the open-loop replay acceptance).
    pub sparse_p50: f64,
    pub sparse_kept_warm_p50: f64,
    /// The scoring stage with live signal quality on minus off, p50 ns, same run (target
    /// ≤ 50); `None` when the model has no `[label]`.
    pub quality_cost_p50_ns: Option<i64>,
    /// tickinfer e2e over TCP on loopback − (TCP floor + engine), p50 ns, same run (target ≤ 500):
    /// the median over [`TCP_PAIRS`] chunks of floor and e2e taken one after the other, of the
    /// chunk's e2e p50 − floor p50, less the engine's p50.
    pub tcp_loopback_over_floor_and_engine_p50_ns: i64,
    /// The same across two network namespaces joined by a veth pair (`None`: skipped, not root).
    pub tcp_veth_over_floor_and_engine_p50_ns: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub host: HostProfile,
    pub rows: Vec<Row>,
    pub ratios: Ratios,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds")
}

fn pin(core: usize) {
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

fn read_to_string(p: &str) -> String {
    std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_else(|_| "-".into())
}

fn host_profile(server_core: usize, client_core: usize) -> HostProfile {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "-".into());
    let steal = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let v: Vec<u64> =
                s.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let total: u64 = v.iter().sum();
            Some(if total > 0 { 100.0 * *v.get(7)? as f64 / total as f64 } else { 0.0 })
        })
        .unwrap_or(0.0);
    HostProfile {
        cpu,
        cores_online: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        usable_cores: crate::server::usable_cores(),
        server_core,
        client_core,
        clocksource: read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        isolated: read_to_string("/sys/devices/system/cpu/isolated"),
        governor: read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        steal_percent: steal,
        kernel: read_to_string("/proc/sys/kernel/osrelease"),
    }
}

/// `n` requests of one symbol 250 µs apart, with moving quotes: what the engine rows time.
pub fn bench_requests(manifest: &Manifest, n: u64) -> Vec<MlRequest> {
    (0..n)
        .map(|i| MlRequest {
            timestamp_ns: 1_000_000_000 + i * 250_000,
            ..sample_request(manifest.price_scale, manifest.features.extras(), i)
        })
        .collect()
}

/// Events the engine and bare-ORT rows time: real rows vary from one request to the next
/// (a row repeated lets the branch predictor learn a tree's path). `TICKINFER_BENCH_DATA`
/// (a LOBSTER file or zip), else the real AMZN day in `../shared/data/lobster` when it is
/// there, else the bundled synthetic sample; at most `limit` events, prices at the
/// model's scale. With what was read, for the rows' notes.
pub fn real_stream(manifest: &Manifest, limit: usize) -> Result<(Vec<MlRequest>, String), String> {
    use crate::replay::source::{self, Format, SymbolTable};
    let root = crate::source_root();
    let shared = root.join("../shared/data/lobster/LOBSTER_SampleFile_AMZN_2012-06-21_1.zip");
    let (path, what) = match std::env::var_os("TICKINFER_BENCH_DATA") {
        Some(p) => (PathBuf::from(p), "TICKINFER_BENCH_DATA"),
        None if shared.is_file() => (shared, "real LOBSTER day"),
        None => (root.join("data/sample/SYNTH_2026-01-05_sample.zip"), "bundled synthetic sample"),
    };
    let mut symbols = SymbolTable::new(&[]).map_err(|e| e.to_string())?;
    let stream =
        source::load(&path, Format::Lobster, &mut symbols).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reqs = Vec::with_capacity(limit.min(stream.events.len()));
    for (i, mut e) in stream.events.into_iter().take(limit).enumerate() {
        source::rescale_event(&mut e, i as u64, stream.price_scale, manifest.price_scale)?;
        reqs.push(MlRequest { request_id: i as u64, n_features: manifest.features.extras(), ..e.req });
    }
    if reqs.is_empty() {
        return Err(format!("{}: no events", path.display()));
    }
    let name = path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let what = format!("{what} {name}, {} events in order", reqs.len());
    Ok((reqs, what))
}

/// Request `i` of a stream cycled past its end: the same event with its time moved on by
/// whole passes, so stateful features keep seeing time go forward.
fn cycled(reqs: &[MlRequest], i: usize) -> MlRequest {
    let n = reqs.len();
    let span = reqs[n - 1].timestamp_ns.saturating_sub(reqs[0].timestamp_ns) + 1_000_000;
    let mut r = reqs[i % n];
    r.timestamp_ns += (i / n) as u64 * span;
    r.request_id = i as u64;
    r
}

/// The feature rows of `reqs` (in order, any symbols), computed as the engine computes
/// them from a fresh state: a bare runtime's ready input.
pub fn ready_rows(manifest: &Manifest, reqs: &[MlRequest]) -> Vec<f32> {
    let width = manifest.features.len();
    let mut rows = vec![0f32; reqs.len() * width];
    let mut st = crate::state::State::new(manifest.features.state_spec().clone(), reqs.len());
    for (req, row) in reqs.iter().zip(rows.chunks_exact_mut(width)) {
        if st.is_stateless() {
            manifest.features.fill_with(req, None, row);
        } else {
            st.admit(req.symbol_id);
            let view = st.update(req, manifest.features.scales());
            manifest.features.fill_with(req, Some(&view), row);
        }
    }
    rows
}

/// A typical valid request at the model's price scale.
fn sample_request(price_scale: i64, extras: u16, id: u64) -> MlRequest {
    let tick = price_scale / 100;
    MlRequest {
        bid_price: 220 * price_scale + (id % 7) as i64 * tick,
        ask_price: 220 * price_scale + (id % 7) as i64 * tick + tick * (1 + (id % 3) as i64),
        bid_size: 100 + (id % 11) as i64 * 40,
        ask_size: 100 + (id % 13) as i64 * 30,
        request_id: id,
        n_features: extras,
        ..MlRequest::new()
    }
}

/// Events of the real stream the engine rows cycle through.
const REAL_EVENTS: usize = 20_000;

/// Run every row.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, String> {
    let cores = crate::server::usable_cores();
    let server_core = *cores.first().unwrap_or(&0);
    let client_core = *cores.iter().rev().find(|&&c| c != server_core).unwrap_or(&server_core);
    let host = host_profile(server_core, client_core);
    let manifest = Manifest::load(&opts.model).map_err(|e| e.to_string())?;
    let (scale, extras) = (manifest.price_scale, manifest.features.extras());
    let n = opts.requests.max(10);
    let mut rows = Vec::new();
    let place = format!("echo/server core {server_core}, client core {client_core}");

    eprintln!("bench: (a) transport floor");
    rows.push(Row::of(
        "floor: busy-poll ping-pong",
        pingpong(n, server_core, client_core)?,
        format!("{place}; 194 B out, 58 B back"),
    ));
    rows.push(Row::of(
        "floor: shm ping-pong",
        shm_pingpong(n, server_core, client_core)?,
        format!("{place}; two processes, tickinfer's rings (ml_shm.h), spin"),
    ));
    eprintln!("bench: (b) bare ORT");
    let (_, data) = real_stream(&manifest, REAL_EVENTS)?;
    let (bare, engines) = bare_ort(&opts.model, &manifest, n, server_core)?;
    rows.push(Row::of(
        "bare ORT session.run",
        bare,
        format!("core {server_core}; input rows ready, 1 intra-op thread; rows of the {data}"),
    ));
    // The backend `auto` chose (its live verifier sampling 1 in verify_every when native);
    // then the native evaluator with verification off; then ONNX Runtime's pre-bound engine.
    for (label, backend, engine) in engines {
        let name = match label.as_str() {
            "engine" => "tickinfer engine (features+run+decode)",
            "engine, verify off" => "tickinfer engine, verify off",
            _ => "tickinfer engine on ORT",
        };
        rows.push(Row::of(name, engine, format!("core {server_core}; backend {backend}; {data}")));
    }
    eprintln!("bench: (b') stateful and sequence models, engine beside bare ORT");
    for m in &opts.more_models {
        let name = m.file_stem().map_or("?".into(), |s| s.to_string_lossy().into_owned());
        let loaded = Manifest::load(m).map_err(|e| e.to_string());
        match loaded.and_then(|mm| bare_ort(m, &mm, n, server_core).map(|r| (mm, r))) {
            Ok((mm, (bare, engines))) => {
                let what = match mm.sequence {
                    Sequence::None => format!("{} features", mm.features.len()),
                    Sequence::Window { window } => {
                        format!("window {window} x {} features", mm.features.len())
                    }
                    Sequence::Recurrent { .. } => format!("recurrent step, {} features", mm.features.len()),
                };
                rows.push(Row::of(
                    &format!("bare ORT: {name}"),
                    bare,
                    format!("core {server_core}; {what}, input rows ready; {data}"),
                ));
                // The backend `auto` chose, then (native) without verification and on ONNX Runtime.
                for (label, backend, engine) in engines {
                    rows.push(Row::of(
                        &format!("{label}: {name}"),
                        engine,
                        format!(
                            "core {server_core}; {what}, state + features + run; backend {backend}; {data}"
                        ),
                    ));
                }
            }
            Err(why) => rows.push(Row::skipped(&format!("engine: {name}"), format!("skipped: {why}"))),
        }
    }
    eprintln!("bench: (b'') the scoring stage with live signal quality on and off, interleaved");
    let quality_cost_p50_ns = match scoring_stage(&opts.model, n, server_core) {
        Ok((on, off, backend)) => {
            let cost = on.value_at_quantile(0.5) as i64 - off.value_at_quantile(0.5) as i64;
            let note = format!(
                "core {server_core}; backend {backend}; one job per call, the two scorers alternating in one loop"
            );
            rows.push(Row::of("scoring stage, signal quality off", off, note.clone()));
            rows.push(Row::of("scoring stage, signal quality on", on, note));
            Some(cost)
        }
        Err(why) => {
            rows.push(Row::skipped("scoring stage, signal quality on/off", format!("skipped: {why}")));
            None
        }
    };
    for poll in [PollMode::Spin, PollMode::Adaptive, PollMode::Block] {
        eprintln!("bench: (c) tickinfer end to end, --poll {poll:?}");
        let h = e2e(
            polling(&opts.model, poll),
            crate::replay::Transport::Socket,
            n,
            server_core,
            client_core,
            scale,
            extras,
        )?;
        rows.push(Row::of(
            &format!("tickinfer e2e --poll {}", format!("{poll:?}").to_lowercase()),
            h,
            format!("inline, {place}; busy-poll client, 1 in flight"),
        ));
    }
    if get_backend(&rows).is_some_and(|b| b.starts_with("native")) {
        eprintln!("bench: (c) tickinfer end to end, --poll spin, live verification off");
        let mut cfg = polling(&opts.model, PollMode::Spin);
        cfg.engine.verify.every = Some(0);
        let h = e2e(cfg, crate::replay::Transport::Socket, n, server_core, client_core, scale, extras)?;
        rows.push(Row::of(
            "tickinfer e2e --poll spin, verify off",
            h,
            format!(
                "inline, {place}; busy-poll client, 1 in flight; the row above verifies 1 answer in {}",
                manifest.verify_every
            ),
        ));
    }
    eprintln!("bench: (c) tickinfer end to end, --poll spin, one shadow candidate attached");
    rows.push(match shadowed(&opts.model, n, server_core, client_core, scale, extras) {
        Ok((h, note)) => {
            Row::of("tickinfer e2e --poll spin, one shadow", h, format!("inline, {place}; {note}"))
        }
        Err(why) => Row::skipped("tickinfer e2e --poll spin, one shadow", format!("skipped: {why}")),
    });
    eprintln!("bench: (c') tickinfer end to end over shared memory");
    rows.push(Row::of(
        "tickinfer e2e shm",
        e2e(
            polling(&opts.model, PollMode::Spin),
            crate::replay::Transport::Shm,
            n,
            server_core,
            client_core,
            scale,
            extras,
        )?,
        format!(
            "inline, --poll spin, {place}; Rust client of ml_shm.h (the C client's path), spin, 1 in flight"
        ),
    ));
    eprintln!("bench: (c'') one request per ms (idle between), as is and kept warm");
    for (name, keep_warm) in
        [("tickinfer e2e sparse", None), ("tickinfer e2e sparse, kept warm", Some(Duration::from_micros(50)))]
    {
        let warm = keep_warm.map_or("not kept warm".to_string(), |d| {
            format!("both ends kept warm after {} µs idle (--keep-warm-us)", d.as_micros())
        });
        rows.push(Row::of(
            name,
            sparse(&opts.model, n, server_core, client_core, scale, extras, keep_warm)?,
            format!("inline, --poll spin, {place}; 1 request per ms, busy-poll client; {warm}"),
        ));
    }
    eprintln!("bench: (d) throughput");
    let (per_s, h, _) = throughput(&opts.model, opts, server_core, client_core, scale, extras, None)?;
    let mut row = Row::of(
        "tickinfer throughput (pipelined)",
        h,
        format!("{} connections x window {} (2 windows in flight), server spin on core {server_core}; latency per window", opts.connections, opts.window),
    );
    row.throughput_per_s = Some(per_s);
    rows.push(row);
    eprintln!("bench: (d) throughput, one shadow candidate attached");
    match shadow_copy(&opts.model)
        .and_then(|(_dir, m)| throughput(&opts.model, opts, server_core, client_core, scale, extras, Some(m)))
    {
        Ok((per_s, h, report)) => {
            let mut row = Row::of(
                "tickinfer throughput (pipelined), one shadow",
                h,
                format!(
                    "as the row above, with the same model as a shadow: it scored {}, dropped {} (behind: it \
                     runs on the cores the server leaves free)",
                    report.scored, report.dropped
                ),
            );
            row.throughput_per_s = Some(per_s);
            rows.push(row);
        }
        Err(why) => {
            rows.push(Row::skipped("tickinfer throughput (pipelined), one shadow", format!("skipped: {why}")))
        }
    }
    eprintln!("bench: (e) Python sidecar");
    rows.push(
        match python_sidecar(
            &opts.model,
            &opts.python,
            (n / 4).max(100),
            server_core,
            client_core,
            scale,
            extras,
        ) {
            Ok(h) => Row::of(
                "python sidecar (socket + onnxruntime)",
                h,
                format!("{} scripts/python_sidecar.py on core {server_core}", opts.python),
            ),
            Err(why) => Row::skipped("python sidecar (socket + onnxruntime)", format!("skipped: {why}")),
        },
    );

    eprintln!("bench: (f) TCP: ping-pong floor and tickinfer end to end, loopback and veth");
    let veth = match crate::transport::netns::Pair::create("b") {
        Ok(pair) => Some(pair),
        Err(why) => {
            eprintln!("bench: veth rows skipped: {why}");
            rows.push(Row::skipped("floor: TCP ping-pong, veth", format!("skipped: {why}")));
            rows.push(Row::skipped("tickinfer e2e TCP, veth", format!("skipped: {why}")));
            None
        }
    };
    // Floor and e2e in chunks taken one after the other: on a VM whose speed moves by tens of
    // per cent over seconds (measured here), two rows taken a minute apart can differ by more
    // than the ±0.5 µs this compares; the median of paired chunks does not.
    let mut tcp_excess = Vec::new();
    for (path, ns) in [("loopback", None), ("veth", veth.as_ref())] {
        if path == "veth" && ns.is_none() {
            continue;
        }
        let per = (n / TCP_PAIRS).max(10);
        let (mut floor, mut e2e, mut diffs) = (hist(), hist(), Vec::with_capacity(TCP_PAIRS));
        let (mut floor_note, mut e2e_note) = (String::new(), String::new());
        for _ in 0..TCP_PAIRS {
            let (f, note) = tcp_pingpong(per, server_core, client_core, ns)?;
            let (e, note2) = tcp_e2e(&opts.model, per, server_core, client_core, scale, extras, ns)?;
            diffs.push(e.value_at_quantile(0.5) as i64 - f.value_at_quantile(0.5) as i64);
            floor.add(&f).map_err(|e| format!("{e:?}"))?;
            e2e.add(&e).map_err(|e| format!("{e:?}"))?;
            (floor_note, e2e_note) = (note, note2);
        }
        diffs.sort_unstable();
        tcp_excess.push((path, diffs[diffs.len() / 2]));
        let paired = format!("{TCP_PAIRS} chunks of {per}, alternated with the other row");
        rows.push(Row::of(
            &format!("floor: TCP ping-pong, {path}"),
            floor,
            format!("{place}; {floor_note}; {paired}"),
        ));
        rows.push(Row::of(
            &format!("tickinfer e2e TCP, {path}"),
            e2e,
            format!("inline, --poll spin, {place}; {e2e_note}; {paired}"),
        ));
    }
    drop(veth); // the namespaces and the veth pair go

    let get = |name: &str| rows.iter().find(|r| r.name.starts_with(name)).cloned();
    let tcp_over = |path: &str| -> Option<i64> {
        let engine = get("tickinfer engine (features")?;
        let (_, paired) = tcp_excess.iter().find(|(p, _)| *p == path)?;
        Some(paired - engine.p50 as i64)
    };
    let (tcp_loopback, tcp_veth) = (tcp_over("loopback").unwrap_or(0), tcp_over("veth"));
    let (floor, ort, e2e) =
        (get("floor").unwrap(), get("bare ORT").unwrap(), get("tickinfer e2e --poll spin").unwrap());
    let (shm, engine) = (get("tickinfer e2e shm").unwrap(), get("tickinfer engine (features").unwrap());
    let ratios = Ratios {
        p50: e2e.p50 as f64 / (floor.p50 + ort.p50) as f64,
        p99: e2e.p99 as f64 / (floor.p99 + ort.p99) as f64,
        throughput_per_s: per_s,
        shm_minus_engine_p50_ns: shm.p50 as i64 - engine.p50 as i64,
        shm_minus_engine_p99_ns: shm.p99 as i64 - engine.p99 as i64,
        sparse_p50: get("tickinfer e2e sparse").unwrap().p50 as f64 / e2e.p50 as f64,
        sparse_kept_warm_p50: get("tickinfer e2e sparse, kept warm").unwrap().p50 as f64 / e2e.p50 as f64,
        quality_cost_p50_ns,
        tcp_loopback_over_floor_and_engine_p50_ns: tcp_loopback,
        tcp_veth_over_floor_and_engine_p50_ns: tcp_veth,
    };
    let report = BenchReport { host, rows, ratios };
    write_outputs(&report, &opts.out)?;
    Ok(report)
}

/// Write all of `bytes` to a non-blocking socket, busy-polling while it is full.
fn write_all_spin(s: &mut impl Write, mut bytes: &[u8]) -> Result<(), String> {
    while !bytes.is_empty() {
        match s.write(bytes) {
            Ok(0) => return Err("write: the peer closed".into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Fill `buf` from a non-blocking socket, busy-polling.
fn read_exact_spin(s: &mut impl Read, buf: &mut [u8]) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err("read: the peer closed".into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// (a) Busy-poll ping-pong over a socketpair with tickinfer's frame sizes.
fn pingpong(n: usize, echo_core: usize, client_core: usize) -> Result<Histogram<u64>, String> {
    let (mut a, mut b) = UnixStream::pair().map_err(|e| e.to_string())?;
    a.set_nonblocking(true).map_err(|e| e.to_string())?;
    b.set_nonblocking(true).map_err(|e| e.to_string())?;
    let total = n + n / 10;
    let echo = std::thread::spawn(move || -> Result<(), String> {
        pin(echo_core);
        let (mut req, resp) = ([0u8; REQUEST_SIZE], [0u8; RESPONSE_SIZE]);
        for _ in 0..total {
            read_exact_spin(&mut b, &mut req)?;
            write_all_spin(&mut b, &resp)?;
        }
        Ok(())
    });
    let client = std::thread::spawn(move || -> Result<Histogram<u64>, String> {
        pin(client_core);
        ping_pong(&mut a, n, total)
    });
    let h = client.join().map_err(|_| "client panicked")??;
    echo.join().map_err(|_| "echo panicked")??;
    Ok(h)
}

/// (a') Spin ping-pong between two processes through one shared-memory region,
/// with tickinfer's ring code and frame sizes (the copies in and out included):
/// the floor of the shm transport. The echo is a forked child.
fn shm_pingpong(n: usize, echo_core: usize, client_core: usize) -> Result<Histogram<u64>, String> {
    let crate::shm::Loopback { mut server, client, peer } =
        crate::shm::loopback(64).map_err(|e| format!("shm region: {e}"))?;
    let total = n + n / 10;
    // The child uses its copy of the server end; this process keeps it until the child is
    // done (dropping the server end gives the region's pages back).
    let echo = &mut server;
    // The child only spins on atomics and copies frames: no allocation, no lock (fork rules).
    let pid = crate::sys::fork_child(move || {
        let server = echo;
        crate::sys::pin_to_core(echo_core);
        let mut echoed = 0;
        while echoed < total {
            match server.requests_ready() {
                Ok(0) => std::hint::spin_loop(),
                Ok(k) => {
                    for _ in 0..k {
                        let req = server.read_request();
                        let resp = MlResponse {
                            request_id: req.request_id,
                            ..MlResponse::error(0, 0, crate::wire::Status::Ok, 0)
                        };
                        if server.write_response(&resp).is_err() {
                            return 2;
                        }
                    }
                    server.release_requests();
                    server.publish();
                    echoed += k as usize;
                }
                Err(_) => return 3,
            }
        }
        0
    })
    .map_err(|e| format!("fork: {e}"))?;
    // The client on its own pinned thread (this thread's affinity stays as it was); any
    // request frame will do for an echo.
    let t = Duration::from_secs(5);
    let result = timed_round_trips(
        n,
        client_core,
        10_000,
        0,
        move || Ok(client),
        move |c, req| c.send(req, t).and_then(|()| c.recv_spin(t)).map_err(|e| format!("shm echo: {e}")),
    );
    drop(peer);
    if result.is_err() {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let code = crate::sys::wait_child(pid).map_err(|e| format!("wait for the echo: {e}"))?;
    let h = result?;
    if code != 0 {
        return Err(format!("shm echo child exited {code}"));
    }
    Ok(h)
}

/// The engine's per-call latency per backend: first the one `auto` (or the manifest)
/// chooses, labelled "engine", then "engine (ort)" when the chosen one was native.
/// Each entry: (label, backend, histogram).
type EngineRuns = Vec<(String, String, Histogram<u64>)>;

/// (b) Bare `session.run` on a ready input, and our engine on the same requests.
///
/// The bare side is what a quant would write: `session.run` with named inputs on rows
/// already computed (a window model: the K rows ready; a recurrent model: the state
/// tensors fed and the returned ones copied back for the next call), same session
/// settings. The engine side runs everything per request, on each backend
/// ([`EngineRuns`]): the symbol's state update, feature rows, the window or state
/// copies, the run and decoding. Both see one symbol's stream of moving quotes.
fn bare_ort(
    model: &Path,
    manifest: &Manifest,
    n: usize,
    core: usize,
) -> Result<(Histogram<u64>, EngineRuns), String> {
    let (model, manifest) = (model.to_path_buf(), manifest.clone());
    std::thread::spawn(move || -> Result<(Histogram<u64>, EngineRuns), String> {
        pin(core);
        use ort::session::builder::GraphOptimizationLevel;
        use ort::session::Session;
        use ort::value::TensorRef;
        let opts = EngineOptions::default();
        let env = ort_environment(&opts).map_err(|e| e.to_string())?;
        let e = |e: ort::Error<ort::session::builder::SessionBuilder>| e.to_string();
        let mut session = Session::builder(env)
            .map_err(|e| e.to_string())?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(e)?
            .with_intra_threads(1)
            .map_err(e)?
            .with_inter_threads(1)
            .map_err(e)?
            .commit_from_file(&manifest.onnx)
            .map_err(|e| e.to_string())?;
        let width = manifest.features.len();
        let steps = match manifest.sequence {
            Sequence::Window { window } => window,
            _ => 1,
        };
        // Loaded first (untimed) for its view of the model: the state widths it declares.
        let engine = Engine::load(&model, &opts).map_err(|e| e.to_string())?;
        let states: Vec<(String, String, usize)> = match &manifest.sequence {
            Sequence::Recurrent { state, .. } => state
                .iter()
                .zip(manifest.state_widths(&engine.info().inputs))
                .map(|(p, w)| (p.input.clone(), p.output.clone(), w))
                .collect(),
            _ => vec![],
        };
        let (reqs, _) = real_stream(&manifest, REAL_EVENTS)?;
        // The bare side's ready input: every request's row, computed as the engine computes
        // them, taken in turn (a window model: the window ending at each row).
        let rows = ready_rows(&manifest, &reqs);
        let windows = reqs.len().saturating_sub(steps) + 1;
        let mut carried: Vec<Vec<f32>> = states.iter().map(|s| vec![0f32; s.2]).collect();
        let out_name = manifest.output.name().to_string();
        let input_name = manifest.input_name.clone();
        let mut h = hist();
        for i in 0..n + n / 10 {
            let t0 = now_ns();
            let at = (i % windows) * width;
            let x = if steps > 1 {
                TensorRef::from_array_view(([1usize, steps, width], &rows[at..at + steps * width]))
            } else {
                TensorRef::from_array_view(([1usize, width], &rows[at..at + width]))
            }
            .map_err(|e| e.to_string())?;
            let mut inputs = vec![(input_name.clone(), x)];
            for ((name, _, w), c) in states.iter().zip(&carried) {
                inputs.push((
                    name.clone(),
                    TensorRef::from_array_view(([1usize, *w], &c[..])).map_err(|e| e.to_string())?,
                ));
            }
            let out = session.run(inputs).map_err(|e| e.to_string())?;
            let v = out[out_name.as_str()].try_extract_tensor::<f32>().map_err(|e| e.to_string())?.1[0];
            std::hint::black_box(v);
            for ((_, back, _), c) in states.iter().zip(carried.iter_mut()) {
                c.copy_from_slice(
                    out[back.as_str()].try_extract_tensor::<f32>().map_err(|e| e.to_string())?.1,
                );
            }
            drop(out);
            if i >= n / 10 {
                h.saturating_record(now_ns() - t0);
            }
        }
        let mut engines = vec![("engine".to_string(), engine)];
        if engines[0].1.info().backend != "ort" {
            // The native evaluator without its live verifier (the row above samples 1 in
            // verify_every), then ONNX Runtime's engine.
            let off = crate::verify::VerifyOptions { every: Some(0), ..Default::default() };
            let quiet = EngineOptions { verify: off, ..opts.clone() };
            engines.push((
                "engine, verify off".into(),
                Engine::load(&model, &quiet).map_err(|e| e.to_string())?,
            ));
            let ort_opts = EngineOptions { backend: Some(crate::engine::Backend::Ort), ..opts };
            engines
                .push(("engine (ort)".into(), Engine::load(&model, &ort_opts).map_err(|e| e.to_string())?));
        }
        let mut runs = Vec::new();
        for (label, mut engine) in engines {
            let mut p = [None::<Prediction>];
            let mut state = engine.new_state(1);
            let mut he = hist();
            for i in 0..n + n / 10 {
                let req = cycled(&reqs, i);
                let t0 = now_ns();
                engine.predict(std::slice::from_ref(&req), &mut state, &mut p).map_err(|e| e.to_string())?;
                if i >= n / 10 {
                    he.saturating_record(now_ns() - t0);
                }
            }
            runs.push((label, engine.info().backend.clone(), he));
        }
        Ok((h, runs))
    })
    .join()
    .map_err(|_| "bare ORT thread panicked".to_string())?
}

/// The scoring stage (`Scorer::score`: engine, answer, signal quality) on one job per
/// call, with the model's `[label]` and without it (the same model on the same backend),
/// the two alternating in one loop so that both see the same machine: what scoring every
/// answer live costs. Jobs of one symbol, 250 µs apart, moving quotes. (on, off, backend)
fn scoring_stage(
    model: &Path,
    n: usize,
    core: usize,
) -> Result<(Histogram<u64>, Histogram<u64>, String), String> {
    use crate::server::stage::{Job, Scorer};
    let model = model.to_path_buf();
    std::thread::spawn(move || {
        pin(core);
        let manifest = Manifest::load(&model).map_err(|e| e.to_string())?;
        if manifest.label.is_none() {
            return Err(format!("{} has no [label] section: nothing to score", model.display()));
        }
        let reqs = bench_requests(&manifest, 1000);
        let unlabelled = Manifest { label: None, ..manifest.clone() };
        let on = Engine::from_manifest(manifest, &EngineOptions::default()).map_err(|e| e.to_string())?;
        let backend = on.info().backend.clone();
        let same = match backend.split(' ').next() {
            Some("native") => crate::manifest::Backend::Native,
            _ => crate::manifest::Backend::Ort,
        };
        let off_opts = EngineOptions { backend: Some(same), ..EngineOptions::default() };
        let off = Engine::from_manifest(unlabelled, &off_opts).map_err(|e| e.to_string())?;
        let mut scorers = [
            (Scorer::new(on, 1024), crate::stats::Stats::default(), hist()),
            (Scorer::new(off, 1024), crate::stats::Stats::default(), hist()),
        ];
        for i in 0..n + n / 10 {
            let mut req = reqs[i % reqs.len()];
            req.timestamp_ns = 1_000_000_000 + i as u64 * 250_000;
            let job = Job { slot: 0, generation: 1, recv_ns: now_ns(), status: crate::wire::Status::Ok, req };
            // Alternate which goes first: neither always finds the other's cache state.
            for k in [i % 2, 1 - i % 2] {
                let (scorer, stats, h) = &mut scorers[k];
                let t0 = now_ns();
                scorer.score(std::slice::from_ref(&job), stats, |done| {
                    std::hint::black_box(done);
                });
                if i >= n / 10 {
                    h.saturating_record(now_ns() - t0);
                }
            }
        }
        let [(_, on_stats, on), (_, _, off)] = scorers;
        debug_assert!(on_stats.quality.answers > 0, "the labelled scorer counted its answers");
        Ok((on, off, backend))
    })
    .join()
    .map_err(|_| "scoring stage thread panicked".to_string())?
}

/// One request in flight on a pinned client thread: `open` connects, `round_trip`
/// sends one request and busy-polls for its answer. Ids and statuses checked; the
/// first tenth is warm-up.
fn timed_round_trips<C>(
    n: usize,
    core: usize,
    scale: i64,
    extras: u16,
    open: impl FnOnce() -> Result<C, String> + Send + 'static,
    round_trip: impl FnMut(&mut C, &MlRequest) -> Result<MlResponse, String> + Send + 'static,
) -> Result<Histogram<u64>, String> {
    paced_round_trips(n, core, scale, extras, open, |_| {}, round_trip)
}

/// [`timed_round_trips`] with `idle` run before each request, untimed.
fn paced_round_trips<C>(
    n: usize,
    core: usize,
    scale: i64,
    extras: u16,
    open: impl FnOnce() -> Result<C, String> + Send + 'static,
    mut idle: impl FnMut(&mut C) + Send + 'static,
    mut round_trip: impl FnMut(&mut C, &MlRequest) -> Result<MlResponse, String> + Send + 'static,
) -> Result<Histogram<u64>, String> {
    std::thread::spawn(move || -> Result<Histogram<u64>, String> {
        pin(core);
        let mut c = open()?;
        let mut h = hist();
        for i in 0..(n + n / 10) as u64 {
            idle(&mut c);
            let req = sample_request(scale, extras, i);
            let t0 = now_ns();
            let resp = round_trip(&mut c, &req)?;
            let t1 = now_ns();
            if { resp.request_id } != i || resp.status != 0 {
                return Err(format!("bad answer to {i}: id {} status {}", { resp.request_id }, {
                    resp.status
                }));
            }
            if i as usize >= n / 10 {
                h.saturating_record(t1 - t0);
            }
        }
        Ok(h)
    })
    .join()
    .map_err(|_| "client panicked".to_string())?
}

/// One request in flight over the socket, busy-polling client: round trips.
fn sync_client(
    socket: &Path,
    n: usize,
    core: usize,
    scale: i64,
    extras: u16,
) -> Result<Histogram<u64>, String> {
    let socket = socket.to_path_buf();
    let open = move || -> Result<UnixStream, String> {
        let (s, _) = crate::replay::connect(&socket)?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(s)
    };
    timed_round_trips(n, core, scale, extras, open, |s, req| {
        let mut buf = [0u8; RESPONSE_SIZE];
        write_all_spin(s, bytemuck::bytes_of(req))?;
        read_exact_spin(s, &mut buf)?;
        Ok(bytemuck::pod_read_unaligned(&buf))
    })
}

/// The floor's client side: `total` request-sized writes, each answered by a response-sized
/// read, busy-polling; the last `total - n / 10` timed (the first tenth warms).
fn ping_pong<S: std::io::Read + std::io::Write>(
    a: &mut S,
    n: usize,
    total: usize,
) -> Result<Histogram<u64>, String> {
    let mut h = hist();
    let (req, mut resp) = ([1u8; REQUEST_SIZE], [0u8; RESPONSE_SIZE]);
    for i in 0..total {
        let t0 = now_ns();
        write_all_spin(a, &req)?;
        read_exact_spin(a, &mut resp)?;
        if i >= n / 10 {
            h.saturating_record(now_ns() - t0);
        }
    }
    Ok(h)
}

/// The defaults for `model`, polling `poll`.
fn polling(model: &Path, poll: PollMode) -> ServerConfig {
    let mut cfg = ServerConfig::new(model, "unused");
    cfg.poll = poll;
    cfg
}

fn local_server(
    model: &Path,
    poll: PollMode,
    core: usize,
    keep_warm: Option<Duration>,
) -> Result<crate::replay::LocalServer, String> {
    let mut cfg = polling(model, poll);
    cfg.keep_warm = keep_warm;
    local_server_with(cfg, core)
}

/// `cfg` served inline on `core`, stats folded at once.
fn local_server_with(mut cfg: ServerConfig, core: usize) -> Result<crate::replay::LocalServer, String> {
    cfg.mode = Mode::Inline;
    cfg.io_core = Some(core);
    cfg.stats_interval = Duration::ZERO;
    cfg.max_inflight = 4096;
    crate::replay::LocalServer::start(cfg)
}

/// The backend the engine row names ("native (…)" or "ort").
fn get_backend(rows: &[Row]) -> Option<String> {
    let row = rows.iter().find(|r| r.name.starts_with("tickinfer engine (features"))?;
    row.note.split("backend ").nth(1).map(|b| b.to_string())
}

/// (c) tickinfer end to end, one request in flight, busy-polling client, against a server
/// configured as `cfg` (inline on `server_core`): over the socket, or (c') over shared
/// memory (`transport`).
fn e2e(
    cfg: ServerConfig,
    transport: crate::replay::Transport,
    n: usize,
    server_core: usize,
    client_core: usize,
    scale: i64,
    extras: u16,
) -> Result<Histogram<u64>, String> {
    let server = local_server_with(cfg, server_core)?;
    let h = match transport {
        crate::replay::Transport::Socket => sync_client(&server.socket, n, client_core, scale, extras),
        crate::replay::Transport::Tcp => Err("e2e over TCP: see tcp_e2e".into()),
        crate::replay::Transport::Shm => {
            let (socket, t) = (server.socket.clone(), Duration::from_secs(5));
            let open =
                move || crate::shm::ShmClient::connect(&socket, t).map(|(c, _)| c).map_err(|e| e.to_string());
            timed_round_trips(n, client_core, scale, extras, open, move |c, req| {
                c.send(req, t).and_then(|()| c.recv_spin(t)).map_err(|e| e.to_string())
            })
        }
    };
    server.stop()?;
    h
}

/// Chunks of the TCP floor and e2e rows, taken alternately (their p50 difference: the median
/// over the chunks).
const TCP_PAIRS: usize = 5;

/// `SO_BUSY_POLL` the TCP rows ask for on both ends (µs).
const BUSY_POLL_US: u32 = 50;

/// Where the TCP rows listen: loopback, or the server's end of the veth pair.
fn tcp_listen_ip(ns: Option<&crate::transport::netns::Pair>) -> Result<std::net::IpAddr, String> {
    ns.map_or("127.0.0.1", |p| p.server_ip.as_str()).parse().map_err(|e| format!("{e}"))
}

/// Run `f` in the server's namespace (veth) or here (loopback).
fn in_server_ns<T>(ns: Option<&crate::transport::netns::Pair>, f: impl FnOnce() -> T) -> Result<T, String> {
    match ns {
        Some(p) => crate::transport::netns::Pair::within(&p.server_ns, f),
        None => Ok(f()),
    }
}

/// `TCP_NODELAY` and `SO_BUSY_POLL` on a bench socket; what the kernel kept, for the note.
fn tune_bench_socket(s: &std::net::TcpStream) -> Result<String, String> {
    let refused = crate::transport::tcp::tune_std(s, Some(BUSY_POLL_US)).map_err(|e| e.to_string())?;
    Ok(match (refused, crate::transport::tcp::busy_poll_of(s)) {
        (None, Ok(us)) => format!("SO_BUSY_POLL {us} µs"),
        (Some(e), _) => format!("SO_BUSY_POLL refused ({e}): kernel default"),
        (None, Err(e)) => format!("SO_BUSY_POLL unknown ({e})"),
    })
}

/// (f) Busy-poll ping-pong over TCP with tickinfer's frame sizes (194 B out, 58 B back),
/// `TCP_NODELAY` and `SO_BUSY_POLL` both ends: the floor of the TCP transport, on loopback
/// or (`ns`) across the veth pair, the echo in the server's namespace.
fn tcp_pingpong(
    n: usize,
    echo_core: usize,
    client_core: usize,
    ns: Option<&crate::transport::netns::Pair>,
) -> Result<(Histogram<u64>, String), String> {
    let ip = tcp_listen_ip(ns)?;
    let listener =
        in_server_ns(ns, || std::net::TcpListener::bind((ip, 0)))?.map_err(|e| format!("bind {ip}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let client_ns = ns.map(|p| p.client_ns.clone());
    let total = n + n / 10;
    let echo = std::thread::spawn(move || -> Result<(), String> {
        pin(echo_core);
        let (mut b, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        tune_bench_socket(&b)?;
        b.set_nonblocking(true).map_err(|e| e.to_string())?;
        let (mut req, resp) = ([0u8; REQUEST_SIZE], [0u8; RESPONSE_SIZE]);
        for _ in 0..total {
            read_exact_spin(&mut b, &mut req)?;
            write_all_spin(&mut b, &resp)?;
        }
        Ok(())
    });
    let client = std::thread::spawn(move || -> Result<(Histogram<u64>, String), String> {
        pin(client_core);
        if let Some(ns) = &client_ns {
            crate::transport::netns::Pair::enter(ns)?;
        }
        let mut a = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        let note = tune_bench_socket(&a)?;
        a.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok((ping_pong(&mut a, n, total)?, note))
    });
    let (h, note) = client.join().map_err(|_| "client panicked")??;
    echo.join().map_err(|_| "echo panicked")??;
    let path = if ns.is_some() { "two network namespaces, veth pair" } else { "loopback" };
    Ok((h, format!("{path}; TCP_NODELAY, {note}; 194 B out, 58 B back")))
}

/// (f) tickinfer end to end over TCP (`--listen-tcp`, `--busy-poll-us`), one request in
/// flight, busy-polling client: on loopback, or (`ns`) the server in one namespace and
/// the client in the other, `--tcp-allow` naming the client's address.
fn tcp_e2e(
    model: &Path,
    n: usize,
    server_core: usize,
    client_core: usize,
    scale: i64,
    extras: u16,
    ns: Option<&crate::transport::netns::Pair>,
) -> Result<(Histogram<u64>, String), String> {
    let ip = tcp_listen_ip(ns)?;
    // A free port: bound, released, then the server binds it (SO_REUSEADDR).
    let port = in_server_ns(ns, || std::net::TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()))?
        .map_err(|e| format!("bind {ip}: {e}"))?
        .port();
    let addr = std::net::SocketAddr::new(ip, port);
    let mut cfg = polling(model, PollMode::Spin);
    let allow = match ns {
        Some(p) => vec![format!("{}/32", p.client_ip).parse::<crate::transport::tcp::Cidr>()?],
        None => vec![],
    };
    cfg.tcp = Some(crate::server::TcpListen {
        addr,
        policy: crate::transport::tcp::TcpPolicy {
            allow,
            token_file: None,
            busy_poll_us: Some(BUSY_POLL_US),
        },
    });
    let server = in_server_ns(ns, || local_server_with(cfg, server_core))??;
    let client_ns = ns.map(|p| p.client_ns.clone());
    let note = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = note.clone();
    let open = move || -> Result<std::net::TcpStream, String> {
        if let Some(ns) = &client_ns {
            crate::transport::netns::Pair::enter(ns)?;
        }
        let (s, _) = crate::replay::connect_tcp(addr, None)?;
        let kept = tune_bench_socket(&s)?;
        if let Ok(mut n) = seen.lock() {
            *n = kept;
        }
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(s)
    };
    let h = timed_round_trips(n, client_core, scale, extras, open, |s, req| {
        let mut buf = [0u8; RESPONSE_SIZE];
        write_all_spin(s, bytemuck::bytes_of(req))?;
        read_exact_spin(s, &mut buf)?;
        Ok(bytemuck::pod_read_unaligned(&buf))
    });
    server.stop()?;
    let path =
        if ns.is_some() { "server and client in two network namespaces, veth pair" } else { "loopback" };
    let kept = note.lock().map(|n| n.clone()).unwrap_or_default();
    Ok((h?, format!("{path}; --busy-poll-us {BUSY_POLL_US}; client TCP_NODELAY, {kept}; 1 in flight")))
}

/// Idle between two requests of the sparse rows.
const SPARSE_GAP_NS: u64 = 1_000_000;

/// (c'') One request per millisecond — the server and client idle between them, as at
/// light load — over the socket, busy-polling both ends: as is, or with both ends kept
/// warm after `keep_warm` idle (the server's `--keep-warm-us`, the client's own pair;
/// see `crate::keep_warm`). At most 2000 timed requests (2 s).
fn sparse(
    model: &Path,
    n: usize,
    server_core: usize,
    client_core: usize,
    scale: i64,
    extras: u16,
    keep_warm: Option<Duration>,
) -> Result<Histogram<u64>, String> {
    let server = local_server(model, PollMode::Spin, server_core, keep_warm)?;
    let socket = server.socket.clone();
    let open = move || -> Result<(UnixStream, Option<crate::keep_warm::KeepWarm>), String> {
        let (s, _) = crate::replay::connect(&socket)?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        let warm = keep_warm.map(crate::keep_warm::KeepWarm::new).transpose().map_err(|e| e.to_string())?;
        Ok((s, warm))
    };
    // Spin out the gap, warming when asked.
    let idle = |(_, warm): &mut (UnixStream, Option<crate::keep_warm::KeepWarm>)| {
        let until = now_ns() + SPARSE_GAP_NS;
        while now_ns() < until {
            match warm.as_mut() {
                Some(w) if w.due(now_ns()) => w.socket_round_trip(),
                _ => std::hint::spin_loop(),
            }
        }
    };
    let h = paced_round_trips(n.min(2_000), client_core, scale, extras, open, idle, |(s, warm), req| {
        let mut buf = [0u8; RESPONSE_SIZE];
        write_all_spin(s, bytemuck::bytes_of(req))?;
        read_exact_spin(s, &mut buf)?;
        if let Some(w) = warm.as_mut() {
            w.worked(now_ns());
        }
        Ok(bytemuck::pod_read_unaligned(&buf))
    });
    server.stop()?;
    h
}

/// A copy of `model`'s manifest named `<name>_shadow` (the same .onnx, by absolute path), in
/// a temporary directory (kept while the directory lives): the bench's shadow candidate.
fn shadow_copy(model: &Path) -> Result<(ScratchDir, PathBuf), String> {
    let text = std::fs::read_to_string(model).map_err(|e| format!("{}: {e}", model.display()))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", model.display()))?;
    let m = table.get_mut("model").and_then(|m| m.as_table_mut()).ok_or("the manifest has no [model]")?;
    let name = m.get("name").and_then(|n| n.as_str()).unwrap_or("model").to_string();
    let onnx = m.get("onnx").and_then(|o| o.as_str()).ok_or("the manifest names no onnx")?;
    let onnx = model.parent().unwrap_or(Path::new(".")).join(onnx);
    let onnx = std::fs::canonicalize(&onnx).map_err(|e| format!("{}: {e}", onnx.display()))?;
    m.insert("name".into(), toml::Value::String(format!("{name}_shadow")));
    m.insert("onnx".into(), toml::Value::String(onnx.display().to_string()));
    let dir = ScratchDir(std::env::temp_dir().join(format!(
        "tickinfer-shadow-{}-{}",
        std::process::id(),
        now_ns()
    )));
    std::fs::create_dir_all(&dir.0).map_err(|e| format!("{}: {e}", dir.0.display()))?;
    let path = dir.0.join("shadow.toml");
    std::fs::write(&path, toml::to_string(&table).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    Ok((dir, path))
}

/// A directory removed when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Wait (at most 60 s) until `server` has its shadow attached.
fn shadow_attached(server: &crate::replay::LocalServer) -> Result<(), String> {
    let t0 = Instant::now();
    while server.shadows().is_empty() {
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("the shadow was not attached within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// (c) with a copy of the model attached as a shadow candidate: the primary's round trip,
/// and a note of what the shadow did meanwhile.
fn shadowed(
    model: &Path,
    n: usize,
    server_core: usize,
    client_core: usize,
    scale: i64,
    extras: u16,
) -> Result<(Histogram<u64>, String), String> {
    let (_dir, shadow) = shadow_copy(model)?;
    let mut cfg = polling(model, PollMode::Spin);
    cfg.shadows = vec![shadow];
    let server = local_server_with(cfg, server_core)?;
    shadow_attached(&server)?;
    let h = sync_client(&server.socket, n, client_core, scale, extras)?;
    std::thread::sleep(Duration::from_millis(300));
    let r = server.shadows().pop().unwrap_or_default();
    server.stop()?;
    Ok((
        h,
        format!(
            "busy-poll client, 1 in flight; the same model as a shadow ({}): scored {}, dropped {}, agreement {}",
            r.backend,
            r.scored,
            r.dropped,
            r.agreement_rate.map_or("n/a".into(), |a| format!("{:.2} %", 100.0 * a))
        ),
    ))
}

/// (d) Pipelined throughput: each connection keeps two windows in flight; with `shadow`
/// attached when given (its report returned).
#[allow(clippy::too_many_arguments)]
fn throughput(
    model: &Path,
    opts: &BenchOptions,
    server_core: usize,
    client_core: usize,
    scale: i64,
    extras: u16,
    shadow: Option<PathBuf>,
) -> Result<(f64, Histogram<u64>, crate::stats::ShadowReport), String> {
    let mut cfg = polling(model, PollMode::Spin);
    let shadowed = shadow.is_some();
    cfg.shadows = shadow.into_iter().collect();
    let server = local_server_with(cfg, server_core)?;
    if shadowed {
        shadow_attached(&server)?;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(opts.throughput_secs);
    let window = opts.window.max(1);
    let threads: Vec<_> = (0..opts.connections.max(1))
        .map(|c| {
            let socket = server.socket.clone();
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>), String> {
                pin(client_core);
                let (mut s, _) = crate::replay::connect(&socket)?;
                let reqs: Vec<MlRequest> =
                    (0..window as u64).map(|i| sample_request(scale, extras, (c as u64) << 32 | i)).collect();
                let bytes: &[u8] = bytemuck::cast_slice(&reqs);
                let mut answers = vec![0u8; window * RESPONSE_SIZE];
                let mut h = hist();
                let (mut done, mut sent_at) = (0u64, std::collections::VecDeque::new());
                s.write_all(bytes).map_err(|e| e.to_string())?;
                sent_at.push_back(now_ns());
                loop {
                    let more = Instant::now() < deadline;
                    if more {
                        s.write_all(bytes).map_err(|e| e.to_string())?;
                        sent_at.push_back(now_ns());
                    }
                    s.read_exact(&mut answers).map_err(|e| e.to_string())?;
                    h.saturating_record(now_ns() - sent_at.pop_front().unwrap_or(0));
                    let first: MlResponse = bytemuck::pod_read_unaligned(&answers[..RESPONSE_SIZE]);
                    if first.status != 0 {
                        return Err(format!("throughput: status {}", { first.status }));
                    }
                    done += window as u64;
                    if sent_at.is_empty() {
                        break;
                    }
                }
                Ok((done, h))
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut total = 0;
    let mut h = hist();
    for t in threads {
        let (n, th) = t.join().map_err(|_| "throughput client panicked")??;
        total += n;
        let _ = h.add(&th);
    }
    let secs = t0.elapsed().as_secs_f64();
    if shadowed {
        std::thread::sleep(Duration::from_millis(300));
    }
    let report = server.shadows().pop().unwrap_or_default();
    let stats = server.stop()?;
    log::info!("throughput run: server batch mean {:.1}", stats.batch.mean);
    Ok((total as f64 / secs, h, report))
}

/// (e) The quick alternative: a Python socket server calling onnxruntime.
fn python_sidecar(
    model: &Path,
    python: &str,
    n: usize,
    server_core: usize,
    client_core: usize,
    scale: i64,
    extras: u16,
) -> Result<Histogram<u64>, String> {
    let check = std::process::Command::new(python).args(["-c", "import onnxruntime, numpy"]).output();
    match check {
        Ok(o) if o.status.success() => {}
        Ok(_) => return Err(format!("{python} cannot import onnxruntime and numpy (pip install onnxruntime numpy, or set TICKINFER_PYTHON)")),
        Err(e) => return Err(format!("cannot run {python}: {e}")),
    }
    let script =
        [PathBuf::from("scripts/python_sidecar.py"), crate::source_root().join("scripts/python_sidecar.py")]
            .into_iter()
            .find(|p| p.exists())
            .ok_or("scripts/python_sidecar.py not found")?;
    let dir = std::env::temp_dir().join(format!("tickinfer-py-{}-{}", std::process::id(), now_ns()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let socket = dir.join("py.sock");
    let mut child = std::process::Command::new("taskset")
        .args(["-c", &server_core.to_string(), python])
        .arg(&script)
        .arg("--model")
        .arg(model)
        .arg("--socket")
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .spawn()
        .or_else(|_| {
            std::process::Command::new(python)
                .arg(&script)
                .arg("--model")
                .arg(model)
                .arg("--socket")
                .arg(&socket)
                .spawn()
        })
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    while !socket.exists() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let h = sync_client(&socket, n, client_core, scale, extras);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    h
}

/// The table as markdown.
pub fn markdown(r: &BenchReport) -> String {
    let h = &r.host;
    let mut s = format!(
        "Host: {} ({} cores online, usable {:?}; server core {}, client core {}), clocksource {}, isolated `{}`, governor {}, steal {:.2}%, kernel {}\n\n",
        h.cpu, h.cores_online, h.usable_cores, h.server_core, h.client_core, h.clocksource, h.isolated, h.governor, h.steal_percent, h.kernel
    );
    s += "| row | n | p50 ns | p99 ns | p99.9 ns | max ns | signals/s | setup |\n|---|---:|---:|---:|---:|---:|---:|---|\n";
    for row in &r.rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.name,
            row.count,
            row.p50,
            row.p99,
            row.p999,
            row.max,
            row.throughput_per_s.map_or("".into(), |t| format!("{t:.0}")),
            row.note
        );
    }
    s += "\n";
    s += &ratio_lines(r);
    s
}

/// The run's ratios against their targets, one line each (shared by `bench.md` and `--markdown`).
fn ratio_lines(r: &BenchReport) -> String {
    let mut s = String::new();
    s += &format!(
        "E2E / (floor + bare ORT): p50 {:.2} (target ≤ 1.2), p99 {:.2} (target ≤ 1.3); pipelined throughput {:.0} signals/s (target ≥ 500 000)\n",
        r.ratios.p50, r.ratios.p99, r.ratios.throughput_per_s
    );
    s += &format!(
        "E2E over shared memory − engine alone: p50 {:+} ns (target ≤ +500), p99 {:+} ns (target ≤ +1000)\n",
        r.ratios.shm_minus_engine_p50_ns, r.ratios.shm_minus_engine_p99_ns
    );
    s += &format!(
        "One request per ms / back to back, p50: {:.2} as is, {:.2} with both ends kept warm (target ≤ 2)\n",
        r.ratios.sparse_p50, r.ratios.sparse_kept_warm_p50
    );
    s += &format!(
        "E2E over TCP − (TCP floor + engine), p50 (median of paired chunks): loopback {:+} ns, veth {} (target ≤ +500)\n",
        r.ratios.tcp_loopback_over_floor_and_engine_p50_ns,
        r.ratios
            .tcp_veth_over_floor_and_engine_p50_ns
            .map_or("skipped (needs root and iproute2)".into(), |v| format!("{v:+} ns"))
    );
    if let Some(cost) = r.ratios.quality_cost_p50_ns {
        s += &format!("Scoring stage with live signal quality − without, p50: {cost:+} ns (target ≤ +50)\n");
    }
    let row = |name: &str| r.rows.iter().find(|row| row.name == name && row.count > 0);
    if let (Some(bare), Some(shadowed)) =
        (row("tickinfer e2e --poll spin"), row("tickinfer e2e --poll spin, one shadow"))
    {
        let pct = |a: u64, b: u64| 100.0 * (a as f64 / b.max(1) as f64 - 1.0);
        s += &format!(
            "E2E with one shadow / without, --poll spin: p50 {:+.1} %, p99 {:+.1} % (target ≤ +5 % at p50)\n",
            pct(shadowed.p50, bare.p50),
            pct(shadowed.p99, bare.p99)
        );
    }
    if let (Some(bare), Some(shadowed)) =
        (row("tickinfer throughput (pipelined)"), row("tickinfer throughput (pipelined), one shadow"))
    {
        if let (Some(a), Some(b)) = (bare.throughput_per_s, shadowed.throughput_per_s) {
            s += &format!("Pipelined throughput with one shadow / without: {:.2}\n", b / a.max(1e-9));
        }
    }
    s
}

/// The prefixes of the per-model rows (`bare ORT: NAME`, then the engines `bare_ort` ran).
const MODEL_ROWS: [&str; 4] = ["bare ORT: ", "engine: ", "engine, verify off: ", "engine (ort): "];

/// `p50 / p99 / p99.9` of a row in µs, as the hand-written tables of docs/performance.md give them.
fn us3(row: &Row) -> String {
    let us = |ns: u64| {
        let v = ns as f64 / 1e3;
        if v < 10.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.1}")
        }
    };
    format!("{} / {} / {}", us(row.p50), us(row.p99), us(row.p999))
}

/// The first word after `backend ` in a row's note (`native` or `ort`).
fn backend_of(row: &Row) -> &str {
    row.note.split("backend ").nth(1).and_then(|b| b.split([' ', ';']).next()).unwrap_or("?")
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM` (UTC; the civil calendar from days, no time zone).
pub fn utc_minute(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days_from_civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

/// What `tickinfer bench --markdown` prints, ready for the generated block of
/// docs/performance.md: when (UTC), on what machine and with what configuration the run
/// was taken, then its rows as two tables (the request path; the stateful and sequence
/// models, engine beside bare ORT) and the ratios against their targets.
pub fn docs_markdown(r: &BenchReport, opts: &BenchOptions) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let load = read_to_string("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let h = &r.host;
    let mut s = format!(
        "Run of {} UTC, `tickinfer bench --requests {} --throughput-secs {} --connections {} --window {}`.\n\
         Machine: {}, {} cores online (usable {:?}), kernel {}, clocksource {}, isolated `{}`, governor {}, steal {:.2}%, \
         load average {} when the run ended.\n\
         Pinning: echo/server core {}, client core {}; {} round trips per latency row.\n\n",
        utc_minute(now),
        opts.requests,
        opts.throughput_secs,
        opts.connections,
        opts.window,
        h.cpu,
        h.cores_online,
        h.usable_cores,
        h.kernel,
        h.clocksource,
        h.isolated,
        h.governor,
        h.steal_percent,
        if load.is_empty() { "-".into() } else { load },
        h.server_core,
        h.client_core,
        opts.requests.max(10),
    );
    let is_model_row = |row: &Row| MODEL_ROWS.iter().any(|p| row.name.starts_with(p));
    let mut skipped = Vec::new();
    s += "| row | p50 ns | p99 ns | p99.9 ns | signals/s |\n|---|---:|---:|---:|---:|\n";
    for row in r.rows.iter().filter(|row| !is_model_row(row)) {
        if row.count == 0 {
            s += &format!("| {} | skipped | | | |\n", row.name);
            skipped.push(format!("{}: {}", row.name, row.note));
            continue;
        }
        let per_s = row.throughput_per_s.map_or(String::new(), |t| format!("{t:.0}"));
        s += &format!("| {} | {} | {} | {} | {per_s} |\n", row.name, row.p50, row.p99, row.p999);
    }
    let models: Vec<&str> = r.rows.iter().filter_map(|row| row.name.strip_prefix("bare ORT: ")).collect();
    if !models.is_empty() {
        s += "\n| model, p50 / p99 / p99.9 µs | bare ORT | engine, backend `auto` chose | engine, verify off | engine on ORT |\n";
        s += "|---|---:|---:|---:|---:|\n";
        for m in models {
            let find =
                |prefix: &str| r.rows.iter().find(|row| row.name == format!("{prefix}{m}") && row.count > 0);
            let bare = find("bare ORT: ").expect("the model's own row");
            let what = bare.note.split("; ").nth(1).map_or("", |w| w.trim_end_matches(", input rows ready"));
            let cell = |prefix: &str| find(prefix).map_or("(same)".to_string(), us3);
            let engine =
                find("engine: ").map_or("skipped".to_string(), |e| format!("{}: {}", backend_of(e), us3(e)));
            s += &format!(
                "| {m} ({what}) | {} | {engine} | {} | {} |\n",
                us3(bare),
                cell("engine, verify off: "),
                cell("engine (ort): ")
            );
        }
    }
    for row in r.rows.iter().filter(|row| is_model_row(row) && row.count == 0) {
        skipped.push(format!("{}: {}", row.name, row.note));
    }
    s += "\n";
    for why in skipped {
        s += &format!("Skipped — {why}\n");
    }
    s += &ratio_lines(r);
    s
}

fn write_outputs(r: &BenchReport, out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(r).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    std::fs::write(out.join("bench.md"), markdown(r)).map_err(|e| e.to_string())?;
    let series: Vec<(&str, &Histogram<u64>)> = r
        .rows
        .iter()
        .filter(|row| !row.name.contains("throughput"))
        .filter_map(|row| row.hist.as_ref().map(|h| (row.name.as_str(), h)))
        .collect();
    let svg = crate::replay::report::plot_svg_series(&series, "tickinfer bench: latency by percentile");
    std::fs::write(out.join("bench.svg"), &svg).map_err(|e| e.to_string())?;
    if let Err(e) = crate::replay::report::svg_to_png(&svg, &out.join("bench.png")) {
        log::warn!("bench.png not written: {e}");
    }
    Ok(())
}
