//! Databento DBN (zstd-compressed or not), decoded record by record: schemas mbp-1,
//! mbp-10 and bbo-1s/1m (and cbbo): top of book per record, and for mbp-10 levels
//! 2..=5 in the depth block (an undefined deeper price is an empty level); prices are
//! 1e-9 fixed point; an undefined best price (one-sided book) skips the record.
//! Instrument ids map to symbol ids through `--symbols ID=SYMBOL_ID` (else in order
//! of appearance).

use std::io::Read;
use std::path::Path;

use dbn::decode::{DecodeRecordRef, DynDecoder};
use dbn::{BboMsg, Mbp10Msg, Mbp1Msg, VersionUpgradePolicy};

use super::{err, fill_depth, request, ByteCount, Event, Level, Skips, SourceError, SymbolTable};

pub(super) const PRICE_SCALE: i64 = 1_000_000_000;

/// The file, counting the (compressed) bytes the decoder takes.
struct Counted(std::fs::File, ByteCount);

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1.add(n as u64);
        Ok(n)
    }
}

pub(super) struct Reader {
    decoder: DynDecoder<'static, std::io::BufReader<Counted>>,
}

impl Reader {
    pub(super) fn open(path: &Path, bytes: &ByteCount) -> Result<Reader, SourceError> {
        let file = std::fs::File::open(path).map_err(|e| err(path, e.to_string()))?;
        bytes.set_total(file.metadata().map_err(|e| err(path, e.to_string()))?.len());
        let decoder = DynDecoder::new_inferred(Counted(file, bytes.clone()), VersionUpgradePolicy::default())
            .map_err(|e| err(path, e.to_string()))?;
        Ok(Reader { decoder })
    }

    /// The next event into `ev`, and the deepest book level it carries.
    pub(super) fn next(
        &mut self,
        path: &Path,
        symbols: &mut SymbolTable,
        skips: &mut Skips,
        ev: &mut Event,
    ) -> Result<Option<usize>, SourceError> {
        while let Some(rec) = self.decoder.decode_record_ref().map_err(|e| err(path, e.to_string()))? {
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
            *ev = request(ts, symbol_id, l.bid_px, l.ask_px, l.bid_sz as i64, l.ask_sz as i64);
            let mut depth = 1;
            if let Some(levels) = deeper {
                let price = |p: i64| (p != dbn::UNDEF_PRICE).then_some(p);
                let levels = levels[1..].iter().map(|l| Level {
                    bid: price(l.bid_px),
                    bid_size: l.bid_sz as i64,
                    ask: price(l.ask_px),
                    ask_size: l.ask_sz as i64,
                });
                depth = fill_depth(&mut ev.req, levels, PRICE_SCALE);
            }
            return Ok(Some(depth));
        }
        Ok(None)
    }
}
