//! Request → model input row. Stateless features are a function of one
//! request; stateful ones (`mid_return_bps(n)`, `ofi(n)`, …) read the request's
//! symbol's history kept by [`crate::state`], updated with this request first.
//! `scripts/tickfeatures.py` is the Python twin used at training time; the
//! parity tests hold the two to the same bits.
//!
//! Arithmetic is f64, normalised as `(x - mean) / std` in f64, then cast to f32.

use crate::state::{State, StateSpec, SymbolView};
use crate::wire::{depth_features_for, depth_index, MlRequest, DEPTH_LEVELS, IMBALANCE_SCALE, MAX_FEATURES};

/// Largest window (events) a stateful feature may ask for: bounds the memory per symbol.
pub const MAX_WINDOW: u32 = 1024;

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
    /// `bid_px(k)`: level-k bid in price units; level 1 is `bid_price`, levels 2..5
    /// are `bid_price - distance` from `features[]` (`ML_DEPTH_INDEX(k)`).
    BidPx(u8),
    /// `ask_px(k)`: level-k ask in price units (`ask_price + distance` beyond level 1).
    AskPx(u8),
    /// `bid_sz(k)`: level-k bid size (level 1: `bid_size`).
    BidSz(u8),
    /// `ask_sz(k)`: level-k ask size (level 1: `ask_size`).
    AskSz(u8),
    /// `depth_imbalance(k)`: (Σ bid_sz(1..=k) - Σ ask_sz(1..=k)) / (Σ both); 0 if all are 0.
    DepthImbalance(u8),
    /// `mid_return_bps(n)`: (mid_t - mid_{t-n}) / mid_{t-n} × 10⁴ over this symbol's events; 0 until n earlier events.
    MidReturnBps(u32),
    /// `ofi(n)`: order-flow imbalance (Cont–Kukanov–Stoikov) summed over the last n events, in size units.
    Ofi(u32),
    /// `realized_vol_bps(n)`: sqrt(Σ r²) of the one-event mid returns r (bps) over the last n events.
    RealizedVolBps(u32),
    /// `spread_bps_mean(n)`: mean spread_bps over the last n events (fewer while warming).
    SpreadBpsMean(u32),
    /// `ewma_mid_return_bps(h)`: EWMA of the one-event mid returns (bps), half-life h events.
    /// `acc`: its accumulator in the symbol's state.
    EwmaMidReturnBps { halflife: u32, acc: u8 },
    /// `time_since_last_ms`: ms since this symbol's previous event (by `timestamp_ns`); 0 for its first.
    TimeSinceLastMs,
    /// `event_rate(tau_ms)`: this symbol's events per second, exponentially decayed with time constant tau.
    EventRate { tau_ms: u32, acc: u8 },
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

    /// Stateful feature names, with their parameter.
    pub const STATEFUL: [&'static str; 7] = [
        "mid_return_bps(n)",
        "ofi(n)",
        "realized_vol_bps(n)",
        "spread_bps_mean(n)",
        "ewma_mid_return_bps(halflife)",
        "time_since_last_ms",
        "event_rate(tau_ms)",
    ];

    /// Depth feature names, with their level (1..=5; levels 2.. come from `features[]`).
    pub const DEPTH: [&'static str; 5] =
        ["bid_px(k)", "ask_px(k)", "bid_sz(k)", "ask_sz(k)", "depth_imbalance(k)"];

    /// The deepest book level this feature reads (1 for top of book and non-depth features).
    pub fn depth_level(&self) -> usize {
        match *self {
            Feature::BidPx(k)
            | Feature::AskPx(k)
            | Feature::BidSz(k)
            | Feature::AskSz(k)
            | Feature::DepthImbalance(k) => k as usize,
            _ => 1,
        }
    }

    /// Parse a manifest feature name.
    pub fn parse(name: &str) -> Result<Feature, String> {
        if let Some((func, rest)) = name.split_once('(') {
            let arg =
                rest.strip_suffix(')').ok_or_else(|| format!("feature `{name}`: expected `{func}(N)`"))?;
            let n: u32 = arg
                .trim()
                .parse()
                .map_err(|_| format!("feature `{name}`: the parameter must be a whole number"))?;
            let window = |n: u32| {
                if (1..=MAX_WINDOW).contains(&n) {
                    Ok(n)
                } else {
                    Err(format!("feature `{name}`: the window must be 1..={MAX_WINDOW} events"))
                }
            };
            let level = |n: u32| {
                if (1..=DEPTH_LEVELS as u32).contains(&n) {
                    Ok(n as u8)
                } else {
                    Err(format!("feature `{name}`: the book level must be 1..={DEPTH_LEVELS}"))
                }
            };
            return match func {
                "bid_px" => Ok(Feature::BidPx(level(n)?)),
                "ask_px" => Ok(Feature::AskPx(level(n)?)),
                "bid_sz" => Ok(Feature::BidSz(level(n)?)),
                "ask_sz" => Ok(Feature::AskSz(level(n)?)),
                "depth_imbalance" => Ok(Feature::DepthImbalance(level(n)?)),
                "mid_return_bps" => Ok(Feature::MidReturnBps(window(n)?)),
                "ofi" => Ok(Feature::Ofi(window(n)?)),
                "realized_vol_bps" => Ok(Feature::RealizedVolBps(window(n)?)),
                "spread_bps_mean" => Ok(Feature::SpreadBpsMean(window(n)?)),
                "ewma_mid_return_bps" if n >= 1 => Ok(Feature::EwmaMidReturnBps { halflife: n, acc: 0 }),
                "event_rate" if n >= 1 => Ok(Feature::EventRate { tau_ms: n, acc: 0 }),
                "ewma_mid_return_bps" | "event_rate" => {
                    Err(format!("feature `{name}`: the parameter must be >= 1"))
                }
                _ => Err(format!(
                    "unknown feature `{name}` (stateful: {}; depth: {})",
                    Feature::STATEFUL.join(", "),
                    Feature::DEPTH.join(", ")
                )),
            };
        }
        if name == "time_since_last_ms" {
            return Ok(Feature::TimeSinceLastMs);
        }
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
                    "unknown feature `{name}` (known: {}, extra:<i>; stateful: {}; depth: {})",
                    Feature::NAMES.join(", "),
                    Feature::STATEFUL.join(", "),
                    Feature::DEPTH.join(", ")
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
    /// Whether a feature takes `ln(1 + size)`: both logs are then computed once per row.
    logs: bool,
    /// 1 / price_scale: fixed point → price units.
    inv_price_scale: f64,
    /// 1 / size_scale: fixed point → size units (shares, contracts, coins).
    inv_size_scale: f64,
    /// Extra features the row reads: 1 + the largest `extra:<i>` index, or 0.
    extras: u16,
    /// What the stateful features need kept per symbol (stateless: nothing).
    spec: StateSpec,
}

/// Fixed point → units: `1 / price_scale` and `1 / size_scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scales {
    pub inv_price: f64,
    pub inv_size: f64,
}

