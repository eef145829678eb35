//! Recorded market data → request streams: LOBSTER, Databento DBN, CSV and
//! tickinfer captures. Every source yields [`Event`]s with prices in its own
//! fixed-point scale (`Stream::price_scale`); the replay rescales them to the
//! server's scale once it knows it (from the hello ack).

mod capture;
mod csv;
mod dbn;
mod lobster;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::wire::{MlRequest, DEPTH_LEVELS, IMBALANCE_SCALE, MAX_FEATURES};

/// Input formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Lobster,
    Dbn,
    Csv,
    Capture,
}

/// One market snapshot to send.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// Event time, ns (the request's `timestamp_ns`); pacing uses differences only.
    pub ts_ns: u64,
    /// The request (prices at `Stream::price_scale`; `request_id` set by the replay).
    pub req: MlRequest,
}

/// A loaded source.
#[derive(Clone, Debug)]
pub struct Stream {
    pub events: Vec<Event>,
    /// Fixed-point scale of the events' prices.
    pub price_scale: i64,
    /// Symbol name → id, as assigned or mapped.
    pub symbols: Vec<(String, u16)>,
    /// Input rows skipped, with why (count per reason).
    pub skipped: Vec<(String, u64)>,
    /// Book levels per side the events carry: 1 = top of book only; k > 1 = levels
    /// 2..=k in `features[]` (`ML_DEPTH_INDEX`), `n_features` covering them.
    pub depth_levels: usize,
    /// Fixed-point scale of the events' sizes (1: whole units).
    pub size_scale: i64,
}

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SourceError {
    pub path: PathBuf,
    pub message: String,
}

fn err(path: &Path, message: impl Into<String>) -> SourceError {
    SourceError { path: path.to_path_buf(), message: message.into() }
}

/// Assigns symbol ids: from an explicit `NAME=ID` map, else in order of first appearance.
pub struct SymbolTable {
    map: HashMap<String, u16>,
    explicit: bool,
    /// The next id to assign; past 65535 there is none (never wraps onto a used id).
    next: u32,
}

impl SymbolTable {
    /// `mapping`: `["AMZN=1", "MSFT=2"]`.
    pub fn new(mapping: &[String]) -> Result<SymbolTable, String> {
        let mut map = HashMap::new();
        for m in mapping {
            let (name, id) = m.split_once('=').ok_or(format!("symbol mapping `{m}`: expected NAME=ID"))?;
            let id: u16 = id.parse().map_err(|_| format!("symbol mapping `{m}`: id must be 0..65535"))?;
            map.insert(name.to_string(), id);
        }
        Ok(SymbolTable { explicit: !map.is_empty(), map, next: 0 })
    }

    /// The id of `name`; `Ok(None)` when an explicit map does not list it; an error
    /// when a 65 537th name appears (ids are 16-bit: map them with `--symbols`).
    pub fn id(&mut self, name: &str) -> Result<Option<u16>, String> {
        if let Some(&id) = self.map.get(name) {
            return Ok(Some(id));
        }
        if self.explicit {
            return Ok(None);
        }
        let id = u16::try_from(self.next).map_err(|_| {
            format!("symbol `{name}` would be the 65537th: symbol ids are 0..65535 (map them with --symbols NAME=ID)")
        })?;
        self.next += 1;
        self.map.insert(name.to_string(), id);
        Ok(Some(id))
    }

    /// The name given id `id` (a capture's ids have none).
    pub fn name(&self, id: u16) -> Option<&str> {
        self.map.iter().find(|(_, &v)| v == id).map(|(k, _)| k.as_str())
    }

    fn listing(&self) -> Vec<(String, u16)> {
        let mut v: Vec<_> = self.map.iter().map(|(k, &v)| (k.clone(), v)).collect();
        v.sort_by_key(|(_, id)| *id);
        v
    }
}

fn imbalance(bid_size: i64, ask_size: i64) -> i64 {
    // i128: two large sizes overflow i64 when added.
    let tot = bid_size as i128 + ask_size as i128;
    if tot > 0 {
        ((bid_size as i128 - ask_size as i128) * IMBALANCE_SCALE as i128 / tot) as i64
    } else {
        0
    }
}

