//! Recorded market data → request streams: LOBSTER, Databento DBN, CSV and
//! tickinfer captures. Every source yields [`Event`]s with prices in its own
//! fixed-point scale (`Stream::price_scale`); the replay rescales them to the
//! server's scale once it knows it (from the hello ack).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

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

/// Load any supported source, sizes in whole units (size scale 1).
pub fn load(path: &Path, format: Format, symbols: &mut SymbolTable) -> Result<Stream, SourceError> {
    load_with(path, format, symbols, &LoadOptions::default())
}

/// Load any supported source with `opts`: sizes as fixed point at its size scale (a
/// decimal size in a CSV must fit it exactly), a CSV's own column names and time unit.
pub fn load_with(
    path: &Path,
    format: Format,
    symbols: &mut SymbolTable,
    opts: &LoadOptions,
) -> Result<Stream, SourceError> {
    let size_scale = opts.size_scale.max(1);
    let mut stream = match format {
        Format::Lobster => load_lobster(path, symbols)?,
        Format::Dbn => load_dbn(path, symbols)?,
        Format::Csv => return load_csv_with(path, symbols, opts),
        Format::Capture => load_capture(path)?,
    };
    rescale_sizes(&mut stream, size_scale).map_err(|e| err(path, e))?;
    Ok(stream)
}