impl Scales {
    /// Prices and sizes already in units.
    pub const UNIT: Scales = Scales { inv_price: 1.0, inv_size: 1.0 };
}

impl FeatureMap {
    /// Build from names and optional mean/std (same length as `names`; std > 0).
    pub fn new(
        names: &[String],
        mean: Option<&[f64]>,
        std: Option<&[f64]>,
        price_scale: i64,
    ) -> Result<FeatureMap, String> {
        let mut features = names.iter().map(|n| Feature::parse(n)).collect::<Result<Vec<_>, _>>()?;
        let spec = state_spec(&mut features);
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
        // Depth levels 2..=k occupy features[..ML_DEPTH_FEATURES_FOR(k)]; a model's own
        // extras must lie after them.
        let depth = features.iter().map(Feature::depth_level).max().unwrap_or(1);
        let depth_block = if depth >= 2 { depth_features_for(depth) } else { 0 };
        if let Some(i) = features.iter().find_map(|f| match f {
            Feature::Extra(i) if (*i as usize) < depth_block => Some(*i),
            _ => None,
        }) {
            return Err(format!(
                "feature `extra:{i}` lies inside the book-depth block: levels 2..={depth} take \
                 features[0..{depth_block}] (ML_DEPTH_INDEX); number the model's own extras from {depth_block}"
            ));
        }
        let extras = features
            .iter()
            .filter_map(|f| if let Feature::Extra(i) = f { Some(*i as u16 + 1) } else { None })
            .max()
            .unwrap_or(0)
            .max(depth_block as u16);
        let inv_price_scale = 1.0 / price_scale as f64;
        let logs = features
            .iter()
            .any(|f| matches!(f, Feature::LogBidSize | Feature::LogAskSize | Feature::LogSizeRatio));
        Ok(FeatureMap { features, norm, logs, inv_price_scale, inv_size_scale: 1.0, extras, spec })
    }