/// Seconds (decimal) → ns, or `None` when negative, not finite, or past `u64`.
fn secs_to_ns(secs: f64) -> Option<u64> {
    let ns = (secs * 1e9).round();
    // u64::MAX as f64 rounds up to 2^64, itself out of range: compare with <.
    (ns.is_finite() && ns >= 0.0 && ns < u64::MAX as f64).then_some(ns as u64)
}

/// A decimal price × `scale` as fixed point, or `None` when not finite or past `i64`.
fn fixed_point(v: f64, scale: f64) -> Option<i64> {
    let x = (v * scale).round();
    (x.is_finite() && x >= i64::MIN as f64 && x < i64::MAX as f64).then_some(x as i64)
}

fn request(ts_ns: u64, symbol_id: u16, bid: i64, ask: i64, bsz: i64, asz: i64) -> Event {
    let req = MlRequest {
        timestamp_ns: ts_ns,
        symbol_id,
        bid_price: bid,
        ask_price: ask,
        bid_size: bsz,
        ask_size: asz,
        book_imbalance: imbalance(bsz, asz),
        ..MlRequest::new()
    };
    Event { ts_ns, req }
}

/// One deeper book level as a source holds it: prices at the source's scale, `None`
/// for an empty side (LOBSTER's dummy price, DBN's undefined price).
struct Level {
    bid: Option<i64>,
    bid_size: i64,
    ask: Option<i64>,
    ask_size: i64,
}

/// Write levels 2.. (at most [`DEPTH_LEVELS`]) into the request's depth block. An
/// empty side has size 0 and repeats the price of the level above (`ml_wire.h`).
fn fill_depth(req: &mut MlRequest, levels: impl Iterator<Item = Level>, scale: i64) -> usize {
    let (mut bid, mut ask) = (req.bid_price, req.ask_price);
    let mut deepest = 1;
    for (k, l) in (2..=DEPTH_LEVELS).zip(levels) {
        let bid_size = if l.bid.is_some() { l.bid_size } else { 0 };
        let ask_size = if l.ask.is_some() { l.ask_size } else { 0 };
        bid = l.bid.unwrap_or(bid);
        ask = l.ask.unwrap_or(ask);
        req.set_level(k, bid, bid_size, ask, ask_size, scale);
        deepest = k;
    }
    deepest
}

struct Skips(Vec<(String, u64)>);
impl Skips {
    fn add(&mut self, why: &str) {
        match self.0.iter_mut().find(|(w, _)| w == why) {
            Some((_, n)) => *n += 1,
            None => self.0.push((why.to_string(), 1)),
        }
    }
}

/// Unit of a CSV timestamp column (`--time-unit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Seconds (decimal).
    S,
    /// Milliseconds (decimal).
    Ms,
    /// Microseconds (decimal).
    Us,
    /// Nanoseconds (integer).
    Ns,
    /// ISO-8601 / RFC 3339: `2026-01-05T14:30:00.123456789Z` (`Z`, `±HH:MM`, or none: UTC).
    Iso,
}

/// How to read a source beyond its format.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Sizes as fixed point at this scale (the server's, from its hello ack); 0 or 1: whole units.
    pub size_scale: i64,
    /// CSV: `(our name, the file's header name)` pairs (`--columns timestamp=ts,bid_price=bid`).
    pub columns: Vec<(String, String)>,
    /// CSV: the timestamp column's unit [default: ns for `timestamp_ns`, s for `timestamp`].
    pub time_unit: Option<TimeUnit>,
}

