//! Latency histograms (HdrHistogram) and their report format.
//!
//! Each hot thread records into its own [`Stats`] (no locks, no allocation) and
//! merges it into the shared one every stats interval with `try_lock` (never
//! waiting on the hot path). Reports are read from the shared copy by the
//! control plane (`tickinfer stats`) and the periodic log line.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::wire::Status;

/// Latency and count recorders of one thread (or the merged total).
#[derive(Clone, Debug)]
pub struct Stats {
    /// Request read → its model run starts (or its answer is made, for errors), ns.
    pub queue: Histogram<u64>,
    /// Model run per batch, ns.
    pub inference: Histogram<u64>,
    /// Request read → response queued for the write that hands it to the kernel, ns.
    pub total: Histogram<u64>,
    /// Requests per model run.
    pub batch: Histogram<u64>,
    /// Responses by wire status code.
    pub status: [u64; Status::COUNT],
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub slow_reader_disconnects: u64,
    /// Shared-memory sessions granted.
    pub shm_sessions: u64,
    /// Shared-memory sessions cut off because their rings broke the protocol.
    pub shm_faults: u64,
    /// Requests whose model output was NaN or infinite (answered `ML_ERR_MODEL_FAILURE`).
    pub nonfinite_outputs: u64,
    /// Keep-warm model runs done while idle (`--keep-warm-us`), by the thread that owns the model.
    pub keep_warm_runs: u64,
    /// Keep-warm round trips on the private socket pair, by the thread that owns the sockets.
    pub keep_warm_socket_trips: u64,
    /// Reads of the one connection, made instead of a poll while spinning, that took requests
    /// (see `server::direct_read`).
    pub direct_reads: u64,
    /// Times that connection was taken out of the poll to be read directly.
    pub direct_detaches: u64,
    /// Hellos refused because their uid held `--max-connections-per-uid` connections
    /// (also counted in `connections_refused`).
    pub uid_quota_refusals: u64,
    /// Connections closed after `--idle-timeout-s` without a request.
    pub idle_disconnects: u64,
    /// Symbols whose state slot went to a new symbol after `--evict-idle-symbols-ms` idle.
    pub symbols_evicted: u64,
    /// TCP connections accepted (`--listen-tcp`; also in `connections_accepted` once admitted).
    pub tcp_connections: u64,
    /// TCP peers closed at accept: not in `--tcp-allow` (also in `connections_refused`).
    pub tcp_peers_refused: u64,
    /// TCP hellos refused for a missing or wrong `--tcp-token-file` token (also in `connections_refused`).
    pub tcp_auth_refusals: u64,
    /// Live signal quality (the scoring thread's; taken whole, never added: see [`crate::quality::Tally`]).
    pub quality: crate::quality::Tally,
}

fn histogram(max: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, max, 3).expect("static histogram bounds are valid")
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            queue: histogram(60_000_000_000),
            inference: histogram(60_000_000_000),
            total: histogram(60_000_000_000),
            batch: histogram(65_536),
            status: [0; Status::COUNT],
            connections_accepted: 0,
            connections_refused: 0,
            slow_reader_disconnects: 0,
            shm_sessions: 0,
            shm_faults: 0,
            nonfinite_outputs: 0,
            keep_warm_runs: 0,
            keep_warm_socket_trips: 0,
            direct_reads: 0,
            direct_detaches: 0,
            uid_quota_refusals: 0,
            idle_disconnects: 0,
            symbols_evicted: 0,
            tcp_connections: 0,
            tcp_peers_refused: 0,
            tcp_auth_refusals: 0,
            quality: Default::default(),
        }
    }
}

