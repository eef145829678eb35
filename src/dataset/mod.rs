//! `tickinfer features`: training data from the server's own feature code.
//!
//! For every event of recorded market data (the replay readers: LOBSTER, DBN, CSV,
//! captures, with replay's options) it writes exactly the row the server would feed the
//! model of a manifest — the event prepared as replay sends it
//! ([`crate::replay::fit_to_model`]), checked as the server checks it
//! ([`crate::wire::validate`]), its symbol's state updated and the row filled by the
//! engine's own call ([`crate::features::FeatureMap::fill_next`]), with the warming flag —
//! plus its timestamp, symbol and mid, and the label at the manifest's horizon by the rule
//! replay's quality report scores with ([`crate::replay::horizon::Lookahead`]). No second
//! implementation of a feature or of the label: nothing to skew between training and serving.
//!
//! One Parquet file per input (`OUT/<input name>.parquet`, schema in [`parquet`]), streamed:
//! memory is bounded by the row group and the label look-ahead ([`table`]), whatever the
//! input's size. A file is written under a temporary name (`OUT/.<name>.parquet.part-PID`)
//! and renamed when complete: the final name only ever holds a whole file. Files run in
//! parallel (`--jobs`), one thread each; an input's reader may use a thread of its own (a
//! zip entry is inflated beside it).
//!
//! Events the server would refuse (bad prices, a crossed book, sizes, feature count, more
//! symbols than `--max-symbols`) get no row: they are counted by status, as the server would
//! answer them. Those with a usable quote are still events of their symbol for the label, as
//! in replay's report.

pub mod parquet;
pub mod table;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::manifest::Manifest;
use crate::quality::{LabelRule, RET_SCALE};
use crate::replay::horizon::Lookahead;
use crate::replay::source::{self, Format, LoadOptions, SymbolTable, TimeUnit};
use crate::state::State;
use crate::wire::{Limits, Status};

/// A look-ahead item with this bit is an event without a row (refused by the server, with a
/// usable quote): it only counts as its symbol's event.
pub(crate) const NO_ROW: u64 = 1 << 63;

/// Rows per row group by default (about 6 MiB of 18 float features).
pub const ROW_GROUP_ROWS: usize = 65_536;
/// Rows that may wait for their labels beyond a row group, by default.
pub const LOOKAHEAD_ROWS: usize = 262_144;

/// What `tickinfer features` was asked.
#[derive(Clone, Debug)]
pub struct Options {
    pub model: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub format: Format,
    pub out: PathBuf,
    /// Files written at once.
    pub jobs: usize,
    /// `NAME=ID` symbol mappings (`--symbols`).
    pub symbols: Vec<String>,
    /// CSV: `(our name, the file's column)` (`--columns`).
    pub columns: Vec<(String, String)>,
    /// CSV: the timestamp column's unit.
    pub time_unit: Option<TimeUnit>,
    /// The label rule: the manifest's `[label]`, or what the options say (checked).
    pub label: LabelRule,
    /// Leave out each file's first N events; take at most N after them.
    pub skip: usize,
    pub limit: Option<usize>,
    pub row_group_rows: usize,
    pub lookahead_rows: usize,
    /// Symbols with state per file (the server's `--max-symbols`).
    pub max_symbols: usize,
    /// A progress bar on stderr (drawn only on a terminal).
    pub progress: bool,
}

/// What one input gave.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileReport {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Events read (after `--skip`, within `--limit`).
    pub events: u64,
    /// Events the server would refuse, by status: no row.
    pub refused: Vec<(String, u64)>,
    /// Input rows the reader skipped, with why.
    pub skipped_rows: Vec<(String, u64)>,
    /// Rows, row groups, peak rows buffered, and the labels.
    #[serde(flatten)]
    pub counts: table::Counts,
    pub bytes: u64,
    pub seconds: f64,
}

/// What a run gave: every file's report, the time and the rate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub files: Vec<FileReport>,
    pub jobs: usize,
    pub events: u64,
    pub rows: u64,
    pub seconds: f64,
    /// User + system CPU time of the process over the run (every thread).
    pub cpu_seconds: f64,
}

