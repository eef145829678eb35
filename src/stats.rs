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
    /// Keep-warm runs done while idle (`--keep-warm-us`): model runs, or socket round trips
    /// on the pipeline's I/O thread.
    pub keep_warm_runs: u64,
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
            signal_quality: self.quality.report(),
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
    /// Keep-warm runs done while idle (`--keep-warm-us`).
    #[serde(default)]
    pub keep_warm_runs: u64,
    /// Live signal quality of the serving model (`None` before its first answer).
    #[serde(default)]
    pub signal_quality: Option<crate::quality::QualityReport>,
}

impl std::fmt::Display for StatsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "responses {} (connections accepted {}, refused {}, slow-reader disconnects {}, shared-memory sessions {} \
             (faults {}), non-finite model outputs {}, keep-warm runs {})",
            self.responses,
            self.connections_accepted,
            self.connections_refused,
            self.slow_reader_disconnects,
            self.shm_sessions,
            self.shm_faults,
            self.nonfinite_outputs,
            self.keep_warm_runs
        )?;
        for (status, n) in &self.by_status {
            writeln!(f, "  status {status}: {n}")?;
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
        Ok(())
    }
}
