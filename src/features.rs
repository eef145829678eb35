//! Request → model input row. Stateless: every feature is a function of one
//! request. `scripts/tickfeatures.py` is the Python twin used at training time;
//! the parity tests hold the two to the same numbers.
//!
//! Arithmetic is f64, normalised as `(x - mean) / std` in f64, then cast to f32.

use crate::wire::{MlRequest, IMBALANCE_SCALE, MAX_FEATURES};

/// One named input feature. Names are the manifest's strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// `bid_price`: bid in price units (fixed point / price_scale).
    BidPrice,
    /// `ask_price`: ask in price units.
    AskPrice,
    /// `bid_size`: resting bid quantity.
    BidSize,
    /// `ask_size`: resting ask quantity.
    AskSize,
    /// `book_imbalance`: the request's field as a ratio in [-1, 1].
    BookImbalance,
    /// `mid`: (bid + ask) / 2 in price units.
    Mid,
    /// `spread`: ask - bid in price units.
    Spread,
    /// `spread_bps`: spread / mid × 10⁴.
    SpreadBps,
    /// `microprice`: size-weighted mid, (bid·ask_size + ask·bid_size)/(bid_size + ask_size); mid if both sizes are 0.
    Microprice,
    /// `microprice_offset_bps`: (microprice - mid) / mid × 10⁴.
    MicropriceOffsetBps,
    /// `size_imbalance`: (bid_size - ask_size)/(bid_size + ask_size) from the sizes; 0 if both are 0.
    SizeImbalance,
    /// `log_bid_size`: ln(1 + bid_size).
    LogBidSize,
    /// `log_ask_size`: ln(1 + ask_size).
    LogAskSize,
    /// `log_size_ratio`: ln(1 + bid_size) - ln(1 + ask_size).
    LogSizeRatio,
    /// `extra:<i>`: the request's extra feature `i`.
    Extra(u8),
}

impl Feature {
    /// Every stateless feature name (extras are `extra:0` … `extra:31`).
    pub const NAMES: [&'static str; 14] = [
        "bid_price",
        "ask_price",
        "bid_size",
        "ask_size",
        "book_imbalance",
        "mid",
        "spread",
        "spread_bps",
        "microprice",
        "microprice_offset_bps",
        "size_imbalance",
        "log_bid_size",
        "log_ask_size",
        "log_size_ratio",
    ];

    /// Parse a manifest feature name.
    pub fn parse(name: &str) -> Result<Feature, String> {
        if let Some(i) = name.strip_prefix("extra:") {
            return match i.parse::<usize>() {
                Ok(i) if i < MAX_FEATURES => Ok(Feature::Extra(i as u8)),
                _ => Err(format!("feature `{name}`: extra index must be 0..{}", MAX_FEATURES - 1)),
            };
        }
        use Feature::*;
        Ok(match name {
            "bid_price" => BidPrice,
            "ask_price" => AskPrice,
            "bid_size" => BidSize,
            "ask_size" => AskSize,
            "book_imbalance" => BookImbalance,
            "mid" => Mid,
            "spread" => Spread,
            "spread_bps" => SpreadBps,
            "microprice" => Microprice,
            "microprice_offset_bps" => MicropriceOffsetBps,
            "size_imbalance" => SizeImbalance,
            "log_bid_size" => LogBidSize,
            "log_ask_size" => LogAskSize,
            "log_size_ratio" => LogSizeRatio,
            _ => {
                return Err(format!(
                    "unknown feature `{name}` (known: {}, extra:<i>)",
                    Feature::NAMES.join(", ")
                ))
            }
        })
    }
}

/// The ordered features that fill one input row, with their normalisation.
#[derive(Clone, Debug)]
pub struct FeatureMap {
    features: Vec<Feature>,
    /// Per-feature (mean, std), std > 0; identity (0, 1) where the manifest has none.
    norm: Vec<(f64, f64)>,
    /// 1 / price_scale: fixed point → price units.
    inv_price_scale: f64,
    /// Extra features the row reads: 1 + the largest `extra:<i>` index, or 0.
    extras: u16,
}

impl FeatureMap {
    /// Build from names and optional mean/std (same length as `names`; std > 0).
    pub fn new(
        names: &[String],
        mean: Option<&[f64]>,
        std: Option<&[f64]>,
        price_scale: i64,
    ) -> Result<FeatureMap, String> {
        let features = names.iter().map(|n| Feature::parse(n)).collect::<Result<Vec<_>, _>>()?;
        if features.is_empty() {
            return Err("the manifest lists no input features".into());
        }
        if price_scale <= 0 {
            return Err(format!("price_scale must be positive, got {price_scale}"));
        }
        let n = features.len();
        let norm = match (mean, std) {
            (None, None) => vec![(0.0, 1.0); n],
            (Some(m), Some(s)) => {
                if m.len() != n || s.len() != n {
                    return Err(format!(
                        "mean has {} and std has {} entries; the features list has {n}",
                        m.len(),
                        s.len()
                    ));
                }
                if let Some(i) = s.iter().position(|&v| !(v.is_finite() && v > 0.0)) {
                    return Err(format!("std[{i}] = {} must be finite and > 0", s[i]));
                }
                if let Some(i) = m.iter().position(|v| !v.is_finite()) {
                    return Err(format!("mean[{i}] = {} must be finite", m[i]));
                }
                m.iter().zip(s).map(|(&m, &s)| (m, s)).collect()
            }
            _ => return Err("give both mean and std, or neither".into()),
        };
        let extras = features
            .iter()
            .filter_map(|f| if let Feature::Extra(i) = f { Some(*i as u16 + 1) } else { None })
            .max()
            .unwrap_or(0);
        Ok(FeatureMap { features, norm, inv_price_scale: 1.0 / price_scale as f64, extras })
    }