impl Summary {
    /// The stderr summary: files, events, seconds, events/s.
    pub fn line(&self) -> String {
        let rate = |n: f64, s: f64| if s > 0.0 { n / s } else { 0.0 };
        let e = self.events as f64;
        let (labelled, cut) =
            self.files.iter().fold((0, 0), |(l, c), f| (l + f.counts.labelled, c + f.counts.cut));
        let refused: u64 = self.files.iter().flat_map(|f| f.refused.iter().map(|(_, n)| n)).sum();
        let mut line = format!(
            "tickinfer features: {} file(s), {} events, {} rows ({refused} refused, {labelled} labelled), \
             {:.3} s, {:.0} events/s ({} job(s)); {:.3} CPU s, {:.0} events per CPU second",
            self.files.len(),
            self.events,
            self.rows,
            self.seconds,
            rate(e, self.seconds),
            self.jobs,
            self.cpu_seconds,
            rate(e, self.cpu_seconds)
        );
        if cut > 0 {
            line.push_str(&format!(
                "\n  {cut} rows were written before their label's horizon came (null label): raise --lookahead-rows"
            ));
        }
        line
    }
}

/// The output name of an input: its file name less the format's extensions, `.parquet`.
pub fn output_name(input: &Path) -> String {
    let name = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut stem = name.as_str();
    for ext in [".zst", ".zip", ".dbn", ".csv", ".bin", ".capture"] {
        stem = stem.strip_suffix(ext).unwrap_or(stem);
    }
    format!("{stem}.parquet")
}

/// Write one Parquet file per input into `opts.out`. An error names each input that failed;
/// the others' files are whole, the failed ones' absent.
pub fn run(opts: &Options) -> Result<Summary, String> {
    let manifest = Manifest::load(&opts.model).map_err(|e| e.to_string())?;
    parquet::schema(&manifest.feature_names)?;
    let label = opts.label.checked().map_err(|e| format!("the label rule: {e}"))?;
    if opts.inputs.is_empty() {
        return Err("no --input".into());
    }
    if opts.max_symbols == 0 || opts.max_symbols > 65_536 {
        return Err(format!("--max-symbols {} must be in 1..=65536", opts.max_symbols));
    }
    let mut names: Vec<(String, &Path)> = Vec::new();
    for input in &opts.inputs {
        if !input.is_file() {
            return Err(format!("{}: no such file", input.display()));
        }
        let name = output_name(input);
        if let Some((_, other)) = names.iter().find(|(n, _)| *n == name) {
            return Err(format!(
                "{} and {} would both write {name}: give inputs distinct file names",
                other.display(),
                input.display()
            ));
        }
        names.push((name, input));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("--out {}: {e}", opts.out.display()))?;
    let plan = Plan { manifest, label, opts };
    let bars =
        indicatif::MultiProgress::with_draw_target(if opts.progress && std::io::stderr().is_terminal() {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        });
    let cpu0 = crate::sys::cpu_seconds();
    let t0 = Instant::now();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Mutex<Option<Result<FileReport, String>>>> =
        opts.inputs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, opts.inputs.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                // After a failure no new file starts (the ones running finish).
                if i >= names.len() || failed.load(Ordering::Relaxed) {
                    return;
                }
                let (name, input) = &names[i];
                let r = write_file(&plan, input, &opts.out.join(name), &bars);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            });
        }
    });
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_seconds = crate::sys::cpu_seconds() - cpu0;
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for (r, input) in results.into_iter().zip(&opts.inputs) {
        match r.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(Ok(f)) => files.push(f),
            Some(Err(e)) => errors.push(e),
            None => errors.push(format!("{}: not started (an earlier file failed)", input.display())),
        }
    }
    if !errors.is_empty() {
        let written: Vec<String> = files.iter().map(|f| f.output.display().to_string()).collect();
        let kept = if written.is_empty() {
            "nothing written".to_string()
        } else {
            format!("written (whole): {}", written.join(", "))
        };
        return Err(format!("{}\n{kept}", errors.join("\n")));
    }
    Ok(Summary {
        jobs: opts.jobs.clamp(1, opts.inputs.len()),
        events: files.iter().map(|f| f.events).sum(),
        rows: files.iter().map(|f| f.counts.rows).sum(),
        files,
        seconds,
        cpu_seconds,
    })
}

/// What every file shares: the manifest, the checked label rule, the options.
pub struct Plan<'a> {
    pub manifest: Manifest,
    pub label: LabelRule,
    pub opts: &'a Options,
}