/// Integer sizes at `stream.size_scale` → fixed point at `to` (every level's), exactly.
fn rescale_sizes(stream: &mut Stream, to: i64) -> Result<(), String> {
    let from = stream.size_scale;
    if from == to {
        return Ok(());
    }
    let convert = |v: i64, what: &str, i: usize| -> Result<i64, String> {
        let scaled = v as i128 * to as i128;
        if scaled % from as i128 != 0 {
            return Err(format!(
                "event {i}: {what} {v} at size scale {from} has more decimals than the model's size_scale {to} allows"
            ));
        }
        i64::try_from(scaled / from as i128)
            .map_err(|_| format!("event {i}: {what} {v} leaves i64 at the model's size_scale {to}"))
    };
    for (i, e) in stream.events.iter_mut().enumerate() {
        e.req.bid_size = convert(e.req.bid_size, "bid_size", i)?;
        e.req.ask_size = convert(e.req.ask_size, "ask_size", i)?;
        if stream.depth_levels > 1 {
            let mut f = e.req.features;
            for k in 2..=stream.depth_levels {
                for j in [1, 3] {
                    let x = &mut f[crate::wire::depth_index(k) + j];
                    *x = (*x as f64 * to as f64 / from as f64) as f32;
                }
            }
            e.req.features = f;
        }
    }
    stream.size_scale = to;
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

// ---------------------------------------------------------------- LOBSTER

/// A LOBSTER orderbook level's four columns, in file order.
const LEVEL_FIELDS: [&str; 4] = ["ask price", "ask size", "bid price", "bid size"];

/// LOBSTER's dummy price for an empty level (±9999999999).
const LOBSTER_DUMMY: i64 = 9_999_999_999;

/// LOBSTER: `TICKER_DATE_START_END_message_LEVELS.csv` with its `..._orderbook_LEVELS.csv`
/// beside it, or a zip holding both. Prices are USD × 10000; times seconds after midnight.
/// Rows of trading halts (type 7) and rows whose best level is empty (dummy price)
/// are skipped and counted. Any number of levels is read (the orderbook's columns / 4):
/// levels 2..=5 fill the request's depth block (`ML_DEPTH_INDEX`), deeper ones are
/// not carried; an empty level (dummy price) has size 0.
pub fn load_lobster(path: &Path, symbols: &mut SymbolTable) -> Result<Stream, SourceError> {
    let (msg_name, messages, book) = if path.extension().is_some_and(|e| e == "zip") {
        let file = std::fs::File::open(path).map_err(|e| err(path, e.to_string()))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| err(path, e.to_string()))?;
        let names: Vec<String> = zip.file_names().map(String::from).collect();
        let msg = names
            .iter()
            .find(|n| n.contains("_message_") && n.ends_with(".csv"))
            .ok_or_else(|| err(path, "no *_message_*.csv in the zip"))?
            .clone();
        let ob = msg.replace("_message_", "_orderbook_");
        let mut read = |name: &str| -> Result<String, SourceError> {
            let mut s = String::new();
            zip.by_name(name)
                .map_err(|_| {
                    err(path, format!("{name} is not in the zip (LOBSTER pairs message and orderbook files)"))
                })?
                .read_to_string(&mut s)
                .map_err(|e| err(path, e.to_string()))?;
            Ok(s)
        };
        let (m, b) = (read(&msg)?, read(&ob)?);
        (msg, m, b)
    } else {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if !name.contains("_message_") {
            return Err(err(path, "expected a LOBSTER *_message_N.csv file (or a zip of the pair)"));
        }
        let ob = path.with_file_name(name.replace("_message_", "_orderbook_"));
        let m = std::fs::read_to_string(path).map_err(|e| err(path, e.to_string()))?;
        let b = std::fs::read_to_string(&ob)
            .map_err(|e| err(&ob, format!("{e} (the orderbook file must sit beside the message file)")))?;
        (name, m, b)
    };
    let base = Path::new(&msg_name).file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let mut parts = base.split('_');
    let ticker = parts.next().unwrap_or("LOBSTER").to_string();
    let day_ns = parts.next().and_then(date_to_unix_ns).unwrap_or(0);
    let symbol_id = symbols
        .id(&ticker)
        .map_err(|e| err(path, e))?
        .ok_or_else(|| err(path, format!("ticker {ticker} is not in the --symbols mapping")))?;

    let mut events = Vec::new();
    let mut skips = Skips(vec![]);
    let mut book_lines = book.lines();
    let mut depth_levels = 1;
    // Levels 2.. of the row being read (reused: no allocation per row).
    let mut levels = Vec::with_capacity(DEPTH_LEVELS - 1);
    for (i, line) in messages.lines().enumerate() {
        let Some(book_line) = book_lines.next() else {
            return Err(err(path, format!("orderbook has fewer rows than messages (row {})", i + 1)));
        };
        let m: Vec<&str> = line.split(',').collect();
        let b: Vec<&str> = book_line.split(',').collect();
        if m.len() < 6 || b.len() < 4 || b.len() % 4 != 0 {
            return Err(err(path, format!("row {}: not a LOBSTER message/orderbook row", i + 1)));
        }
        let bad_num = |what: &str| err(path, format!("row {}: bad {what}", i + 1));
        let secs: f64 = m[0].trim().parse().map_err(|_| bad_num("time"))?;
        let kind: i64 = m[1].trim().parse().map_err(|_| bad_num("event type"))?;
        if kind == 7 {
            skips.add("trading halt message (type 7)");
            continue;
        }
        let num = |s: &str, what: &str| s.trim().parse::<i64>().map_err(|_| bad_num(what));
        let (ask, asz, bid, bsz) = (
            num(b[0], "ask price")?,
            num(b[1], "ask size")?,
            num(b[2], "bid price")?,
            num(b[3], "bid size")?,
        );
        if ask.abs() == LOBSTER_DUMMY || bid.abs() == LOBSTER_DUMMY {
            skips.add("empty best level (dummy price)");
            continue;
        }
        for (what, v) in [("ask size", asz), ("bid size", bsz)] {
            if v < 0 {
                return Err(bad_num(&format!("{what} {v} (negative)")));
            }
        }
        let ts = secs_to_ns(secs).and_then(|ns| day_ns.checked_add(ns)).ok_or_else(|| {
            bad_num(&format!(
                "time {secs} (negative, or past the nanosecond clock's range from the file's date)"
            ))
        })?;
        let mut ev = request(ts, symbol_id, bid, ask, bsz, asz);
        if b.len() > 4 {
            levels.clear();
            for (k, c) in b.chunks_exact(4).enumerate().skip(1).take(DEPTH_LEVELS - 1) {
                // The message is built only for a bad field, not for every row.
                let field = |j: usize| {
                    c[j].trim()
                        .parse::<i64>()
                        .map_err(|_| bad_num(&format!("level {} {}", k + 1, LEVEL_FIELDS[j])))
                };
                let (ap, az, bp, bz) = (field(0)?, field(1)?, field(2)?, field(3)?);
                if az < 0 || bz < 0 {
                    return Err(bad_num(&format!("level {} size (negative)", k + 1)));
                }
                let price = |p: i64| (p.abs() != LOBSTER_DUMMY).then_some(p);
                levels.push(Level { bid: price(bp), bid_size: bz, ask: price(ap), ask_size: az });
            }
            depth_levels = fill_depth(&mut ev.req, levels.drain(..), 10_000);
        }
        events.push(ev);
    }
    Ok(Stream {
        events,
        price_scale: 10_000,
        symbols: symbols.listing(),
        skipped: skips.0,
        depth_levels,
        size_scale: 1,
    })
}

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

