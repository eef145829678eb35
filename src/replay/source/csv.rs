//! CSV with a header row, read line by line. Columns (any order, names
//! case-insensitive, or the file's own names mapped with `--columns`):
//! `timestamp_ns` (integer ns) or `timestamp` (seconds, decimal), either in another
//! unit with `--time-unit s|ms|us|ns|iso`; `symbol` (any string, mapped to an id) or
//! `symbol_id`; `bid_price`, `ask_price` (decimal prices); `bid_size`, `ask_size`
//! (decimal, read exactly at the model's size scale); optional `book_imbalance`
//! (ratio in [-1, 1]; computed from the sizes if absent); optional `f0` … `f31`
//! (extra features). Prices are stored at scale 10⁹. Every error names the line,
//! the column and the value.

use std::path::Path;

use super::{decimal_fixed, err, fixed_point, parse_time, request, ByteCount, Event, Lines, LoadOptions};
use super::{Skips, SourceError, SymbolTable, TimeUnit};
use crate::wire::{IMBALANCE_SCALE, MAX_FEATURES};

pub(super) const PRICE_SCALE: i64 = 1_000_000_000;

/// Column positions of one file.
struct Columns {
    bid: usize,
    ask: usize,
    bid_size: usize,
    ask_size: usize,
    ts: usize,
    ts_name: &'static str,
    unit: TimeUnit,
    symbol: Option<usize>,
    symbol_id: Option<usize>,
    imbalance: Option<usize>,
    /// `(k, column)` of each `f<k>` present.
    features: Vec<(usize, usize)>,
}

pub(super) struct Reader {
    lines: Lines,
    cols: Columns,
    /// Decimal digits of the size scale sizes are read at (`size_scale = 10^digits`).
    digits: u16,
    pub(super) size_scale: i64,
    /// Lines read so far (1-based, the header included).
    line_no: usize,
    line: String,
}

impl Reader {
    pub(super) fn open(path: &Path, opts: &LoadOptions, bytes: &ByteCount) -> Result<Reader, SourceError> {
        let size_scale = opts.size_scale.max(1);
        let digits = crate::wire::size_scale_digits(size_scale)
            .ok_or_else(|| err(path, format!("size scale {size_scale} is not a power of ten")))?;
        let mut lines = Lines::file(path, bytes).map_err(|e| err(path, e.to_string()))?;
        let mut header = String::new();
        let mut line_no = 0;
        loop {
            if !lines.next_line(&mut header).map_err(|e| err(path, e.to_string()))? {
                return Err(err(path, "empty file"));
            }
            line_no += 1;
            if !header.trim().is_empty() {
                break;
            }
        }
        let cols = Columns::of(path, &header, opts)?;
        Ok(Reader { lines, cols, digits, size_scale, line_no, line: String::new() })
    }

    /// The next event into `ev` (top of book only: depth 1).
    pub(super) fn next(
        &mut self,
        path: &Path,
        symbols: &mut SymbolTable,
        skips: &mut Skips,
        ev: &mut Event,
    ) -> Result<Option<usize>, SourceError> {
        loop {
            if !self.lines.next_line(&mut self.line).map_err(|e| err(path, e.to_string()))? {
                return Ok(None);
            }
            self.line_no += 1;
            if self.line.trim().is_empty() {
                continue;
            }
            if let Some(e) = self.parse(path, symbols, skips)? {
                *ev = e;
                return Ok(Some(1));
            }
        }
    }