/// Removes a temporary file unless it was renamed into place.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Write `input`'s rows to `output` (through a temporary file beside it, renamed when whole).
pub fn write_file(
    plan: &Plan<'_>,
    input: &Path,
    output: &Path,
    bars: &indicatif::MultiProgress,
) -> Result<FileReport, String> {
    let t0 = Instant::now();
    let dir = output.parent().unwrap_or(Path::new("."));
    let file_name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.part-{}", std::process::id()));
    let partial = Partial(Some(tmp.clone()));
    let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let sink = std::io::BufWriter::with_capacity(1 << 20, file);
    let (report, sink) =
        rows_into(plan, input, sink, bars).map_err(|e| match e.starts_with(&*input.to_string_lossy()) {
            true => e,
            false => format!("{}: {e}", input.display()),
        })?;
    let file = sink.into_inner().map_err(|e| format!("{}: {e}", tmp.display()))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    drop(file);
    std::fs::rename(&tmp, output).map_err(|e| format!("{}: {e}", output.display()))?;
    std::mem::forget(partial);
    Ok(FileReport { output: output.to_path_buf(), bytes, seconds: t0.elapsed().as_secs_f64(), ..report })
}

/// Stream `input`'s rows into a Parquet file on `sink`; the report (less the output's
/// name, size and time) and the sink, footer written.
pub fn rows_into<W: std::io::Write + Send>(
    plan: &Plan<'_>,
    input: &Path,
    sink: W,
    bars: &indicatif::MultiProgress,
) -> Result<(FileReport, W), String> {
    let (m, opts) = (&plan.manifest, plan.opts);
    let load =
        LoadOptions { size_scale: m.size_scale, columns: opts.columns.clone(), time_unit: opts.time_unit };
    let mut src = source::open(input, opts.format, &load).map_err(|e| e.to_string())?;
    let mut symbols = SymbolTable::new(&opts.symbols)?;
    let mut rows = Rows::new(plan, sink, input)?;
    let bar = bars.add(indicatif::ProgressBar::new(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    for _ in 0..opts.skip {
        if src.next_event(&mut symbols).map_err(|e| e.to_string())?.is_none() {
            break;
        }
    }
    let mut e = source::Event { ts_ns: 0, req: crate::wire::MlRequest::new() };
    while opts.limit.is_none_or(|n| rows.events < n as u64) {
        if !src.next_into(&mut symbols, &mut e).map_err(|e| e.to_string())? {
            break;
        }
        rows.event(&mut e, src.price_scale, src.depth_levels, &symbols)?;
        if rows.events % 8192 == 0 {
            let (read, total) = src.progress();
            bar.set_length(total.unwrap_or(read));
            bar.set_position(read);
        }
    }
    bar.finish_and_clear();
    bars.remove(&bar);
    let (mut report, sink) = rows.finish()?;
    report.skipped_rows = src.skipped();
    Ok((report, sink))
}

/// Events in, rows out: one file's state, label look-ahead, buffered rows and Parquet writer.
pub struct Rows<'p, W: std::io::Write + Send> {
    plan: &'p Plan<'p>,
    input: PathBuf,
    state: State,
    limits: Limits,
    inv_price: f64,
    lookahead: Lookahead<u64>,
    table: table::Table,
    out: parquet::Writer<W>,
    /// Symbols named in the Parquet's `symbol` column so far.
    named: Vec<bool>,
    /// Events refused, by status code.
    refused: Vec<u64>,
    /// Events taken.
    pub events: u64,
}

impl<'p, W: std::io::Write + Send> Rows<'p, W> {
    /// Rows of `input` (named in the file's metadata) into a Parquet file on `sink`.
    pub fn new(plan: &'p Plan<'p>, sink: W, input: &Path) -> Result<Rows<'p, W>, String> {
        let (m, opts) = (&plan.manifest, plan.opts);
        let features = &m.features;
        // The engine's state for this model: its features' history, and a sequence model's
        // window or warm-up in the warming flag (the memory itself is the model's, not a
        // feature: one float per symbol keeps the table counting events).
        let mut spec = features.state_spec().clone();
        spec.history += crate::engine::sequence_history(&m.sequence);
        if spec.is_stateless() && spec.history > 0 {
            spec.sequence_floats = 1;
        }
        Ok(Rows {
            plan,
            input: input.to_path_buf(),
            state: State::new(spec, opts.max_symbols),
            limits: Limits { model_features: Some(features.extras()), symbols: None },
            inv_price: 1.0 / m.price_scale as f64,
            lookahead: Lookahead::new(plan.label),
            table: table::Table::new(features.len(), opts.row_group_rows, opts.lookahead_rows),
            out: parquet::Writer::new(sink, &m.feature_names, metadata(plan, input))?,
            named: vec![false; 1 << 16],
            refused: vec![0; Status::COUNT + 1],
            events: 0,
        })
    }

    /// The next event of the input, prices at the source's `price_scale`, with `depth` book
    /// levels so far; `symbols` names its symbol. The event is fitted to the model in place.
    #[inline]
    pub fn event(
        &mut self,
        e: &mut source::Event,
        price_scale: i64,
        depth: usize,
        symbols: &SymbolTable,
    ) -> Result<(), String> {
        let m = &self.plan.manifest;
        let i = self.events;
        self.events += 1;
        let extras = self.limits.model_features.unwrap_or(0);
        if let Some(short) = crate::replay::fit_to_model(e, i, price_scale, depth, m.price_scale, extras)? {
            return Err(format!("{short}: the server would refuse every event (ML_ERR_FEATURE_COUNT)"));
        }
        let req = &e.req;
        let symbol = { req.symbol_id };
        let status = match crate::wire::validate(req, &self.limits) {
            Status::Ok if !self.state.admit(symbol) => Status::TooManySymbols,
            s => s,
        };
        let (bid, ask) = (req.bid_price, req.ask_price);
        let rule = self.plan.label;
        let Rows { table, lookahead, state, out, .. } = self;
        let item = if status == Status::Ok {
            if !self.named[symbol as usize] {
                self.named[symbol as usize] = true;
                out.name_symbol(symbol, symbols.name(symbol).unwrap_or(&symbol.to_string()));
            }
            let mid = (bid as f64 * self.inv_price + ask as f64 * self.inv_price) * 0.5;
            table.push(req.timestamp_ns, symbol, mid, |x| m.features.fill_next(state, req, x))
        } else {
            self.refused[status.code().min(Status::COUNT as u16) as usize] += 1;
            if !(bid > 0 && ask > bid) {
                return Ok(());
            }
            // No row, but an event of its symbol for the label (as in replay's report):
            // numbered as the next row (flagged), so the look-ahead's bound forgets it with
            // its neighbours.
            table.next_row() | NO_ROW
        };
        lookahead.push(symbol, req.timestamp_ns, bid as i128 + ask as i128, item, |row, then, now| {
            table.settle(row, now.map(|now| label_of(&rule, then, now)));
        });
        table.flush_ready(out, lookahead)
    }

    /// The input ended: the last rows written, the footer; the report (less the output's name,
    /// size and time, and the reader's skips) and the sink.
    pub fn finish(mut self) -> Result<(FileReport, W), String> {
        self.table.finish(&mut self.out)?;
        let sink = self.out.close()?;
        let events = self.events;
        if self.table.counts.rows == 0 {
            let why =
                if events == 0 { "no events".to_string() } else { format!("all {events} events refused") };
            return Err(format!("{why}: nothing to write"));
        }
        let refused = self
            .refused
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(c, &n)| {
                (Status::from_code(c as u16).map_or("unknown".into(), |s| s.as_str().to_string()), n)
            })
            .collect();
        let report = FileReport {
            input: self.input,
            output: PathBuf::new(),
            events,
            refused,
            skipped_rows: vec![],
            counts: self.table.counts.clone(),
            bytes: 0,
            seconds: 0.0,
        };
        Ok((report, sink))
    }
}

