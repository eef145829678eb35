//! Replay output: latency table, signal quality, signals file, JSON summary and
//! the HDR percentile-distribution plot (SVG, and PNG rendered from it).

use std::io::Write;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{ReplayRun, Speed};
use crate::quality::{LabelRule, Resolved, Unscored};
use crate::stats::Percentiles;
use crate::wire::Status;

/// A progress bar on stderr over events (hidden when not a terminal or not wanted).
pub fn progress_bar(total: u64, wanted: bool) -> indicatif::ProgressBar {
    styled_bar(total, wanted, "replay {bar:40} {pos}/{len} {per_sec} eta {eta}")
}

/// A progress bar over the input's bytes (for inputs of any size; event counts are
/// unknown until the end).
pub fn progress_bar_bytes(total: u64, wanted: bool) -> indicatif::ProgressBar {
    styled_bar(total, wanted, "replay {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
}

fn styled_bar(total: u64, wanted: bool, template: &str) -> indicatif::ProgressBar {
    if !wanted {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Direction accuracy against the realised mid move at the label rule's horizon (same
/// symbol): the rule and the counts the server's live signal quality keeps (`crate::quality`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Quality {
    pub horizon_events: Option<u32>,
    pub horizon_ms: Option<f64>,
    pub flat_bps: f64,
    /// Answered requests with a realised label.
    pub evaluated: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Share of non-flat calls whose direction came true.
    pub hit_rate: Option<f64>,
    /// Pearson IC of direction × confidence against the realised return.
    pub ic: Option<f64>,
    /// Always predicting the most frequent realised class of this replay.
    pub majority_class: i8,
    pub majority_accuracy: f64,
    pub majority_macro_f1: f64,
    /// Share of realised sell / flat / buy.
    pub realised_balance: [f64; 3],
    /// Share of predicted sell / flat / buy.
    pub predicted_balance: [f64; 3],
    /// `[realised + 1][predicted + 1]`: what a server's `tickinfer_signal_outcomes_total` counts.
    pub confusion: crate::quality::Confusion,
    /// Answered requests whose symbol was not seen again (k times) within the horizon in ms.
    pub not_seen: u64,
    /// Answered requests still waiting for their horizon when the input ended.
    pub pending: u64,
}

/// The JSON summary.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub input: String,
    pub format: super::source::Format,
    pub model: String,
    pub model_version: u32,
    pub speed: Speed,
    pub rate: Option<f64>,
    pub connections: usize,
    pub window: usize,
    /// `socket` or `shm`.
    pub transport: super::Transport,
    pub events: u64,
    pub skipped_rows: Vec<(String, u64)>,
    pub wall_seconds: f64,
    pub throughput_per_s: f64,
    /// Open loop (paced by the recording or a rate), or closed loop.
    pub open_loop: bool,
    /// How the connection threads waited, and where they ran (`None`: not pinned).
    pub client_poll: super::ClientPoll,
    /// `--keep-warm-us` of the connection threads (`None`: off).
    pub keep_warm_us: Option<u64>,
    pub client_cores: Vec<Option<usize>>,
    /// Events read ahead of the senders per connection: replay's memory bound.
    pub read_ahead_events: usize,
    /// Round trip (closed loop) or latency from the intended send time (open loop).
    pub latency_ns: Percentiles,
    /// Open loop: actual send − intended send, the client's own lateness.
    pub schedule_lag_ns: Option<Percentiles>,
    /// Open loop: how often and how long a full window held a due send back.
    pub window_waits: super::WindowWaits,
    /// What the numbers should not be trusted for, and why (e.g. the client lagged).
    pub warnings: Vec<String>,
    pub by_status: Vec<(String, u64)>,
    pub mismatched_ids: u64,
    pub lost: u64,
    pub quality: Quality,
    pub signals_file: Option<PathBuf>,
    pub plot_svg: Option<PathBuf>,
    pub plot_png: Option<PathBuf>,
}

/// Compute the summary of a run.
pub fn summarize(run: &ReplayRun, opts: &super::ReplayOptions) -> Summary {
    let by_status = run
        .by_status
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(c, &n)| {
            let name = Status::from_code(c as u16).map_or("unknown".to_string(), |s| s.as_str().to_string());
            (format!("{c} {name}"), n)
        })
        .collect();
    let n = run.events;
    let wall = run.wall_ns as f64 / 1e9;
    let latency_ns = Percentiles::of(&run.latency);
    let schedule_lag_ns = run.open_loop.then(|| Percentiles::of(&run.schedule_lag));
    let mut warnings = Vec::new();
    if let Some(lag) = &schedule_lag_ns {
        // The client's lateness is inside every latency number: past a tenth of it, they
        // measure the client as much as the server.
        if lag.p99 * 10 > latency_ns.p99 {
            warnings.push(format!(
                "the client lagged: schedule lag p99 {:.2} µs is over 10% of latency p99 {:.2} µs; \
                 give the client a core of its own (fewer --connections, a quiet machine, --client-poll spin)",
                lag.p99 as f64 / 1e3,
                latency_ns.p99 as f64 / 1e3
            ));
        }
    }
    if run.window_waits.episodes > 0 {
        warnings.push(format!(
            "a full window held due sends back {} times ({:.2} ms in all, {:.2} ms at most): the server \
             fell behind the schedule (their latency counts from the due time); --window raises it",
            run.window_waits.episodes,
            run.window_waits.total_ns as f64 / 1e6,
            run.window_waits.max_ns as f64 / 1e6
        ));
    }
    Summary {
        input: opts.input.display().to_string(),
        format: opts.format,
        model: run.model_name.clone(),
        model_version: run.model_version,
        speed: opts.speed,
        rate: opts.rate,
        connections: opts.connections,
        window: run.window,
        transport: opts.transport,
        open_loop: run.open_loop,
        client_poll: opts.client_poll,
        keep_warm_us: opts.keep_warm.map(|d| d.as_micros() as u64),
        client_cores: run.client_cores.clone(),
        read_ahead_events: run.read_ahead,
        schedule_lag_ns,
        window_waits: run.window_waits,
        warnings,
        events: n,
        skipped_rows: run.skipped.clone(),
        wall_seconds: wall,
        throughput_per_s: if wall > 0.0 { n as f64 / wall } else { 0.0 },
        latency_ns,
        by_status,
        mismatched_ids: run.mismatched,
        lost: run.lost,
        quality: run.quality.clone(),
        signals_file: None,
        plot_svg: None,
        plot_png: None,
    }
}