impl LoadOptions {
    /// Parse `--columns` (`NAME=COLUMN,NAME=COLUMN`; repeatable, comma lists allowed).
    pub fn parse_columns(specs: &[String]) -> Result<Vec<(String, String)>, String> {
        const NAMES: &[&str] = &[
            "timestamp",
            "timestamp_ns",
            "symbol",
            "symbol_id",
            "bid_price",
            "ask_price",
            "bid_size",
            "ask_size",
            "book_imbalance",
        ];
        let mut out = Vec::new();
        for part in specs.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|p| !p.is_empty()) {
            let (ours, theirs) = part.split_once('=').ok_or_else(|| {
                format!("--columns `{part}`: expected NAME=COLUMN, e.g. timestamp=ts_event")
            })?;
            let ours = ours.trim().to_ascii_lowercase();
            let is_feature =
                ours.strip_prefix('f').is_some_and(|k| k.parse::<usize>().is_ok_and(|k| k < MAX_FEATURES));
            if !NAMES.contains(&ours.as_str()) && !is_feature {
                return Err(format!(
                    "--columns `{part}`: `{ours}` is not one of {} or f0..f31",
                    NAMES.join(", ")
                ));
            }
            out.push((ours, theirs.trim().to_ascii_lowercase()));
        }
        Ok(out)
    }
}

/// Load a whole source into memory, sizes in whole units (size scale 1): for tests and
/// small files; `replay` streams with [`open`].
pub fn load(path: &Path, format: Format, symbols: &mut SymbolTable) -> Result<Stream, SourceError> {
    load_with(path, format, symbols, &LoadOptions::default())
}

/// [`load`] with `opts` (sizes at its size scale, a CSV's own columns and time unit).
pub fn load_with(
    path: &Path,
    format: Format,
    symbols: &mut SymbolTable,
    opts: &LoadOptions,
) -> Result<Stream, SourceError> {
    let mut source = open(path, format, opts)?;
    let mut events = Vec::new();
    while let Some(e) = source.next_event(symbols)? {
        events.push(e);
    }
    Ok(Stream {
        events,
        price_scale: source.price_scale,
        symbols: symbols.listing(),
        skipped: source.skipped(),
        depth_levels: source.depth_levels,
        size_scale: source.size_scale,
    })
}

/// One event at a time from any supported source, in bounded memory whatever the
/// file's size: LOBSTER's two files (or zip entries) read line by line side by side,
/// DBN record by record (zstd streamed), CSV line by line, captures record by record.
pub struct Source {
    rows: Rows,
    path: PathBuf,
    /// Fixed-point scale of the events' prices.
    pub price_scale: i64,
    /// Sizes are delivered at this scale (the server's); the format's own is `rows_size_scale`.
    size_scale: i64,
    rows_size_scale: i64,
    skips: Skips,
    /// Book levels per side seen so far (1: top of book only).
    pub depth_levels: usize,
    /// Input bytes consumed, and the total when known (for a progress bar by bytes).
    bytes: ByteCount,
}

/// The format readers behind a [`Source`].
enum Rows {
    Lobster(lobster::Reader),
    Dbn(Box<dbn::Reader>),
    Csv(Box<csv::Reader>),
    Capture(capture::Reader),
}

/// Open `path` as `format` for streaming.
pub fn open(path: &Path, format: Format, opts: &LoadOptions) -> Result<Source, SourceError> {
    let bytes = ByteCount::default();
    let (rows, price_scale, rows_size_scale) = match format {
        Format::Lobster => (Rows::Lobster(lobster::Reader::open(path, &bytes)?), lobster::PRICE_SCALE, 1),
        Format::Dbn => (Rows::Dbn(Box::new(dbn::Reader::open(path, &bytes)?)), dbn::PRICE_SCALE, 1),
        Format::Csv => {
            let r = csv::Reader::open(path, opts, &bytes)?;
            let size_scale = r.size_scale;
            (Rows::Csv(Box::new(r)), csv::PRICE_SCALE, size_scale)
        }
        Format::Capture => {
            let r = capture::Reader::open(path, &bytes)?;
            let (p, z) = (r.price_scale, r.size_scale);
            (Rows::Capture(r), p, z)
        }
    };
    let size_scale = opts.size_scale.max(1);
    Ok(Source {
        rows,
        path: path.to_path_buf(),
        price_scale,
        size_scale,
        rows_size_scale,
        skips: Skips(vec![]),
        depth_levels: 1,
        bytes,
    })
}