    /// The current line as an event; `None` when skipped (symbol not in `--symbols`).
    fn parse(
        &self,
        path: &Path,
        symbols: &mut SymbolTable,
        skips: &mut Skips,
    ) -> Result<Option<Event>, SourceError> {
        let (c, n, digits) = (&self.cols, self.line_no, self.digits);
        let f: Vec<&str> = self.line.split(',').map(str::trim).collect();
        let bad = |what: &str| err(path, format!("line {n}: bad {what}"));
        let get = |i: usize, what: &str| f.get(i).copied().ok_or_else(|| bad(what));
        // Every error names the line, the column and the value.
        let out_of_range =
            |what: &str, v: &str, why: &str| err(path, format!("line {n}: {what} = {v}: {why}"));
        let price = |i: usize, what: &str| -> Result<i64, SourceError> {
            let text = get(i, what)?;
            let v: f64 = text.parse().map_err(|_| bad(what))?;
            fixed_point(v, PRICE_SCALE as f64)
                .ok_or_else(|| out_of_range(what, text, "not a finite price within range at scale 1e9"))
        };
        let size = |i: usize, what: &str| -> Result<i64, SourceError> {
            let text = get(i, what)?;
            if text.starts_with('-') {
                return Err(out_of_range(what, text, "sizes cannot be negative"));
            }
            decimal_fixed(text, digits).map_err(|why| out_of_range(what, text, &why))
        };
        let text = get(c.ts, c.ts_name)?;
        let ts = parse_time(text, c.unit).map_err(|why| out_of_range(c.ts_name, text, &why))?;
        let symbol_id = match (c.symbol_id, c.symbol) {
            (Some(i), _) => {
                let text = get(i, "symbol_id")?;
                let v = text.parse::<i64>().map_err(|_| bad("symbol_id"))?;
                u16::try_from(v).map_err(|_| {
                    out_of_range("symbol_id", text, "symbol ids are 0..65535 (16-bit on the wire)")
                })?
            }
            (None, Some(i)) => {
                match symbols.id(get(i, "symbol")?).map_err(|e| err(path, format!("line {n}: {e}")))? {
                    Some(id) => id,
                    None => {
                        skips.add("symbol not in --symbols");
                        return Ok(None);
                    }
                }
            }
            _ => 0,
        };
        let (bid, ask) = (price(c.bid, "bid_price")?, price(c.ask, "ask_price")?);
        let (bsz, asz) = (size(c.bid_size, "bid_size")?, size(c.ask_size, "ask_size")?);
        let mut ev = request(ts, symbol_id, bid, ask, bsz, asz);
        if let Some(i) = c.imbalance {
            let text = get(i, "book_imbalance")?;
            let r: f64 = text.parse().map_err(|_| bad("book_imbalance"))?;
            if !(-1.0..=1.0).contains(&r) {
                return Err(out_of_range("book_imbalance", text, "a ratio in [-1, 1]"));
            }
            ev.req.book_imbalance = (r * IMBALANCE_SCALE as f64).round() as i64;
        }
        if !c.features.is_empty() {
            let mut x = [0f32; MAX_FEATURES];
            for &(k, i) in &c.features {
                x[k] = get(i, "feature")?.parse().map_err(|_| bad(&format!("f{k}")))?;
            }
            ev.req.features = x;
            ev.req.n_features = c.features.iter().map(|&(k, _)| k + 1).max().unwrap_or(0) as u16;
        }
        Ok(Some(ev))
    }
}

impl Columns {
    fn of(path: &Path, header: &str, opts: &LoadOptions) -> Result<Columns, SourceError> {
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
            let mapped =
                opts.columns.iter().find(|(ours, _)| ours == name).map(|(_, theirs)| theirs.as_str());
            cols.iter().position(|c| c == mapped.unwrap_or(name))
        };
        let need = |name: &str| {
            find(name).ok_or_else(|| {
                err(
                    path,
                    format!(
                        "missing column `{name}` (header: {header}; map yours with --columns {name}=YOURS)"
                    ),
                )
            })
        };
        let (bid, ask, bid_size, ask_size) =
            (need("bid_price")?, need("ask_price")?, need("bid_size")?, need("ask_size")?);
        // The timestamp: `timestamp_ns` (ns) or `timestamp` (s), unless --time-unit says otherwise.
        let (ts, ts_name, unit) = match (find("timestamp_ns"), find("timestamp")) {
            (Some(i), _) => (i, "timestamp_ns", opts.time_unit.unwrap_or(TimeUnit::Ns)),
            (None, Some(i)) => (i, "timestamp", opts.time_unit.unwrap_or(TimeUnit::S)),
            (None, None) => {
                return Err(err(
                    path,
                    format!(
                    "missing column `timestamp_ns` (or `timestamp` in seconds; header: {header}): map yours \
                         with --columns timestamp=YOURS and give --time-unit s|ms|us|ns|iso"
                ),
                ))
            }
        };
        Ok(Columns {
            bid,
            ask,
            bid_size,
            ask_size,
            ts,
            ts_name,
            unit,
            symbol: find("symbol"),
            symbol_id: find("symbol_id"),
            imbalance: find("book_imbalance"),
            features: (0..MAX_FEATURES).filter_map(|k| find(&format!("f{k}")).map(|i| (k, i))).collect(),
        })
    }
}