/// Where answers go as they complete, in event order: the signals file, the counts by
/// status, and the signal-quality evaluation, which keeps only the events each symbol's
/// oldest unresolved answer still waits on ([`super::horizon::Lookahead`]: bounded memory
/// whatever the input's size).
pub struct Sink {
    signals: Option<std::io::BufWriter<std::fs::File>>,
    pub events: u64,
    by_status: Vec<u64>,
    lost: u64,
    rule: LabelRule,
    score_from: u64,
    /// Per symbol, its events from the oldest one not yet resolved on: (index in the
    /// replay, the model's (direction, confidence, target price) if answered ok).
    recent: super::horizon::Lookahead<(u64, Option<Answer>)>,
    counts: crate::quality::Counts,
}

/// A model's answer as scored: (direction, confidence, target price).
type Answer = (i8, u8, i64);

impl Sink {
    pub fn new(signals: Option<&Path>, rule: LabelRule, score_from: usize) -> Result<Sink, String> {
        let rule = rule.checked()?;
        let signals = match signals {
            Some(p) => {
                let mut w = std::io::BufWriter::new(
                    std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
                );
                writeln!(w, "timestamp_ns,symbol_id,direction,confidence,target_price,latency_ns,status")
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                Some(w)
            }
            None => None,
        };
        Ok(Sink {
            signals,
            events: 0,
            by_status: vec![0; Status::COUNT + 1],
            lost: 0,
            rule,
            score_from: score_from as u64,
            recent: super::horizon::Lookahead::new(rule),
            counts: Default::default(),
        })
    }