impl Stats {
    /// Add `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        // Same bounds on both sides: add cannot fail.
        let _ = self.queue.add(&other.queue);
        let _ = self.inference.add(&other.inference);
        let _ = self.total.add(&other.total);
        let _ = self.batch.add(&other.batch);
        for (a, b) in self.status.iter_mut().zip(other.status) {
            *a += b;
        }
        self.connections_accepted += other.connections_accepted;
        self.connections_refused += other.connections_refused;
        self.slow_reader_disconnects += other.slow_reader_disconnects;
        self.shm_sessions += other.shm_sessions;
        self.shm_faults += other.shm_faults;
        self.nonfinite_outputs += other.nonfinite_outputs;
        self.keep_warm_runs += other.keep_warm_runs;
        self.keep_warm_socket_trips += other.keep_warm_socket_trips;
        self.direct_reads += other.direct_reads;
        self.direct_detaches += other.direct_detaches;
        self.uid_quota_refusals += other.uid_quota_refusals;
        self.idle_disconnects += other.idle_disconnects;
        self.symbols_evicted += other.symbols_evicted;
        self.tcp_connections += other.tcp_connections;
        self.tcp_peers_refused += other.tcp_peers_refused;
        self.tcp_auth_refusals += other.tcp_auth_refusals;
        self.quality.merge(&other.quality);
    }

    /// Zero every recorder, keeping the allocations.
    pub fn reset(&mut self) {
        self.queue.reset();
        self.inference.reset();
        self.total.reset();
        self.batch.reset();
        self.status = [0; Status::COUNT];
        self.connections_accepted = 0;
        self.connections_refused = 0;
        self.slow_reader_disconnects = 0;
        self.shm_sessions = 0;
        self.shm_faults = 0;
        self.nonfinite_outputs = 0;
        self.keep_warm_runs = 0;
        self.keep_warm_socket_trips = 0;
        self.direct_reads = 0;
        self.direct_detaches = 0;
        self.uid_quota_refusals = 0;
        self.idle_disconnects = 0;
        self.symbols_evicted = 0;
        self.tcp_connections = 0;
        self.tcp_peers_refused = 0;
        self.tcp_auth_refusals = 0;
        self.quality.mark_published();
    }

    /// Whether nothing was recorded since the last reset. Every recorder counts: the
    /// pipeline's worker records only histograms (queue, inference, batch), never statuses.
    pub fn is_empty(&self) -> bool {
        self.status.iter().all(|&n| n == 0)
            && self.queue.is_empty()
            && self.inference.is_empty()
            && self.total.is_empty()
            && self.batch.is_empty()
            && self.connections_accepted == 0
            && self.connections_refused == 0
            && self.slow_reader_disconnects == 0
            && self.shm_sessions == 0
            && self.shm_faults == 0
            && self.nonfinite_outputs == 0
            && self.keep_warm_runs == 0
            && self.keep_warm_socket_trips == 0
            && self.direct_reads == 0
            && self.direct_detaches == 0
            && self.uid_quota_refusals == 0
            && self.idle_disconnects == 0
            && self.symbols_evicted == 0
            && self.tcp_connections == 0
            && self.tcp_peers_refused == 0
            && self.tcp_auth_refusals == 0
            && !self.quality.unpublished()
    }

    pub fn report(&self) -> StatsReport {
        let by_status = self
            .status
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(code, &n)| (format!("{code} {}", Status::ALL[code].as_str()), n))
            .collect();
        StatsReport {
            responses: self.status.iter().sum(),
            by_status,
            queue_ns: Percentiles::of(&self.queue),
            inference_ns: Percentiles::of(&self.inference),
            total_ns: Percentiles::of(&self.total),
            batch: Percentiles::of(&self.batch),
            connections_accepted: self.connections_accepted,
            connections_refused: self.connections_refused,
            slow_reader_disconnects: self.slow_reader_disconnects,
            shm_sessions: self.shm_sessions,
            shm_faults: self.shm_faults,
            nonfinite_outputs: self.nonfinite_outputs,
            keep_warm_runs: self.keep_warm_runs,
            keep_warm_socket_trips: self.keep_warm_socket_trips,
            direct_reads: self.direct_reads,
            direct_detaches: self.direct_detaches,
            verify: VerifyReport::default(),
            model: None,
            uid_quota_refusals: self.uid_quota_refusals,
            idle_disconnects: self.idle_disconnects,
            symbols_evicted: self.symbols_evicted,
            tcp_connections: self.tcp_connections,
            tcp_peers_refused: self.tcp_peers_refused,
            tcp_auth_refusals: self.tcp_auth_refusals,
            signal_quality: self.quality.report(),
            shadows: Vec::new(),
        }
    }
}

/// Percentiles of one histogram.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }
}

