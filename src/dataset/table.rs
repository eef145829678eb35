//! Rows waiting for their labels, flushed as row groups in event order.
//!
//! A row's label is known only when its symbol reaches the label horizon
//! ([`Lookahead`]), so rows wait here, oldest first. The oldest `rows_per_group` are written
//! as one row group as soon as every one of them is *settled* (labelled, or known not to be).
//! The wait is bounded: once `rows_per_group + lookahead` rows are buffered, the oldest group
//! is written anyway, its unsettled rows with a null label (counted as `cut`) and forgotten by
//! the look-ahead. Memory therefore stays at most `rows_per_group + lookahead` rows whatever
//! the input's size; a symbol that trades rarely (or a horizon in ms longer than the
//! look-ahead covers) is what reaches the bound.

use super::parquet::{Group, Writer, NO_LABEL};
use crate::replay::horizon::Lookahead;

/// What happened to the rows' labels, and how the rows were buffered.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub rows: u64,
    pub row_groups: u64,
    /// The most rows buffered at once (at most `rows_per_group + lookahead`).
    pub peak_buffered_rows: usize,
    /// Rows whose symbol reached the horizon: label and return written.
    pub labelled: u64,
    /// Rows whose symbol was not seen again within the horizon in ms (null label).
    pub not_seen: u64,
    /// Rows still waiting for their horizon when the input ended (null label).
    pub pending: u64,
    /// Rows written before their horizon came because the look-ahead bound was reached (null label).
    pub cut: u64,
}

pub struct Table {
    width: usize,
    rows_per_group: usize,
    lookahead: usize,
    /// Row number (in the file) of the first buffered row.
    base: u64,
    ts: Vec<i64>,
    symbol: Vec<u16>,
    mid: Vec<f64>,
    warming: Vec<bool>,
    /// Features, row-major.
    x: Vec<f32>,
    label: Vec<i8>,
    label_return: Vec<f64>,
    settled: Vec<bool>,
    /// The buffered rows before this one are all settled.
    prefix: usize,
    pub counts: Counts,
}

impl Table {
    pub fn new(width: usize, rows_per_group: usize, lookahead: usize) -> Table {
        let n = rows_per_group.min(1 << 20);
        Table {
            width,
            rows_per_group: rows_per_group.max(1),
            lookahead,
            base: 0,
            ts: Vec::with_capacity(n),
            symbol: Vec::with_capacity(n),
            mid: Vec::with_capacity(n),
            warming: Vec::with_capacity(n),
            x: Vec::with_capacity(n * width),
            label: Vec::with_capacity(n),
            label_return: Vec::with_capacity(n),
            settled: Vec::with_capacity(n),
            prefix: 0,
            counts: Counts::default(),
        }
    }

    /// A new row, its features filled by `fill` (which returns the warming flag); its number.
    #[inline]
    pub fn push(&mut self, ts: u64, symbol: u16, mid: f64, fill: impl FnOnce(&mut [f32]) -> bool) -> u64 {
        let at = self.x.len();
        self.x.resize(at + self.width, 0.0);
        let warming = fill(&mut self.x[at..]);
        self.ts.push(ts as i64);
        self.symbol.push(symbol);
        self.mid.push(mid);
        self.warming.push(warming);
        self.label.push(NO_LABEL);
        self.label_return.push(0.0);
        self.settled.push(false);
        self.counts.peak_buffered_rows = self.counts.peak_buffered_rows.max(self.ts.len());
        self.base + self.ts.len() as u64 - 1
    }

    /// The number the next row will get.
    pub fn next_row(&self) -> u64 {
        self.base + self.ts.len() as u64
    }

    /// Row `row`'s label: (direction, return in bps), or `None`: not seen within the horizon.
    #[inline]
    pub fn settle(&mut self, row: u64, label: Option<(i8, f64)>) {
        if row & super::NO_ROW != 0 {
            return; // an event without a row
        }
        let Some(i) = row.checked_sub(self.base).map(|i| i as usize).filter(|&i| i < self.ts.len()) else {
            return; // already written (cut): the look-ahead forgot it
        };
        match label {
            Some((direction, ret)) => {
                self.label[i] = direction;
                self.label_return[i] = ret;
                self.counts.labelled += 1;
            }
            None => self.counts.not_seen += 1,
        }
        self.settled[i] = true;
    }

    /// Write every full group whose rows are settled; at the bound, the oldest group anyway.
    #[inline]
    pub fn flush_ready<W: std::io::Write + Send>(
        &mut self,
        out: &mut Writer<W>,
        lookahead: &mut Lookahead<u64>,
    ) -> Result<(), String> {
        while self.prefix < self.settled.len() && self.settled[self.prefix] {
            self.prefix += 1;
        }
        if self.prefix >= self.rows_per_group {
            self.write(out, self.rows_per_group)?;
        } else if self.ts.len() >= self.rows_per_group + self.lookahead {
            let n = self.rows_per_group;
            self.counts.cut += self.settled[..n].iter().filter(|s| !**s).count() as u64;
            let end = self.base + n as u64;
            lookahead.forget_oldest_while(|&row| row & !super::NO_ROW < end);
            self.write(out, n)?;
        }
        Ok(())
    }

    /// The input ended: write what is left (rows still waiting get a null label).
    pub fn finish<W: std::io::Write + Send>(&mut self, out: &mut Writer<W>) -> Result<(), String> {
        self.counts.pending += self.settled.iter().filter(|s| !**s).count() as u64;
        while !self.ts.is_empty() {
            self.write(out, self.rows_per_group.min(self.ts.len()))?;
        }
        Ok(())
    }

    /// Write the oldest `n` rows as a row group and drop them.
    fn write<W: std::io::Write + Send>(&mut self, out: &mut Writer<W>, n: usize) -> Result<(), String> {
        out.write_group(&Group {
            ts: &self.ts[..n],
            symbol: &self.symbol[..n],
            mid: &self.mid[..n],
            warming: &self.warming[..n],
            x: &self.x[..n * self.width],
            label: &self.label[..n],
            label_return: &self.label_return[..n],
        })?;
        self.ts.drain(..n);
        self.symbol.drain(..n);
        self.mid.drain(..n);
        self.warming.drain(..n);
        self.x.drain(..n * self.width);
        self.label.drain(..n);
        self.label_return.drain(..n);
        self.settled.drain(..n);
        self.prefix = self.prefix.saturating_sub(n);
        self.base += n as u64;
        self.counts.rows += n as u64;
        self.counts.row_groups += 1;
        Ok(())
    }
}