    /// The next event in order, and what became of it (`None`: never answered).
    pub fn add(&mut self, meta: &super::Meta, outcome: Option<super::Outcome>) -> std::io::Result<()> {
        let i = self.events;
        self.events += 1;
        if let Some(w) = &mut self.signals {
            match &outcome {
                Some(o) => writeln!(
                    w,
                    "{},{},{},{},{},{},{}",
                    meta.ts_ns,
                    meta.symbol,
                    o.direction,
                    o.confidence,
                    o.target_price,
                    o.latency_ns,
                    o.status
                )?,
                None => writeln!(w, "{},{},,,,,lost", meta.ts_ns, meta.symbol)?,
            }
        }
        let answer = match &outcome {
            Some(o) => {
                self.by_status[(o.status as usize).min(Status::COUNT)] += 1;
                (o.status == Status::Ok.code()).then_some((o.direction, o.confidence, o.target_price))
            }
            None => {
                self.lost += 1;
                None
            }
        };
        if !meta.quoted {
            return Ok(()); // no usable mid: not an event of its symbol's history
        }
        // This event resolves the symbol's oldest events whose horizon it reaches.
        let (rule, score_from, counts) = (&self.rule, self.score_from, &mut self.counts);
        self.recent.push(meta.symbol, meta.ts_ns, meta.mid2, (i, answer), |(i, answer), then, realised| {
            let Some(answer) = answer.filter(|_| i >= score_from) else { return };
            counts.add(&match realised {
                Some(now) => Resolved::scored(rule, then, answer, now),
                None => Resolved::unscored(Unscored::NotSeen),
            });
        });
        Ok(())
    }

    /// Flush the signals file; (events, answers by status, lost, quality).
    pub fn finish(mut self) -> std::io::Result<(u64, Vec<u64>, u64, Quality)> {
        if let Some(w) = &mut self.signals {
            w.flush()?;
        }
        let pending =
            self.recent.items().filter(|(i, answer)| answer.is_some() && *i >= self.score_from).count()
                as u64;
        let quality = quality_of(&self.counts, &self.rule, pending);
        Ok((self.events, self.by_status, self.lost, quality))
    }
}

/// Where a training report's test period starts (the event after train + validation),
/// read from its `train N events, validation M` line, as `scripts/train_*.py` write it.
pub fn test_period_start(report: &str) -> Option<usize> {
    let after = |key: &str| -> Option<usize> {
        report.split(key).nth(1)?.split_whitespace().next()?.trim_end_matches(',').parse().ok()
    };
    Some(after("train ")? + after("validation ")?)
}

/// Quality from the counts of the evaluated events (answered ok, with a realised label),
/// beside always predicting this replay's most frequent realised class.
fn quality_of(counts: &crate::quality::Counts, rule: &LabelRule, pending: u64) -> Quality {
    let c = &counts.outcomes;
    let total = c.total();
    let share = |counts: [u64; 3]| counts.map(|n| if total == 0 { 0.0 } else { n as f64 / total as f64 });
    let scores = counts.scores();
    Quality {
        horizon_events: rule.horizon_events,
        horizon_ms: rule.horizon_ms,
        flat_bps: rule.flat_bps,
        evaluated: total,
        accuracy: scores.accuracy,
        macro_f1: scores.macro_f1,
        hit_rate: scores.hit_rate,
        ic: scores.ic,
        majority_class: c.majority(),
        majority_accuracy: scores.majority_accuracy,
        majority_macro_f1: scores.majority_macro_f1,
        realised_balance: share(c.realised()),
        predicted_balance: share(c.predicted()),
        confusion: *c,
        not_seen: counts.unscored[Unscored::NotSeen as usize],
        pending,
    }
}