    /// Sizes on the wire are fixed point at `size_scale` (a power of ten, `ML_SIZE_SCALE`);
    /// every size feature is then in units (2507 at scale 1000 reads as 2.507).
    pub fn with_size_scale(mut self, size_scale: i64) -> Result<FeatureMap, String> {
        if crate::wire::size_scale_digits(size_scale).is_none() {
            return Err(format!(
                "size_scale must be a power of ten from 1 to 10^{} (sizes in units × size_scale on the \
                 wire), got {size_scale}",
                crate::wire::SIZE_SCALE_MAX_DIGITS
            ));
        }
        self.inv_size_scale = 1.0 / size_scale as f64;
        Ok(self)
    }

    /// Fixed point → units, for prices and sizes, as the state's update uses them.
    pub fn scales(&self) -> Scales {
        Scales { inv_price: self.inv_price_scale, inv_size: self.inv_size_scale }
    }

    /// What the stateful features need kept per symbol.
    pub fn state_spec(&self) -> &StateSpec {
        &self.spec
    }

    /// Whether the rows are normalised (`mean`/`std` in the manifest, not the identity).
    pub fn is_normalised(&self) -> bool {
        self.norm.iter().any(|&(m, s)| m != 0.0 || s != 1.0)
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

    /// Fill `row` (length [`len`](Self::len)) from `req` alone (a stateless map). No allocation.
    #[inline]
    pub fn fill(&self, req: &MlRequest, row: &mut [f32]) {
        debug_assert!(self.spec.is_stateless(), "a stateful map needs the symbol's state: fill_with");
        self.fill_with(req, None, row)
    }

    /// One valid request's row as the scoring stage computes it, in request order: its
    /// symbol's `state` updated with it first (a stateful map; the symbol admitted), then the
    /// row filled. Whether the symbol is still warming. The engine's single-row path and
    /// `tickinfer features` (`crate::dataset`) both call this. No allocation.
    #[inline]
    pub fn fill_next(&self, state: &mut State, req: &MlRequest, row: &mut [f32]) -> bool {
        if state.is_stateless() {
            self.fill_with(req, None, row);
            return false;
        }
        let view = state.update(req, self.scales());
        self.fill_with(req, Some(&view), row);
        view.warming
    }

    /// Fill `row` from `req` and its symbol's state, already updated with `req`
    /// (`State::update`). No allocation.
    #[inline]
    pub fn fill_with(&self, req: &MlRequest, state: Option<&SymbolView>, row: &mut [f32]) {
        debug_assert_eq!(row.len(), self.features.len());
        let bid = req.bid_price as f64 * self.inv_price_scale;
        let ask = req.ask_price as f64 * self.inv_price_scale;
        let inv_size = self.inv_size_scale;
        let bsz = req.bid_size as f64 * inv_size;
        let asz = req.ask_size as f64 * inv_size;
        let mid = (bid + ask) * 0.5;
        let tot = bsz + asz;
        // ln_1p is a libm call: once per row for the three features that take it.
        let (log_bsz, log_asz) = if self.logs { (bsz.ln_1p(), asz.ln_1p()) } else { (0.0, 0.0) };
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
                Feature::LogBidSize => log_bsz,
                Feature::LogAskSize => log_asz,
                Feature::LogSizeRatio => log_bsz - log_asz,
                Feature::Extra(i) => extras[i as usize] as f64,
                Feature::BidPx(k) => bid - depth(&extras, k, 0),
                Feature::AskPx(k) => ask + depth(&extras, k, 2),
                Feature::BidSz(k) => level_size(&extras, k, 1, bsz, inv_size),
                Feature::AskSz(k) => level_size(&extras, k, 3, asz, inv_size),
                Feature::DepthImbalance(k) => {
                    // Level 1 first, then 2..=k, as the twin sums.
                    let (mut b, mut a) = (bsz, asz);
                    for level in 2..=k {
                        b += depth(&extras, level, 1) * inv_size;
                        a += depth(&extras, level, 3) * inv_size;
                    }
                    if b + a > 0.0 {
                        (b - a) / (b + a)
                    } else {
                        0.0
                    }
                }
                stateful => state.map_or(0.0, |v| stateful_value(stateful, v)),
            };
            // Division, not multiplication by a reciprocal, to match numpy bit for bit.
            *slot = ((x - mean) / std) as f32;
        }
    }
}