/// What `tickinfer stats` prints (JSON on the control socket).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    pub responses: u64,
    pub by_status: BTreeMap<String, u64>,
    pub queue_ns: Percentiles,
    pub inference_ns: Percentiles,
    pub total_ns: Percentiles,
    pub batch: Percentiles,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub slow_reader_disconnects: u64,
    /// Shared-memory sessions granted.
    #[serde(default)]
    pub shm_sessions: u64,
    /// Shared-memory sessions cut off for breaking the ring protocol.
    #[serde(default)]
    pub shm_faults: u64,
    /// Requests answered `ML_ERR_MODEL_FAILURE` because the model's output was NaN or infinite.
    #[serde(default)]
    pub nonfinite_outputs: u64,
    /// Keep-warm model runs done while idle (`--keep-warm-us`).
    #[serde(default)]
    pub keep_warm_runs: u64,
    /// Keep-warm socket round trips done while idle.
    #[serde(default)]
    pub keep_warm_socket_trips: u64,
    /// Reads of the one connection, instead of a poll while spinning, that took requests.
    #[serde(default)]
    pub direct_reads: u64,
    /// Times it was taken out of the poll to be read directly.
    #[serde(default)]
    pub direct_detaches: u64,
    /// Hellos refused for `--max-connections-per-uid` (within `connections_refused`).
    #[serde(default)]
    pub uid_quota_refusals: u64,
    /// Connections closed after `--idle-timeout-s` without a request.
    #[serde(default)]
    pub idle_disconnects: u64,
    /// State slots that went to a new symbol after `--evict-idle-symbols-ms` idle.
    #[serde(default)]
    pub symbols_evicted: u64,
    /// TCP connections accepted (`--listen-tcp`).
    #[serde(default)]
    pub tcp_connections: u64,
    /// TCP peers closed at accept: not in `--tcp-allow`.
    #[serde(default)]
    pub tcp_peers_refused: u64,
    /// TCP hellos refused for a missing or wrong token.
    #[serde(default)]
    pub tcp_auth_refusals: u64,
    /// The live verifier of the native backend (filled in by the control plane).
    #[serde(default)]
    pub verify: VerifyReport,
    /// The serving model (filled in by the control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelReport>,
    /// Live signal quality of the serving model (`None` before its first answer).
    #[serde(default)]
    pub signal_quality: Option<crate::quality::QualityReport>,
    /// Shadow candidates (`crate::shadow`), in the order they were attached (filled in by the
    /// control plane).
    #[serde(default)]
    pub shadows: Vec<ShadowReport>,
}

/// One shadow candidate beside the primary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowReport {
    pub name: String,
    pub version: u32,
    /// Its manifest.
    pub path: String,
    pub backend: String,
    /// Requests it scored (every one the primary admitted to its model, but those dropped).
    pub scored: u64,
    /// Requests not queued for it because it was behind (its state then starts again).
    pub dropped: u64,
    /// Requests queued for it now.
    pub queued: u64,
    /// Holes in its stream (runs of dropped requests).
    pub gaps: u64,
    /// After a hole, until every symbol it had seen has warmed again.
    pub stale: bool,
    /// A promotion gave up on its handover: out of step for good (remove it).
    pub broken: bool,
    /// Symbols whose last answer from it carried the warming flag.
    pub warming_symbols: u64,
    /// Its model runs, per run.
    pub inference_ns: Percentiles,
    /// Rows: the primary's direction (−1, 0, +1); columns: the shadow's (both answered ok).
    pub agreement: [[u64; 3]; 3],
    /// Of those, the share with the same direction.
    pub agreement_rate: Option<f64>,
    /// The primary answered ok and the shadow did not, and the other way round.
    pub shadow_only_failed: u64,
    pub primary_only_failed: u64,
    /// Its live signal quality (`None` before its first answer).
    pub quality: Option<crate::quality::QualityReport>,
}

/// The serving model, its backend now and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    pub name: String,
    pub version: u32,
    pub provider: String,
    /// `ort`, `native (…)`, or `ort (fell back from native …)` after a disagreement.
    pub backend: String,
    /// The load-time decision: the gate's report and the timings.
    pub backend_report: String,
}