/// The human-readable report.
pub fn print(s: &Summary) -> String {
    let l = &s.latency_ns;
    let mode = match (s.rate, s.speed) {
        (Some(r), _) => {
            format!("open loop at {r} req/s, window {} (latency from intended send time)", s.window)
        }
        (None, Speed::Times(x)) => {
            format!("open loop at {x}x recorded speed, window {} (latency from intended send time)", s.window)
        }
        (None, Speed::Max) => format!("closed loop, window {} (round trip)", s.window),
    };
    let cores: Vec<String> =
        s.client_cores.iter().map(|c| c.map_or("unpinned".to_string(), |c| format!("core {c}"))).collect();
    let mut out = format!(
        "replay of {} ({:?}) through model {} v{}: {} events, {} connection(s) over {}, {mode}\n",
        s.input,
        s.format,
        s.model,
        s.model_version,
        s.events,
        s.connections,
        match s.transport {
            super::Transport::Socket => "the socket",
            super::Transport::Shm => "shared memory",
            super::Transport::Tcp => "TCP",
        }
    );
    for (why, n) in &s.skipped_rows {
        out += &format!("  skipped {n} input rows: {why}\n");
    }
    let us = |p: &Percentiles| {
        [p.p50, p.p90, p.p99, p.p999, p.p9999, p.max].map(|v| format!("{:.2}", v as f64 / 1e3))
    };
    let [p50, p90, p99, p999, p9999, max] = us(l);
    out +=
        &format!("latency µs   p50 {p50}  p90 {p90}  p99 {p99}  p99.9 {p999}  p99.99 {p9999}  max {max}\n");
    if let Some(g) = &s.schedule_lag_ns {
        let [p50, p90, p99, p999, _, max] = us(g);
        out += &format!(
            "sched. lag µs p50 {p50}  p90 {p90}  p99 {p99}  p99.9 {p999}  max {max}  (actual − intended send: the client's share)\n"
        );
    }
    let warm = s.keep_warm_us.map_or(String::new(), |us| format!(", kept warm after {us} µs idle"));
    out += &format!(
        "client       {} connection thread(s), {:?} polling{warm}, {}\n",
        s.connections,
        s.client_poll,
        cores.join(", ")
    );
    out += &format!("throughput   {:.0} signals/s over {:.3} s\n", s.throughput_per_s, s.wall_seconds);
    for w in &s.warnings {
        out += &format!("WARNING      {w}\n");
    }
    for (st, n) in &s.by_status {
        out += &format!("status       {st}: {n}\n");
    }
    if s.mismatched_ids > 0 || s.lost > 0 {
        out += &format!(
            "PROBLEMS     {} answers with the wrong id, {} never answered\n",
            s.mismatched_ids, s.lost
        );
    }
    let q = &s.quality;
    let names = ["sell", "flat", "buy"];
    let rule = LabelRule { horizon_events: q.horizon_events, horizon_ms: q.horizon_ms, flat_bps: q.flat_bps };
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    out += &format!(
        "signals      vs realised direction: {} ({} evaluated, {} not seen within the horizon, {} pending at the end):\n\
         \x20 model          accuracy {:.3}  macro-F1 {:.3}  hit rate {}  IC {}\n\
         \x20 always-{:<7} accuracy {:.3}  macro-F1 {:.3}\n\
         \x20 realised balance sell {:.1}% flat {:.1}% buy {:.1}%; predicted sell {:.1}% flat {:.1}% buy {:.1}%\n",
        rule.describe(),
        q.evaluated,
        q.not_seen,
        q.pending,
        q.accuracy,
        q.macro_f1,
        opt(q.hit_rate),
        opt(q.ic),
        names[(q.majority_class + 1) as usize],
        q.majority_accuracy,
        q.majority_macro_f1,
        100.0 * q.realised_balance[0],
        100.0 * q.realised_balance[1],
        100.0 * q.realised_balance[2],
        100.0 * q.predicted_balance[0],
        100.0 * q.predicted_balance[1],
        100.0 * q.predicted_balance[2],
    );
    for (what, p) in [("signals", &s.signals_file), ("plot", &s.plot_svg), ("plot", &s.plot_png)] {
        if let Some(p) = p {
            out += &format!("{what:<12} {}\n", p.display());
        }
    }
    out
}