// ---------------------------------------------------------------- DBN

/// Databento DBN (zstd-compressed or not), schemas mbp-1, mbp-10 and bbo-1s/1m (and
/// cbbo): top of book per record, and for mbp-10 levels 2..=5 in the depth block
/// (an undefined deeper price is an empty level); prices are 1e-9 fixed point; an
/// undefined best price (one-sided book) skips the record. Instrument ids map to symbol ids
/// through `--symbols ID=SYMBOL_ID` (else in order of appearance).
pub fn load_dbn(path: &Path, symbols: &mut SymbolTable) -> Result<Stream, SourceError> {
    use dbn::decode::{DecodeRecordRef, DynDecoder};
    use dbn::{BboMsg, Mbp10Msg, Mbp1Msg, VersionUpgradePolicy};

    let mut decoder =
        DynDecoder::from_file(path, VersionUpgradePolicy::default()).map_err(|e| err(path, e.to_string()))?;
    let mut events = Vec::new();
    let mut skips = Skips(vec![]);
    let mut depth_levels = 1;
    while let Some(rec) = decoder.decode_record_ref().map_err(|e| err(path, e.to_string()))? {
        let mut deeper = None;
        let (instrument, ts, l) = if let Some(m) = rec.get::<Mbp1Msg>() {
            (m.hd.instrument_id, m.hd.ts_event, m.levels[0].clone())
        } else if let Some(m) = rec.get::<Mbp10Msg>() {
            deeper = Some(m.levels.clone());
            (m.hd.instrument_id, m.hd.ts_event, m.levels[0].clone())
        } else if let Some(b) = rec.get::<BboMsg>() {
            (b.hd.instrument_id, b.ts_recv, b.levels[0].clone())
        } else {
            skips.add("record of another schema");
            continue;
        };
        if l.bid_px == dbn::UNDEF_PRICE || l.ask_px == dbn::UNDEF_PRICE {
            skips.add("undefined bid or ask price");
            continue;
        }
        let Some(symbol_id) = symbols.id(&instrument.to_string()).map_err(|e| err(path, e))? else {
            skips.add("instrument not in --symbols");
            continue;
        };
        let mut ev = request(ts, symbol_id, l.bid_px, l.ask_px, l.bid_sz as i64, l.ask_sz as i64);
        if let Some(levels) = deeper {
            let price = |p: i64| (p != dbn::UNDEF_PRICE).then_some(p);
            let levels = levels[1..].iter().map(|l| Level {
                bid: price(l.bid_px),
                bid_size: l.bid_sz as i64,
                ask: price(l.ask_px),
                ask_size: l.ask_sz as i64,
            });
            depth_levels = depth_levels.max(fill_depth(&mut ev.req, levels, 1_000_000_000));
        }
        events.push(ev);
    }
    Ok(Stream {
        events,
        price_scale: 1_000_000_000,
        symbols: symbols.listing(),
        skipped: skips.0,
        depth_levels,
        size_scale: 1,
    })
}

// ---------------------------------------------------------------- CSV