/// One stateful feature's value from its symbol's view (docs/models-and-backends.md, "Stateful features").
/// Sums run oldest event first, as in the Python twin.
#[inline]
fn stateful_value(feature: Feature, v: &SymbolView) -> f64 {
    match feature {
        Feature::MidReturnBps(n) => match (v.back(0), v.back(n as usize)) {
            (Some(now), Some(then)) => (now.mid - then.mid) / then.mid * 1e4,
            _ => 0.0,
        },
        Feature::Ofi(n) => v.window(n as usize).fold(0.0, |acc, e| acc + e.ofi),
        Feature::RealizedVolBps(n) => {
            v.window(n as usize).fold(0.0, |acc, e| acc + e.ret_bps * e.ret_bps).sqrt()
        }
        Feature::SpreadBpsMean(n) => {
            let (sum, m) = v.window(n as usize).fold((0.0, 0u32), |(acc, m), e| (acc + e.spread_bps, m + 1));
            if m > 0 {
                sum / m as f64
            } else {
                0.0
            }
        }
        Feature::EwmaMidReturnBps { acc, .. } | Feature::EventRate { acc, .. } => v.accum[acc as usize],
        Feature::TimeSinceLastMs => v.dt_ms,
        _ => 0.0,
    }
}

/// The state the stateful features need; numbers each accumulator (EWMAs first,
/// then event rates, in row order) into its feature.
fn state_spec(features: &mut [Feature]) -> StateSpec {
    let mut spec = StateSpec::stateless();
    let (mut capacity, mut history) = (0usize, 0usize);
    let ewmas = features.iter().filter(|f| matches!(f, Feature::EwmaMidReturnBps { .. })).count();
    for f in features.iter_mut() {
        match f {
            Feature::MidReturnBps(n) => {
                capacity = capacity.max(*n as usize + 1);
                history = history.max(*n as usize);
            }
            Feature::Ofi(n) | Feature::RealizedVolBps(n) => {
                capacity = capacity.max(*n as usize);
                history = history.max(*n as usize);
            }
            Feature::SpreadBpsMean(n) => {
                capacity = capacity.max(*n as usize);
                history = history.max(*n as usize - 1);
            }
            Feature::EwmaMidReturnBps { halflife, acc } => {
                *acc = spec.ewma_alphas.len() as u8;
                spec.ewma_alphas.push(1.0 - 0.5f64.powf(1.0 / *halflife as f64));
                history = history.max(*halflife as usize);
            }
            Feature::EventRate { tau_ms, acc } => {
                *acc = (ewmas + spec.rate_taus_s.len()) as u8;
                spec.rate_taus_s.push(*tau_ms as f64 / 1e3);
                history = history.max(1);
            }
            Feature::TimeSinceLastMs => history = history.max(1),
            _ => {}
        }
    }
    spec.capacity = capacity;
    spec.history = history;
    spec
}

