//! LOBSTER: `TICKER_DATE_START_END_message_LEVELS.csv` with its
//! `..._orderbook_LEVELS.csv` beside it, or a zip holding both, read line by line
//! side by side. Prices are USD × 10000; times seconds after midnight. Rows of
//! trading halts (type 7) and rows whose best level is empty (dummy price) are
//! skipped and counted. Any number of levels is read (the orderbook's columns / 4):
//! levels 2..=5 fill the request's depth block (`ML_DEPTH_INDEX`), deeper ones are
//! not carried; an empty level (dummy price) has size 0.

use std::path::Path;

use super::{date_to_unix_ns, err, fill_depth, request, secs_to_ns, ByteCount, Event, Level, Lines, Skips};
use super::{SourceError, SymbolTable};
use crate::wire::DEPTH_LEVELS;

pub(super) const PRICE_SCALE: i64 = 10_000;

/// A LOBSTER orderbook level's four columns, in file order.
const LEVEL_FIELDS: [&str; 4] = ["ask price", "ask size", "bid price", "bid size"];

/// LOBSTER's dummy price for an empty level (±9999999999).
const LOBSTER_DUMMY: i64 = 9_999_999_999;

pub(super) struct Reader {
    messages: Lines,
    book: Lines,
    ticker: String,
    day_ns: u64,
    /// Rows read (1-based in messages).
    row: usize,
    /// Reused line buffers and levels 2.. of the row being read: no allocation per row.
    msg_line: String,
    book_line: String,
    levels: Vec<Level>,
}

impl Reader {
    pub(super) fn open(path: &Path, bytes: &ByteCount) -> Result<Reader, SourceError> {
        let (msg_name, messages, book) = if path.extension().is_some_and(|e| e == "zip") {
            let file = std::fs::File::open(path).map_err(|e| err(path, e.to_string()))?;
            let zip = zip::ZipArchive::new(file).map_err(|e| err(path, e.to_string()))?;
            let msg = zip
                .file_names()
                .find(|n| n.contains("_message_") && n.ends_with(".csv"))
                .ok_or_else(|| err(path, "no *_message_*.csv in the zip"))?
                .to_string();
            let ob = msg.replace("_message_", "_orderbook_");
            let messages = Lines::zip_entry(path, &msg, Some(bytes)).map_err(|e| err(path, e))?;
            let book = Lines::zip_entry(path, &ob, None).map_err(|e| err(path, e))?;
            (msg, messages, book)
        } else {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if !name.contains("_message_") {
                return Err(err(path, "expected a LOBSTER *_message_N.csv file (or a zip of the pair)"));
            }
            let ob = path.with_file_name(name.replace("_message_", "_orderbook_"));
            let messages = Lines::file(path, bytes).map_err(|e| err(path, e.to_string()))?;
            let book = Lines::file(&ob, &ByteCount::default()).map_err(|e| {
                err(&ob, format!("{e} (the orderbook file must sit beside the message file)"))
            })?;
            (name, messages, book)
        };
        let base = Path::new(&msg_name).file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let mut parts = base.split('_');
        let ticker = parts.next().unwrap_or("LOBSTER").to_string();
        let day_ns = parts.next().and_then(date_to_unix_ns).unwrap_or(0);
        Ok(Reader {
            messages,
            book,
            ticker,
            day_ns,
            row: 0,
            msg_line: String::new(),
            book_line: String::new(),
            levels: Vec::with_capacity(DEPTH_LEVELS - 1),
        })
    }

    /// The next event and the deepest book level it carries.
    pub(super) fn next(
        &mut self,
        path: &Path,
        symbols: &mut SymbolTable,
        skips: &mut Skips,
    ) -> Result<Option<(Event, usize)>, SourceError> {
        let symbol_id = symbols
            .id(&self.ticker)
            .map_err(|e| err(path, e))?
            .ok_or_else(|| err(path, format!("ticker {} is not in the --symbols mapping", self.ticker)))?;
        loop {
            if !self.messages.next_line(&mut self.msg_line).map_err(|e| err(path, e.to_string()))? {
                return Ok(None);
            }
            self.row += 1;
            let row = self.row;
            if !self.book.next_line(&mut self.book_line).map_err(|e| err(path, e.to_string()))? {
                return Err(err(path, format!("orderbook has fewer rows than messages (row {row})")));
            }
            let m: Vec<&str> = self.msg_line.split(',').collect();
            let b: Vec<&str> = self.book_line.split(',').collect();
            if m.len() < 6 || b.len() < 4 || b.len() % 4 != 0 {
                return Err(err(path, format!("row {row}: not a LOBSTER message/orderbook row")));
            }
            let bad_num = |what: &str| err(path, format!("row {row}: bad {what}"));
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
            let ts = secs_to_ns(secs).and_then(|ns| self.day_ns.checked_add(ns)).ok_or_else(|| {
                bad_num(&format!(
                    "time {secs} (negative, or past the nanosecond clock's range from the file's date)"
                ))
            })?;
            let mut ev = request(ts, symbol_id, bid, ask, bsz, asz);
            let mut depth = 1;
            if b.len() > 4 {
                self.levels.clear();
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
                    self.levels.push(Level { bid: price(bp), bid_size: bz, ask: price(ap), ask_size: az });
                }
                depth = fill_depth(&mut ev.req, self.levels.drain(..), PRICE_SCALE);
            }
            return Ok(Some((ev, depth)));
        }
    }
}