/// The live verifier's counters (`crate::verify`), cumulative since the server started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// One native answer in this many is re-run on ONNX Runtime (0: the serving model is not
    /// verified: it runs on ONNX Runtime, or verification is off).
    pub every: u32,
    pub on_disagreement: String,
    pub checked: u64,
    pub disagreed: u64,
    /// Within tolerance, decoded signal different at a rounding edge.
    pub boundary: u64,
    /// Samples the verifier was too far behind to take.
    pub dropped: u64,
    /// Engines switched to ONNX Runtime after a disagreement.
    pub fallbacks: u64,
}

impl std::fmt::Display for StatsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "responses {} (connections accepted {}, refused {} ({} over the per-uid quota), idle disconnects {}, \
             slow-reader disconnects {}, shared-memory sessions {} (faults {}), non-finite model outputs {}, \
             keep-warm runs {} (socket round trips {}), symbols evicted {}, direct reads {} (out of the poll {} times))",
            self.responses,
            self.connections_accepted,
            self.connections_refused,
            self.uid_quota_refusals,
            self.idle_disconnects,
            self.slow_reader_disconnects,
            self.shm_sessions,
            self.shm_faults,
            self.nonfinite_outputs,
            self.keep_warm_runs,
            self.keep_warm_socket_trips,
            self.symbols_evicted,
            self.direct_reads,
            self.direct_detaches
        )?;
        for (status, n) in &self.by_status {
            writeln!(f, "  status {status}: {n}")?;
        }
        if let Some(m) = &self.model {
            writeln!(f, "model {} v{} on {}, backend {}", m.name, m.version, m.provider, m.backend)?;
        }
        let v = &self.verify;
        if v.every > 0 || v.checked > 0 || v.fallbacks > 0 {
            writeln!(
                f,
                "native backend verified on ONNX Runtime (1 answer in {}, on disagreement: {}): checked {}, disagreed \
                 {}, at a rounding edge {}, dropped {}, fallbacks {}",
                v.every, v.on_disagreement, v.checked, v.disagreed, v.boundary, v.dropped, v.fallbacks
            )?;
        }
        writeln!(
            f,
            "{:<12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "ns", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        )?;
        for (name, p) in
            [("queue", &self.queue_ns), ("inference", &self.inference_ns), ("total", &self.total_ns)]
        {
            writeln!(
                f,
                "{name:<12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                p.p50, p.p90, p.p99, p.p999, p.p9999, p.max
            )?;
        }
        write!(
            f,
            "batch size   mean {:.2}, p50 {}, max {}",
            self.batch.mean, self.batch.p50, self.batch.max
        )?;
        if let Some(q) = &self.signal_quality {
            write!(f, "\n{q}")?;
        }
        for s in &self.shadows {
            write!(f, "\n{}", shadow_summary(s))?;
        }
        Ok(())
    }
}

/// A shadow in a few lines: what it runs, its state, latency, agreement and quality.
pub fn shadow_summary(s: &ShadowReport) -> String {
    let mut out = format!(
        "shadow {} v{} ({}) from {}: scored {}, dropped {} ({} holes), queued {}{}{}",
        s.name,
        s.version,
        s.backend,
        s.path,
        s.scored,
        s.dropped,
        s.gaps,
        s.queued,
        if s.stale { ", STALE until re-warmed" } else { "" },
        if s.broken { ", BROKEN (remove it)" } else { "" },
    );
    out += &format!(
        "\n  warming symbols {}; model run p50 {} ns, p99 {} ns, p99.9 {} ns",
        s.warming_symbols, s.inference_ns.p50, s.inference_ns.p99, s.inference_ns.p999
    );
    let rate = s.agreement_rate.map_or("n/a".to_string(), |r| format!("{:.2} %", 100.0 * r));
    out += &format!(
        "\n  agreement with the primary {rate} (rows: primary -1/0/+1, columns: shadow) {:?} {:?} {:?}; \
         only the shadow failed {}, only the primary {}",
        s.agreement[0], s.agreement[1], s.agreement[2], s.shadow_only_failed, s.primary_only_failed
    );
    if let Some(q) = &s.quality {
        out += &format!("\n  {}", q.to_string().replace('\n', "\n  "));
    }
    out
}