/// CSV with a header row. Columns (any order, names case-insensitive):
/// `timestamp_ns` (integer ns; or `timestamp` in seconds, decimal),
/// `symbol` (name, mapped to an id) or `symbol_id`,
/// `bid_price`, `ask_price` (decimal prices), `bid_size`, `ask_size` (integers),
/// optional `book_imbalance` (ratio in [-1, 1]; computed from the sizes if absent),
/// optional `f0` … `f31` (extra features). Prices are stored at scale 10⁹.
pub fn load_csv(path: &Path, symbols: &mut SymbolTable) -> Result<Stream, SourceError> {
    load_csv_with(path, symbols, &LoadOptions::default())
}

/// [`load_csv`] with `opts`: decimal sizes read exactly as fixed point at its size
/// scale, the file's own column names mapped, timestamps in its unit.
fn load_csv_with(path: &Path, symbols: &mut SymbolTable, opts: &LoadOptions) -> Result<Stream, SourceError> {
    const SCALE: f64 = 1e9;
    let size_scale = opts.size_scale.max(1);
    let digits = crate::wire::size_scale_digits(size_scale)
        .ok_or_else(|| err(path, format!("size scale {size_scale} is not a power of ten")))?;
    let text = std::fs::read_to_string(path).map_err(|e| err(path, e.to_string()))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| err(path, "empty file"))?;
    let cols: Vec<String> = header.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    // `--columns NAME=COLUMN`: our name read from the file's column.
    for (ours, theirs) in &opts.columns {
        if !cols.contains(theirs) {
            return Err(err(
                path,
                format!("--columns {ours}={theirs}: no column `{theirs}` (header: {header})"),
            ));
        }
    }
    let find = |name: &str| {
        let mapped = opts.columns.iter().find(|(ours, _)| ours == name).map(|(_, theirs)| theirs.as_str());
        cols.iter().position(|c| c == mapped.unwrap_or(name))
    };
    let need = |name: &str| {
        find(name).ok_or_else(|| {
            err(
                path,
                format!("missing column `{name}` (header: {header}; map yours with --columns {name}=YOURS)"),
            )
        })
    };
    let (bid_i, ask_i, bsz_i, asz_i) =
        (need("bid_price")?, need("ask_price")?, need("bid_size")?, need("ask_size")?);
    // The timestamp: `timestamp_ns` (ns) or `timestamp` (s), unless --time-unit says otherwise.
    let (ts_i, ts_name, unit) = match (find("timestamp_ns"), find("timestamp")) {
        (Some(i), _) => (i, "timestamp_ns", opts.time_unit.unwrap_or(TimeUnit::Ns)),
        (None, Some(i)) => (i, "timestamp", opts.time_unit.unwrap_or(TimeUnit::S)),
        (None, None) => {
            return Err(err(
                path,
                format!(
                    "missing column `timestamp_ns` (or `timestamp` in seconds; header: {header}): map yours with \
                     --columns timestamp=YOURS and give --time-unit s|ms|us|ns|iso"
                ),
            ))
        }
    };
    let (sym_i, symid_i) = (find("symbol"), find("symbol_id"));
    let imb_i = find("book_imbalance");
    let feats: Vec<(usize, usize)> =
        (0..MAX_FEATURES).filter_map(|k| find(&format!("f{k}")).map(|i| (k, i))).collect();
    let mut events = Vec::new();
    let mut skips = Skips(vec![]);
    for (n, line) in lines {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |what: &str| err(path, format!("line {}: bad {what}", n + 1));
        let get = |i: usize, what: &str| f.get(i).copied().ok_or_else(|| bad(what));
        // Every error names the line, the column and the value.
        let out_of_range =
            |what: &str, v: &str, why: &str| err(path, format!("line {}: {what} = {v}: {why}", n + 1));
        let price = |i: usize, what: &str| -> Result<i64, SourceError> {
            let text = get(i, what)?;
            let v: f64 = text.parse().map_err(|_| bad(what))?;
            fixed_point(v, SCALE)
                .ok_or_else(|| out_of_range(what, text, "not a finite price within range at scale 1e9"))
        };
        let size = |i: usize, what: &str| -> Result<i64, SourceError> {
            let text = get(i, what)?;
            if text.starts_with('-') {
                return Err(out_of_range(what, text, "sizes cannot be negative"));
            }
            decimal_fixed(text, digits).map_err(|why| out_of_range(what, text, &why))
        };
        let text = get(ts_i, ts_name)?;
        let ts = parse_time(text, unit).map_err(|why| out_of_range(ts_name, text, &why))?;
        let symbol_id = match (symid_i, sym_i) {
            (Some(i), _) => {
                let text = get(i, "symbol_id")?;
                let v = text.parse::<i64>().map_err(|_| bad("symbol_id"))?;
                u16::try_from(v).map_err(|_| {
                    out_of_range("symbol_id", text, "symbol ids are 0..65535 (16-bit on the wire)")
                })?
            }
            (None, Some(i)) => {
                match symbols.id(get(i, "symbol")?).map_err(|e| err(path, format!("line {}: {e}", n + 1)))? {
                    Some(id) => id,
                    None => {
                        skips.add("symbol not in --symbols");
                        continue;
                    }
                }
            }
            _ => 0,
        };
        let (bid, ask) = (price(bid_i, "bid_price")?, price(ask_i, "ask_price")?);
        let (bsz, asz) = (size(bsz_i, "bid_size")?, size(asz_i, "ask_size")?);
        let mut ev = request(ts, symbol_id, bid, ask, bsz, asz);
        if let Some(i) = imb_i {
            let text = get(i, "book_imbalance")?;
            let r: f64 = text.parse().map_err(|_| bad("book_imbalance"))?;
            if !(-1.0..=1.0).contains(&r) {
                return Err(out_of_range("book_imbalance", text, "a ratio in [-1, 1]"));
            }
            ev.req.book_imbalance = (r * IMBALANCE_SCALE as f64).round() as i64;
        }
        if !feats.is_empty() {
            let mut x = [0f32; MAX_FEATURES];
            for &(k, i) in &feats {
                x[k] = get(i, "feature")?.parse().map_err(|_| bad(&format!("f{k}")))?;
            }
            ev.req.features = x;
            ev.req.n_features = feats.iter().map(|&(k, _)| k + 1).max().unwrap_or(0) as u16;
        }
        events.push(ev);
    }
    Ok(Stream {
        events,
        price_scale: SCALE as i64,
        symbols: symbols.listing(),
        skipped: skips.0,
        depth_levels: 1,
        size_scale,
    })
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