impl Source {
    /// The next event, or `None` at the end; a bad row is an error naming its place.
    pub fn next_event(&mut self, symbols: &mut SymbolTable) -> Result<Option<Event>, SourceError> {
        let mut e = Event { ts_ns: 0, req: MlRequest::new() };
        Ok(self.next_into(symbols, &mut e)?.then_some(e))
    }

    /// The next event written into `e` (`false` at the end; `e` is then unspecified, and after
    /// an error too); a bad row is an error naming its place. The readers fill the caller's
    /// event in place: returned by value, the 202-byte event was copied at each of three
    /// returns, 5 % of `tickinfer features` (measured, `perf`).
    #[inline]
    pub fn next_into(&mut self, symbols: &mut SymbolTable, e: &mut Event) -> Result<bool, SourceError> {
        let next = match &mut self.rows {
            Rows::Lobster(r) => r.next(&self.path, symbols, &mut self.skips, e)?,
            Rows::Dbn(r) => r.next(&self.path, symbols, &mut self.skips, e)?,
            Rows::Csv(r) => r.next(&self.path, symbols, &mut self.skips, e)?,
            Rows::Capture(r) => r.next(&self.path, &mut self.skips, e)?,
        };
        let Some(depth) = next else { return Ok(false) };
        self.depth_levels = self.depth_levels.max(depth);
        if self.rows_size_scale != self.size_scale {
            rescale_sizes(e, depth, self.rows_size_scale, self.size_scale).map_err(|m| err(&self.path, m))?;
        }
        Ok(true)
    }

    /// Input rows skipped so far, with why (count per reason).
    pub fn skipped(&self) -> Vec<(String, u64)> {
        self.skips.0.clone()
    }

    /// Input bytes consumed so far, and the input's size when known.
    pub fn progress(&self) -> (u64, Option<u64>) {
        (self.bytes.read(), self.bytes.total())
    }
}

/// Bytes of input consumed (shared with a reader thread), and the total when known.
#[derive(Clone, Default)]
pub(crate) struct ByteCount(Arc<(AtomicU64, AtomicU64)>);