    /// Width of one row.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// Always false: a map has at least one feature.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Extra features a request must carry (`n_features` the server expects).
    pub fn extras(&self) -> u16 {
        self.extras
    }

    /// The features, in row order.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// Fill `row` (length [`len`](Self::len)) from `req`. No allocation.
    #[inline]
    pub fn fill(&self, req: &MlRequest, row: &mut [f32]) {
        debug_assert_eq!(row.len(), self.features.len());
        let bid = req.bid_price as f64 * self.inv_price_scale;
        let ask = req.ask_price as f64 * self.inv_price_scale;
        let bsz = req.bid_size as f64;
        let asz = req.ask_size as f64;
        let mid = (bid + ask) * 0.5;
        let tot = bsz + asz;
        let extras = req.features; // one copy out of the packed struct
        for ((slot, feature), &(mean, std)) in row.iter_mut().zip(&self.features).zip(&self.norm) {
            let x = match *feature {
                Feature::BidPrice => bid,
                Feature::AskPrice => ask,
                Feature::BidSize => bsz,
                Feature::AskSize => asz,
                Feature::BookImbalance => req.book_imbalance as f64 / IMBALANCE_SCALE as f64,
                Feature::Mid => mid,
                Feature::Spread => ask - bid,
                Feature::SpreadBps => (ask - bid) / mid * 1e4,
                Feature::Microprice => microprice(bid, ask, bsz, asz, mid),
                Feature::MicropriceOffsetBps => (microprice(bid, ask, bsz, asz, mid) - mid) / mid * 1e4,
                Feature::SizeImbalance => {
                    if tot > 0.0 {
                        (bsz - asz) / tot
                    } else {
                        0.0
                    }
                }
                Feature::LogBidSize => bsz.ln_1p(),
                Feature::LogAskSize => asz.ln_1p(),
                Feature::LogSizeRatio => bsz.ln_1p() - asz.ln_1p(),
                Feature::Extra(i) => extras[i as usize] as f64,
            };
            // Division, not multiplication by a reciprocal, to match numpy bit for bit.
            *slot = ((x - mean) / std) as f32;
        }
    }
}

#[inline]
fn microprice(bid: f64, ask: f64, bsz: f64, asz: f64, mid: f64) -> f64 {
    let tot = bsz + asz;
    if tot > 0.0 {
        (bid * asz + ask * bsz) / tot
    } else {
        mid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> MlRequest {
        MlRequest {
            bid_price: 1_000_000,
            ask_price: 1_000_200,
            bid_size: 300,
            ask_size: 100,
            book_imbalance: 500_000,
            n_features: 2,
            features: {
                let mut f = [0.0; MAX_FEATURES];
                f[1] = 2.5;
                f
            },
            ..MlRequest::new()
        }
    }

    #[test]
    fn derived_features_by_hand() {
        let names: Vec<String> = ["mid", "spread", "spread_bps", "microprice", "size_imbalance", "extra:1"]
            .map(String::from)
            .to_vec();
        let m = FeatureMap::new(&names, None, None, 10_000).unwrap();
        assert_eq!(m.extras(), 2);
        let mut row = [0f32; 6];
        m.fill(&req(), &mut row);
        let micro = (100.0 * 100.0 + 100.02 * 300.0) / 400.0;
        let want = [100.01, 0.02, 0.02 / 100.01 * 1e4, micro, 0.5, 2.5];
        for (got, want) in row.iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-4, "{row:?} vs {want:?}");
        }
    }

    #[test]
    fn normalisation_and_errors() {
        let names = vec!["mid".to_string()];
        let m = FeatureMap::new(&names, Some(&[100.0]), Some(&[0.01]), 10_000).unwrap();
        let mut row = [0f32];
        m.fill(&req(), &mut row);
        assert!((row[0] - 1.0).abs() < 1e-4, "{row:?}");
        assert!(FeatureMap::new(&names, Some(&[1.0]), None, 1).is_err());
        assert!(FeatureMap::new(&names, Some(&[1.0]), Some(&[0.0]), 1).unwrap_err().contains("std[0]"));
        assert!(FeatureMap::new(&["nope".into()], None, None, 1)
            .unwrap_err()
            .contains("unknown feature `nope`"));
        assert!(FeatureMap::new(&["extra:32".into()], None, None, 1).is_err());
        assert!(FeatureMap::new(&names, None, None, 0).is_err());
    }
}