/// Field `field` (0 bid distance, 1 bid size, 2 ask distance, 3 ask size) of depth
/// level `k` from `features[]`; 0 for level 1's distances.
#[inline]
fn depth(extras: &[f32; MAX_FEATURES], k: u8, field: usize) -> f64 {
    if k < 2 {
        return 0.0;
    }
    extras[depth_index(k as usize) + field] as f64
}

/// A level's size in units: level 1 from the request's own field (already in units),
/// deeper ones from `features[]` (fixed point like level 1's, × `inv_size`).
#[inline]
fn level_size(extras: &[f32; MAX_FEATURES], k: u8, field: usize, top: f64, inv_size: f64) -> f64 {
    if k < 2 {
        top
    } else {
        depth(extras, k, field) * inv_size
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
    fn sizes_at_a_size_scale_read_in_units() {
        // 2.507 BTC bid, 0.4 BTC ask at size scale 1000; level 2: 1.25 and 0.003.
        let mut r = req();
        (r.bid_size, r.ask_size) = (2507, 400);
        r.set_level(2, 999_900, 1250, 1_000_400, 3, 10_000);
        let names: Vec<String> = [
            "bid_size",
            "ask_size",
            "log_bid_size",
            "bid_sz(2)",
            "ask_sz(2)",
            "size_imbalance",
            "depth_imbalance(2)",
        ]
        .map(String::from)
        .to_vec();
        let m = FeatureMap::new(&names, None, None, 10_000).unwrap().with_size_scale(1000).unwrap();
        let mut row = [0f32; 7];
        m.fill(&r, &mut row);
        let imb2 = ((2.507 + 1.25) - (0.4 + 0.003)) / (2.507 + 1.25 + 0.4 + 0.003);
        let want = [2.507, 0.4, 2.507f64.ln_1p(), 1.25, 0.003, (2.507 - 0.4) / 2.907, imb2];
        for (got, want) in row.iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-6, "{row:?} vs {want:?}");
        }
        for bad in [0, 7, -10, 2000] {
            let e = FeatureMap::new(&names, None, None, 1).unwrap().with_size_scale(bad).unwrap_err();
            assert!(e.contains("power of ten"), "{e}");
        }
    }

    #[test]
    fn depth_levels_by_hand() {
        let mut r = req();
        // Level 2: bid 99.99 × 40, ask 100.04 × 10 (at scale 10 000).
        r.set_level(2, 999_900, 40, 1_000_400, 10, 10_000);
        assert_eq!({ r.n_features }, 4);
        assert_eq!(r.feature(0), 0.01f32);
        let names: Vec<String> = [
            "bid_px(1)",
            "bid_px(2)",
            "ask_px(2)",
            "bid_sz(2)",
            "ask_sz(1)",
            "depth_imbalance(2)",
            "extra:5",
        ]
        .map(String::from)
        .to_vec();
        let m = FeatureMap::new(&names, None, None, 10_000).unwrap();
        assert_eq!(m.extras(), 6, "the model's own extra:5 after the 4-float level-2 block");
        let mut row = [0f32; 7];
        m.fill(&r, &mut row);
        let imb = ((300.0 + 40.0) - (100.0 + 10.0)) / (300.0 + 40.0 + 100.0 + 10.0);
        let want = [100.0, 99.99, 100.04, 40.0, 100.0, imb, 0.0];
        for (got, want) in row.iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-4, "{row:?} vs {want:?}");
        }
        // Level 5 takes features[0..16]; a model extra inside it is refused with the fix.
        let m = FeatureMap::new(&["ask_sz(5)".into()], None, None, 1).unwrap();
        assert_eq!(m.extras(), 16);
        let e = FeatureMap::new(&["bid_px(3)".into(), "extra:7".into()], None, None, 1).unwrap_err();
        assert!(e.contains("features[0..8]") && e.contains("from 8"), "{e}");
        assert!(FeatureMap::new(&["bid_px(6)".into()], None, None, 1).unwrap_err().contains("1..=5"));
        assert!(FeatureMap::new(&["ask_px(0)".into()], None, None, 1).is_err());
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