/// The label of a row at `then` (bid + ask) realised at `now`: direction and return in bps,
/// as signal quality scores it (the return fixed point at [`RET_SCALE`], clamped to ±10⁴ bps).
#[inline]
fn label_of(rule: &LabelRule, then: i128, now: i128) -> (i8, f64) {
    let (direction, fixed) = rule.realised(then, now);
    (direction, fixed as f64 / RET_SCALE)
}

/// The footer's key-value metadata: where the rows come from and how they were made.
fn metadata(plan: &Plan<'_>, input: &Path) -> Vec<(String, String)> {
    let m = &plan.manifest;
    let file = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    vec![
        ("tickinfer.version".into(), env!("CARGO_PKG_VERSION").into()),
        ("tickinfer.input".into(), file(input)),
        ("tickinfer.model".into(), format!("{} v{} ({})", m.name, m.version, file(&m.path))),
        ("tickinfer.features".into(), serde_json::to_string(&m.feature_names).unwrap_or_default()),
        (
            "tickinfer.normalised".into(),
            match m.features.is_normalised() {
                true => "(x - mean) / std, the manifest's".into(),
                false => "none: the features' own values".into(),
            },
        ),
        ("tickinfer.price_scale".into(), m.price_scale.to_string()),
        ("tickinfer.size_scale".into(), m.size_scale.to_string()),
        ("tickinfer.label".into(), plan.label.describe()),
    ]
}