impl ByteCount {
    pub(crate) fn add(&self, n: u64) {
        // Relaxed: a progress counter, read for display only.
        self.0 .0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn set_total(&self, n: u64) {
        self.0 .1.store(n, Ordering::Relaxed);
    }
    fn read(&self) -> u64 {
        self.0 .0.load(Ordering::Relaxed)
    }
    fn total(&self) -> Option<u64> {
        Some(self.0 .1.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }
}

/// Lines of a text file or of a zip entry, read incrementally (a zip entry by a thread
/// of its own that owns its archive, inflating it and handing over chunks of whole lines),
/// counted in `bytes`.
pub(crate) enum Lines {
    /// The file, its byte count, and the line being read.
    File(std::io::BufReader<std::fs::File>, ByteCount, String),
    Zip(Chunks),
}

/// A zip entry's bytes as chunks that end at a line's end (the last one perhaps not), from
/// its inflating thread; the chunk being read and where. Read chunks go back to the thread
/// to be filled again (no allocation, no zeroing per chunk).
pub(crate) struct Chunks {
    rx: std::sync::mpsc::Receiver<std::io::Result<Chunk>>,
    back: std::sync::mpsc::SyncSender<Vec<u8>>,
    chunk: Chunk,
    at: usize,
    done: bool,
}

/// Inflated bytes: `buf[..len]`, of which `buf[..utf8]` was checked to be UTF-8 by the
/// inflating thread (all of it, unless the input is not text; a line past `utf8` is checked
/// again by the reader, so that its error names the line).
#[derive(Default)]
pub(crate) struct Chunk {
    buf: Vec<u8>,
    /// Invariant: `len <= buf.len()`.
    len: usize,
    /// Invariant: `utf8 <= len`, and `buf[..utf8]` is valid UTF-8.
    utf8: usize,
}

/// Bytes a zip entry's thread inflates per chunk (then cut back to the last line's end).
const CHUNK: usize = 1 << 16;

impl Lines {
    pub(crate) fn file(path: &Path, bytes: &ByteCount) -> std::io::Result<Lines> {
        let f = std::fs::File::open(path)?;
        bytes.set_total(f.metadata()?.len());
        Ok(Lines::File(std::io::BufReader::with_capacity(1 << 16, f), bytes.clone(), String::new()))
    }

    /// Entry `name` of the zip at `path`; `bytes` counts its uncompressed bytes (and takes
    /// its size as the total) when `count` is set.
    pub(crate) fn zip_entry(path: &Path, name: &str, bytes: Option<&ByteCount>) -> Result<Lines, String> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| e.to_string())?;
        let size = zip
            .by_name(name)
            .map_err(|_| format!("{name} is not in the zip (LOBSTER pairs message and orderbook files)"))?
            .size();
        if let Some(b) = bytes {
            b.set_total(size);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        // Room for every chunk in flight (4 queued, one being read, one being filled).
        let (back, recycled) = std::sync::mpsc::sync_channel::<Vec<u8>>(6);
        let (name, counter) = (name.to_string(), bytes.cloned());
        std::thread::Builder::new()
            .name("tickinfer-unzip".into())
            .spawn(move || {
                let Ok(mut entry) = zip.by_name(&name) else { return };
                // The bytes after the last line's end of the previous read start the next chunk.
                let mut carry: Vec<u8> = Vec::new();
                loop {
                    // A returned buffer keeps its length: its bytes are initialised already.
                    let mut buf = recycled.try_recv().unwrap_or_default();
                    let want = carry.len() + CHUNK;
                    if buf.len() < want {
                        buf.resize(want, 0);
                    }
                    buf[..carry.len()].copy_from_slice(&carry);
                    let before = carry.len();
                    carry.clear();
                    let mut len = before;
                    let end = loop {
                        match entry.read(&mut buf[len..want]) {
                            Ok(0) => break true,
                            Ok(n) => {
                                len += n;
                                if len == want {
                                    break false;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        }
                    };
                    if let Some(c) = &counter {
                        c.add((len - before) as u64);
                    }
                    if !end {
                        // Keep the partial last line for the next chunk.
                        match buf[before..len].iter().rposition(|&b| b == b'\n') {
                            Some(last) => {
                                carry.extend_from_slice(&buf[before + last + 1..len]);
                                len = before + last + 1;
                            }
                            None => {
                                carry.extend_from_slice(&buf[..len]);
                                continue;
                            }
                        }
                    }
                    // Checked here, a chunk at a time (the reader's thread then takes its lines
                    // as they are): per line, the check cost more than the parsing of a field.
                    let utf8 = match std::str::from_utf8(&buf[..len]) {
                        Ok(_) => len,
                        Err(e) => e.valid_up_to(),
                    };
                    // The reader dropped (replay stopped early): stop reading.
                    if (len > 0 && tx.send(Ok(Chunk { buf, len, utf8 })).is_err()) || end {
                        return;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Lines::Zip(Chunks { rx, back, chunk: Chunk::default(), at: 0, done: false }))
    }

    /// The next line without its line ending, or `None` at the end.
    pub(crate) fn next_line(&mut self, line: &mut String) -> std::io::Result<bool> {
        line.clear();
        match self.next_str()? {
            Some(text) => {
                line.push_str(text);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next line without its line ending (borrowed until the next call), or `None` at
    /// the end. No copy of a zip entry's line.
    #[inline]
    pub(crate) fn next_str(&mut self) -> std::io::Result<Option<&str>> {
        use std::io::BufRead;
        let text = match self {
            Lines::File(r, bytes, line) => {
                line.clear();
                let n = r.read_line(line)?;
                bytes.add(n as u64);
                if n == 0 {
                    return Ok(None);
                }
                line.as_str()
            }
            Lines::Zip(c) => {
                while c.at >= c.chunk.len {
                    if c.done {
                        return Ok(None);
                    }
                    match c.rx.recv() {
                        Ok(Ok(chunk)) => {
                            let used = std::mem::replace(&mut c.chunk, chunk);
                            c.at = 0;
                            // Full (the thread has buffers enough) or gone: dropped then.
                            let _ = c.back.try_send(used.buf);
                        }
                        Ok(Err(e)) => return Err(e),
                        Err(_) => c.done = true,
                    }
                }
                let (start, rest) = (c.at, &c.chunk.buf[c.at..c.chunk.len]);
                let len = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
                c.at += len;
                let line = &rest[..len];
                if start + len <= c.chunk.utf8 {
                    // SAFETY: `line` lies in `buf[..utf8]`, valid UTF-8 (Chunk's invariant), from a char boundary (0, or after a `\n`) to one (after a `\n`, or the chunk's end, then `utf8`).
                    unsafe { std::str::from_utf8_unchecked(line) }
                } else {
                    std::str::from_utf8(line)
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
                }
            }
        };
        Ok(Some(text.trim_end_matches(['\n', '\r'])))
    }
}

/// An event's sizes (every level's) from scale `from` to `to`, exactly.
fn rescale_sizes(e: &mut Event, depth: usize, from: i64, to: i64) -> Result<(), String> {
    let ts = e.ts_ns;
    let convert = |v: i64, what: &str| -> Result<i64, String> {
        let scaled = v as i128 * to as i128;
        if scaled % from as i128 != 0 {
            return Err(format!(
                "event at {ts} ns: {what} {v} at size scale {from} has more decimals than the model's size_scale {to} allows"
            ));
        }
        i64::try_from(scaled / from as i128)
            .map_err(|_| format!("event at {ts} ns: {what} {v} leaves i64 at the model's size_scale {to}"))
    };
    e.req.bid_size = convert(e.req.bid_size, "bid_size")?;
    e.req.ask_size = convert(e.req.ask_size, "ask_size")?;
    if depth > 1 {
        let mut f = e.req.features;
        for k in 2..=depth {
            for j in [1, 3] {
                let x = &mut f[crate::wire::depth_index(k) + j];
                *x = (*x as f64 * to as f64 / from as f64) as f32;
            }
        }
        e.req.features = f;
    }
    Ok(())
}

/// A non-negative decimal (`2.507`, `100`, `0.5`) as fixed point × 10^`digits`, exactly:
/// `Err` says why (not a number, more decimals than `digits`, past `i64`).
pub fn decimal_fixed(text: &str, digits: u16) -> Result<i64, String> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let frac = frac.trim_end_matches('0');
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err("not a non-negative decimal number".into());
    }
    if frac.len() > digits as usize {
        return Err(format!(
            "{} decimals; the model's size_scale {} allows {digits}: set size_scale = {} under [model] in \
             the manifest (sizes are fixed point × size_scale on the wire)",
            frac.len(),
            10i128.pow(u32::from(digits)),
            10i128.pow(frac.len() as u32)
        ));
    }
    let mut v: i128 = 0;
    for b in int.bytes().chain(frac.bytes()).chain(std::iter::repeat_n(b'0', digits as usize - frac.len())) {
        v = v * 10 + i128::from(b - b'0');
        if v > i64::MAX as i128 {
            return Err(format!("past the 64-bit range at size scale 10^{digits}"));
        }
    }
    Ok(v as i64)
}

// ---------------------------------------------------------------- times

/// `YYYY-MM-DD` → ns since the Unix epoch at midnight UTC.
fn date_to_unix_ns(s: &str) -> Option<u64> {
    let mut it = s.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (it.next()??, it.next()??, it.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days >= 0).then(|| days as u64 * 86_400_000_000_000)
}

/// A timestamp in `unit` → ns since the Unix epoch (or the file's own origin); `Err` says why.
pub fn parse_time(text: &str, unit: TimeUnit) -> Result<u64, String> {
    // Exact decimal arithmetic (a float would lose nanoseconds of a 13-digit ms stamp);
    // digits finer than a nanosecond are dropped.
    let scaled = |ns_digits: usize| {
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let frac = frac.char_indices().nth(ns_digits).map_or(frac, |(i, _)| &frac[..i]);
        decimal_fixed(&format!("{int}.{frac}"), ns_digits as u16)
            .ok()
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| {
                format!("not a number (--time-unit {unit:?}), or negative, or past u64 nanoseconds")
            })
    };
    match unit {
        TimeUnit::Ns => {
            text.parse::<u64>().map_err(|_| "not a whole number of nanoseconds (--time-unit ns)".into())
        }
        TimeUnit::Us => scaled(3),
        TimeUnit::Ms => scaled(6),
        TimeUnit::S => scaled(9),
        TimeUnit::Iso => parse_iso8601(text),
    }
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|±HH:MM]` (no zone: UTC) → ns since the Unix epoch.
fn parse_iso8601(text: &str) -> Result<u64, String> {
    let bad = || "not an ISO-8601 time like 2026-01-05T14:30:00.123456789Z".to_string();
    let (date, rest) = text.split_at_checked(10).ok_or_else(bad)?;
    let day_ns = date_to_unix_ns(date).ok_or_else(bad)?;
    let rest = rest.strip_prefix(['T', ' ']).ok_or_else(bad)?;
    // Split off the zone: `Z`, or a sign after the seconds.
    let (clock, offset_s): (&str, i64) = if let Some(c) = rest.strip_suffix('Z') {
        (c, 0)
    } else if let Some(i) = rest.rfind(['+', '-']).filter(|&i| i >= 8) {
        let (c, z) = rest.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (h, m) = z[1..].split_once(':').unwrap_or((&z[1..], "0"));
        let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        (c, sign * (h * 3600 + m * 60))
    } else {
        (rest, 0)
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (parts.next().flatten(), parts.next().flatten(), parts.next().flatten());
    let (Some(h), Some(m), Some(s), None) = (h, m, s, parts.next()) else { return Err(bad()) };
    if h > 23 || m > 59 || s > 60 || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let frac_ns: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| bad())? };
    let local = day_ns as i128 + ((h * 3600 + m * 60 + s) as i128) * 1_000_000_000 + frac_ns as i128;
    u64::try_from(local - offset_s as i128 * 1_000_000_000).map_err(|_| "before 1970".to_string())
}

/// Rescale every price from `from` to `to` (exact when one divides the other; rounded
/// otherwise). An error names the event whose price leaves `i64` at the new scale.
pub fn rescale(events: &mut [Event], from: i64, to: i64) -> Result<(), String> {
    for (i, e) in events.iter_mut().enumerate() {
        rescale_event(e, i as u64, from, to)?;
    }
    Ok(())
}

/// [`rescale`] for one event, `index` its place in the stream (0-based; errors say `index + 1`).
pub fn rescale_event(e: &mut Event, index: u64, from: i64, to: i64) -> Result<(), String> {
    if from <= 0 || to <= 0 {
        return Err(format!("price scales must be positive (from {from} to {to})"));
    }
    if from == to {
        return Ok(());
    }
    let conv = |v: i64| -> Option<i64> {
        let num = v as i128 * to as i128;
        let q = num / from as i128;
        let r = num % from as i128;
        i64::try_from(if 2 * r.abs() >= from as i128 { q + r.signum() } else { q }).ok()
    };
    let symbol = e.req.symbol_id;
    let scaled = |what: &str, price: i64| {
        conv(price).ok_or_else(|| {
            format!(
                "event {} (symbol {symbol}): {what} {price} does not fit in i64 at the server's price \
                 scale {to} (from {from})",
                index + 1
            )
        })
    };
    e.req.bid_price = scaled("bid_price", e.req.bid_price)?;
    e.req.ask_price = scaled("ask_price", e.req.ask_price)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_rescaling() {
        assert_eq!(date_to_unix_ns("1970-01-02"), Some(86_400_000_000_000));
        assert_eq!(date_to_unix_ns("2012-06-21"), Some(1_340_236_800_000_000_000));
        assert_eq!(date_to_unix_ns("2012-13-01"), None);
        let mut ev = vec![request(0, 0, 1_234_500, 1_234_600, 1, 1)];
        rescale(&mut ev, 10_000, 1_000_000_000).unwrap();
        assert_eq!(({ ev[0].req.bid_price }, { ev[0].req.ask_price }), (123_450_000_000, 123_460_000_000));
        rescale(&mut ev, 1_000_000_000, 100).unwrap();
        assert_eq!({ ev[0].req.bid_price }, 12_345);
        let mut huge = vec![request(0, 3, i64::MAX / 10, i64::MAX / 10, 1, 1)];
        let e = rescale(&mut huge, 1, 1_000).unwrap_err();
        assert!(e.contains("event 1 (symbol 3): bid_price"), "{e}");
        assert!(rescale(&mut ev, 0, 100).unwrap_err().contains("positive"));
        assert_eq!(imbalance(i64::MAX, i64::MAX), 0, "sizes whose sum overflows i64");
        assert_eq!(imbalance(i64::MAX, 0), IMBALANCE_SCALE);
    }

    /// A zip entry's lines through the inflating thread: several chunks (lines cut at chunk
    /// ends carried over, buffers handed back and refilled), every line as written, and a
    /// line that is not UTF-8 an error at that line, after every line before it.
    #[test]
    fn zip_entry_lines_across_chunks() {
        let lines: Vec<String> = (0..40_000).map(|i| format!("{i},{}", "é".repeat(i % 23))).collect();
        let mut body = lines.join("\n").into_bytes();
        body.extend_from_slice(b"\nbad \xff line\nafter\n");
        assert!(body.len() > 8 * CHUNK, "several chunks, more than the buffers in flight");
        let (_dir, path) = zip_of(&[("lines.txt", &body)]);
        let counted = ByteCount::default();
        let mut src = Lines::zip_entry(&path, "lines.txt", Some(&counted)).unwrap();
        for (i, want) in lines.iter().enumerate() {
            assert_eq!(src.next_str().unwrap(), Some(want.as_str()), "line {i}");
        }
        let e = src.next_str().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        assert_eq!(counted.read(), body.len() as u64, "every byte inflated is counted");
    }

    /// The edges of the chunking: a line longer than several chunks, a valid line after a
    /// bad one (checked on its own, read on), a last line without a line end, an empty entry.
    #[test]
    fn zip_entry_long_bad_and_unterminated_lines() {
        let long: String = (0..3 * CHUNK + 7).map(|i| if i % 5 == 0 { 'é' } else { 'x' }).collect();
        let mut body = format!("first\n{long}\n").into_bytes();
        body.extend_from_slice(b"bad \xff\nafter bad\nno line end");
        let (_dir, path) = zip_of(&[("edges.txt", &body), ("empty.txt", b"")]);
        let mut src = Lines::zip_entry(&path, "edges.txt", None).unwrap();
        assert_eq!(src.next_str().unwrap(), Some("first"));
        assert_eq!(src.next_str().unwrap(), Some(long.as_str()), "a line of {} bytes", long.len());
        assert_eq!(src.next_str().unwrap_err().kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(src.next_str().unwrap(), Some("after bad"));
        assert_eq!(src.next_str().unwrap(), Some("no line end"));
        assert_eq!(src.next_str().unwrap(), None);
        assert_eq!(src.next_str().unwrap(), None, "the end stays the end");
        let mut empty = Lines::zip_entry(&path, "empty.txt", None).unwrap();
        assert_eq!(empty.next_str().unwrap(), None);
    }

    /// A zip of `entries` (name, bytes) in a directory removed when the guard drops.
    fn zip_of(entries: &[(&str, &[u8])]) -> (tempfile::TempDir, std::path::PathBuf) {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entries.zip");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        for (name, bytes) in entries {
            zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        (dir, path)
    }

    #[test]
    fn symbol_tables() {
        let mut t = SymbolTable::new(&[]).unwrap();
        assert_eq!((t.id("A"), t.id("B"), t.id("A")), (Ok(Some(0)), Ok(Some(1)), Ok(Some(0))));
        let mut t = SymbolTable::new(&["AMZN=7".into()]).unwrap();
        assert_eq!((t.id("AMZN"), t.id("MSFT")), (Ok(Some(7)), Ok(None)));
        let mut t = SymbolTable::new(&[]).unwrap();
        for i in 0..65_536u32 {
            assert_eq!(t.id(&i.to_string()), Ok(Some(i as u16)));
        }
        assert!(t.id("one too many").unwrap_err().contains("65537th"), "ids never wrap onto used ones");
        assert!(SymbolTable::new(&["AMZN".into()]).is_err());
    }
}