// ---------------------------------------------------------------- capture

/// A tickinfer capture: requests exactly as recorded (extras included).
pub fn load_capture(path: &Path) -> Result<Stream, SourceError> {
    let cap = crate::record::read_capture(path).map_err(|e| err(path, e.to_string()))?;
    let scale = cap.header.price_scale;
    if scale <= 0 {
        return Err(err(path, format!("capture header: price_scale = {scale}: must be positive")));
    }
    let mut skipped = vec![];
    if cap.trailing_bytes > 0 {
        skipped.push((format!("trailing partial record ({} bytes)", cap.trailing_bytes), 1));
    }
    let events =
        cap.records.iter().map(|r| Event { ts_ns: r.request.timestamp_ns, req: r.request }).collect();
    let size_scale = crate::wire::size_scale(cap.header.size_scale_digits).ok_or_else(|| {
        err(
            path,
            format!("capture header: size_scale_digits = {}: at most 18", { cap.header.size_scale_digits }),
        )
    })?;
    Ok(Stream {
        events,
        price_scale: cap.header.price_scale,
        symbols: vec![],
        skipped,
        depth_levels: 1,
        size_scale,
    })
}

/// Rescale every price from `from` to `to` (exact when one divides the other; rounded
/// otherwise). An error names the event whose price leaves `i64` at the new scale.
pub fn rescale(events: &mut [Event], from: i64, to: i64) -> Result<(), String> {
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
    for (i, e) in events.iter_mut().enumerate() {
        let symbol = e.req.symbol_id;
        let scaled = |what: &str, price: i64| {
            conv(price).ok_or_else(|| {
                format!(
                    "event {} (symbol {symbol}): {what} {price} does not fit in i64 at the server's price \
                     scale {to} (from {from})",
                    i + 1
                )
            })
        };
        e.req.bid_price = scaled("bid_price", e.req.bid_price)?;
        e.req.ask_price = scaled("ask_price", e.req.ask_price)?;
    }
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