/// The HDR percentile distribution as an SVG: latency (µs) against percentile on a
/// 1/(1-p) log axis, as HdrHistogram's plotter draws it.
pub fn plot_svg(h: &Histogram<u64>, title: &str) -> String {
    plot_svg_series(&[("latency", h)], title)
}

const COLORS: [&str; 8] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// Several percentile curves (ns histograms) on one plot, with a legend.
pub fn plot_svg_series(series: &[(&str, &Histogram<u64>)], title: &str) -> String {
    let (w, hgt) = (900.0, 520.0);
    let (left, right, top, bottom) = (80.0, 30.0, 50.0, 60.0);
    let (pw, ph) = (w - left - right, hgt - top - bottom);
    let max_x = 5.0; // 99.999th percentile
    let curves: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, h)| {
            let mut pts = Vec::new();
            if !h.is_empty() {
                for v in h.iter_quantiles(10) {
                    let q = v.quantile_iterated_to();
                    let x = if q >= 1.0 { max_x } else { (1.0 / (1.0 - q)).log10().min(max_x) };
                    pts.push((x, h.highest_equivalent(v.value_iterated_to()) as f64 / 1e3));
                }
            }
            pts
        })
        .collect();
    let pts: Vec<(f64, f64)> = curves.iter().flatten().copied().collect();
    // Log latency axis: the median and the tail on one readable picture.
    let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).max(0.01);
    let hi = pts.iter().map(|p| p.1).fold(0.0, f64::max).max(lo * 10.0);
    let (dmin, dmax) = (lo.log10().floor(), hi.log10().ceil());
    let sx = |x: f64| left + x / max_x * pw;
    let sy = |y: f64| top + ph - (y.max(0.01).log10() - dmin) / (dmax - dmin) * ph;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{hgt}\" viewBox=\"0 0 {w} {hgt}\" \
         font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">{}</text>\n",
        w / 2.0,
        xml_escape(title)
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].iter().enumerate() {
        let x = sx(i as f64);
        svg += &format!(
            "<line x1=\"{x}\" y1=\"{top}\" x2=\"{x}\" y2=\"{}\" stroke=\"#ddd\"/>\n\
             <text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            top + ph,
            top + ph + 20.0
        );
    }
    let mut decade = dmin;
    while decade <= dmax + 1e-9 {
        for m in [1.0, 2.0, 5.0] {
            let y = m * 10f64.powf(decade);
            if y.log10() > dmax + 1e-9 {
                break;
            }
            let py = sy(y);
            let (stroke, label) = if m == 1.0 { ("#ccc", trim_float(y)) } else { ("#eee", String::new()) };
            svg += &format!(
                "<line x1=\"{left}\" y1=\"{py}\" x2=\"{}\" y2=\"{py}\" stroke=\"{stroke}\"/>\n\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>\n",
                left + pw,
                left - 8.0,
                py + 4.0
            );
        }
        decade += 1.0;
    }
    svg += &format!(
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>\n\
         <text x=\"20\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 20 {})\">latency (µs, log scale)</text>\n",
        left + pw / 2.0,
        hgt - 15.0,
        top + ph / 2.0,
        top + ph / 2.0
    );
    for (i, (curve, (name, _))) in curves.iter().zip(series).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line: Vec<String> = curve.iter().map(|&(x, y)| format!("{:.2},{:.2}", sx(x), sy(y))).collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            line.join(" ")
        );
        if series.len() > 1 {
            let ly = top + 16.0 + 18.0 * i as f64;
            svg += &format!(
                "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"3\"/>\n\
                 <text x=\"{}\" y=\"{}\">{}</text>\n",
                left + 12.0,
                left + 36.0,
                left + 42.0,
                ly + 4.0,
                xml_escape(name)
            );
        }
    }
    svg += "</svg>\n";
    svg
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Render an SVG to PNG (system fonts for the labels).
pub fn svg_to_png(svg: &str, path: &Path) -> Result<(), String> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| e.to_string())?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("empty plot")?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap.save_png(path).map_err(|e| e.to_string())
}
