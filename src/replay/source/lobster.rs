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

/// Comma-separated fields of a line.
fn fields(line: &str) -> usize {
    // A plain loop: LLVM vectorises it, and short lines pay no set-up.
    line.bytes().filter(|&b| b == b',').count() + 1
}

/// The fields of a line, read one by one in a single pass (`""` past the last).
struct Fields<'a>(&'a str);

impl<'a> Fields<'a> {
    /// The next field as text.
    #[inline]
    fn text(&mut self) -> &'a str {
        let rest = self.0;
        match memchr::memchr(b',', rest.as_bytes()) {
            Some(i) => {
                self.0 = &rest[i + 1..];
                &rest[..i]
            }
            None => {
                self.0 = "";
                rest
            }
        }
    }

    /// The next field as a whole number, exactly as `field.trim().parse::<i64>()` reads it:
    /// plain digits (with a `-`) are read here in one pass; anything else (spaces, `+`, 19
    /// digits or more, not a number) goes through `str::parse`.
    #[inline]
    fn int(&mut self) -> Option<i64> {
        let b = self.0.as_bytes();
        let negative = b.first() == Some(&b'-');
        let start = usize::from(negative);
        let (digits, v) = match b.get(start..start + 8) {
            Some(eight) => eight_digits(u64::from_le_bytes(eight.try_into().ok()?)),
            None => (0, 0),
        };
        let (mut i, mut v) = (start + digits, v as i64);
        if digits == 8 || start + 8 > b.len() {
            // More digits than one word holds, or too near the line's end for a word.
            while i < b.len() && i - start < 18 && b[i].is_ascii_digit() {
                v = v * 10 + i64::from(b[i] - b'0');
                i += 1;
            }
        }
        if i > start && (i == b.len() || b[i] == b',') {
            self.0 = if i < b.len() { &self.0[i + 1..] } else { "" };
            return Some(if negative { -v } else { v });
        }
        self.text().trim().parse().ok()
    }
}

/// The leading ASCII digits of 8 bytes (the first in the low byte) and their value:
/// (how many, 0..=8, value).
#[inline]
fn eight_digits(word: u64) -> (usize, u64) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let t = word.wrapping_sub(ONES * b'0' as u64);
    // A byte's high bit is set from the first non-digit on (below '0': the subtraction
    // wraps; above '9': adding 0x76 carries into it); the bytes after it do not matter.
    let non_digit = (t | t.wrapping_add(ONES * 0x76)) & (ONES * 0x80);
    let n = (non_digit.trailing_zeros() / 8) as usize;
    if n == 0 {
        return (0, 0);
    }
    // The n digits to the top bytes, leading zeros below; then pairs, quads, eights.
    let mut v = (t << (8 * (8 - n))) & (ONES * 0x0F);
    v = v.wrapping_mul(10 * 256 + 1) >> 8;
    v = (v & 0x00FF_00FF_00FF_00FF).wrapping_mul(100 * 65_536 + 1) >> 16;
    v = (v & 0x0000_FFFF_0000_FFFF).wrapping_mul(10_000 * (1 << 32) + 1) >> 32;
    (n, v)
}

pub(super) struct Reader {
    messages: Lines,
    book: Lines,
    ticker: String,
    day_ns: u64,
    /// Rows read (1-based in messages).
    row: usize,
    /// Levels 2.. of the row being read, reused: no allocation per row.
    levels: Vec<Level>,
    /// The ticker's id, once the symbol table gave it.
    symbol_id: Option<u16>,
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
            levels: Vec::with_capacity(DEPTH_LEVELS - 1),
            symbol_id: None,
        })
    }

    /// The next event into `ev`, and the deepest book level it carries.
    pub(super) fn next(
        &mut self,
        path: &Path,
        symbols: &mut SymbolTable,
        skips: &mut Skips,
        ev: &mut Event,
    ) -> Result<Option<usize>, SourceError> {
        let symbol_id = match self.symbol_id {
            Some(id) => id,
            None => {
                let id = symbols.id(&self.ticker).map_err(|e| err(path, e))?.ok_or_else(|| {
                    err(path, format!("ticker {} is not in the --symbols mapping", self.ticker))
                })?;
                *self.symbol_id.insert(id)
            }
        };
        loop {
            let Some(msg) = self.messages.next_str().map_err(|e| err(path, e.to_string()))? else {
                return Ok(None);
            };
            self.row += 1;
            let row = self.row;
            let Some(book) = self.book.next_str().map_err(|e| err(path, e.to_string()))? else {
                return Err(err(path, format!("orderbook has fewer rows than messages (row {row})")));
            };
            let (m_n, b_n) = (fields(msg), fields(book));
            if m_n < 6 || b_n < 4 || b_n % 4 != 0 {
                return Err(err(path, format!("row {row}: not a LOBSTER message/orderbook row")));
            }
            let bad_num = |what: &str| err(path, format!("row {row}: bad {what}"));
            let mut m = Fields(msg);
            let secs: f64 = m.text().trim().parse().map_err(|_| bad_num("time"))?;
            let kind = m.int().ok_or_else(|| bad_num("event type"))?;
            if kind == 7 {
                skips.add("trading halt message (type 7)");
                continue;
            }
            let mut b = Fields(book);
            let mut num = |what: &str| b.int().ok_or_else(|| bad_num(what));
            let (ask, asz, bid, bsz) =
                (num("ask price")?, num("ask size")?, num("bid price")?, num("bid size")?);
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
            *ev = request(ts, symbol_id, bid, ask, bsz, asz);
            let mut depth = 1;
            if b_n > 4 {
                self.levels.clear();
                for k in 1..(b_n / 4).min(DEPTH_LEVELS) {
                    // The message is built only for a bad field, not for every row.
                    let mut field = |j: usize| {
                        b.int().ok_or_else(|| bad_num(&format!("level {} {}", k + 1, LEVEL_FIELDS[j])))
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
            return Ok(Some(depth));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_read_as_str_parse_reads_them() {
        let cases = [
            "0",
            "-0",
            "+7",
            " 42 ",
            "-9999999999",
            "9223372036854775807",
            "-9223372036854775808",
            "",
            "-",
            "+",
            "1.5",
            "1e3",
            "9223372036854775808",
            "-9223372036854775809",
            "12a",
            "--1",
            "123456789012345678",
            "1234567890123456789",
        ];
        for s in cases {
            let line = format!("{s},5");
            let mut f = Fields(&line);
            assert_eq!(f.int(), s.trim().parse::<i64>().ok(), "{s:?}");
            assert_eq!(f.int(), Some(5), "{s:?}: the next field");
            assert_eq!(Fields(s).int(), s.trim().parse::<i64>().ok(), "{s:?} alone");
        }
        let mut f = Fields("a,,b");
        assert_eq!([f.text(), f.text(), f.text(), f.text()], ["a", "", "b", ""]);
        assert_eq!(fields("a,,b"), 3);
        // Every length and position around the 8-byte word, signs, and neighbours.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let digits = 1 + (seed % 19) as usize;
            let mut s: String =
                (0..digits).map(|k| char::from(b'0' + ((seed >> (k * 3)) % 10) as u8)).collect();
            if seed & (1 << 60) != 0 {
                s.insert(0, '-');
            }
            let tail = ["", ",1", "x,2", " ,3", ",", ",12345678901"][(seed >> 40) as usize % 6];
            let line = format!("{s}{tail}");
            let mut f = Fields(&line);
            let want = line.split(',').next().unwrap().trim().parse::<i64>().ok();
            assert_eq!(f.int(), want, "{line:?}");
        }
    }
}
