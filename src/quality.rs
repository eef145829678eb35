//! Live signal quality: every answer scored against what the market did next.
//!
//! The server sees the outcome of its own signals: a symbol's later requests carry
//! its mid. The scoring stage hands each job to [`Quality::observe`], in the order it
//! scores them (across connections, as the per-symbol state sees them). An answer
//! with status OK waits in its symbol's pending ring — (timestamp, mid, direction,
//! confidence, target) — until the symbol's mid is known at the model's horizon;
//! then it is scored with the label rule the model was trained with ([`LabelRule`],
//! the manifest's `[label]` section), the rule `tickinfer replay`'s offline report
//! uses too:
//!
//! - `horizon_events = k`: the realised mid is the mid of the symbol's k-th later
//!   event (every later request of the symbol with a usable quote counts, whatever
//!   its answer);
//! - `horizon_ms = h`: the mid in force h ms later (the last event of the symbol at
//!   or before t + h, on the requests' own `timestamp_ns`: market time, so a replay and
//!   the live server agree); known once an event after t + h arrives. An answer whose
//!   symbol was not seen again within h is *not seen* (unscored: coverage falls);
//! - both: the k-th later event, if it comes within h; else not seen;
//! - realised direction: the mid's move in bps against the answer's mid; flat when
//!   `|move| <= flat_bps` (`flat_bps = 0`: only an unchanged mid is flat).
//!
//! A manifest without a `[label]` section says so at load, and its answers are counted
//! unscored (`no_label_rule`). Counts: the confusion of predicted × realised direction,
//! hit rate on non-flat calls, macro-F1, IC (Pearson, confidence-signed prediction
//! against the realised return), the target's error in bps (regression models) and the
//! always-majority baseline beside each; since load, and over the last [`WINDOW`] to
//! [`WINDOW`] + [`WINDOW_STEP`] resolved answers (what `tickinfer stats` shows).
//!
//! Memory is allocated when the model is loaded: a symbol table of `max_symbols` slots
//! (as the per-symbol state's), each with a pending ring of `horizon_events` answers
//! (or [`PENDING_PER_MS_HORIZON`] for a horizon in ms alone), and the window's snapshots
//! of the counts. Nothing is allocated per request; every sum is an integer (returns in
//! fixed point, [`RET_SCALE`] per bps), so a window (the counts now minus a snapshot)
//! is exact and replay's offline IC equals the server's to the last bit.

use std::sync::Arc;

use crate::wire::{wide_to_f64, MlRequest, MlResponse, Status};

/// How a model's training labels were made: the `[label]` section of its manifest.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelRule {
    /// The realised mid is the symbol's mid this many same-symbol events later.
    pub horizon_events: Option<u32>,
    /// ... or the mid in force this many ms later (requests' `timestamp_ns`).
    pub horizon_ms: Option<f64>,
    /// A move of at most this many bps (absolute) is flat.
    pub flat_bps: f64,
}

/// The longest horizon in events a manifest may ask for (each symbol keeps that many answers).
pub const MAX_HORIZON_EVENTS: u32 = 4096;
/// The longest horizon in ms a manifest may ask for (a day).
pub const MAX_HORIZON_MS: f64 = 86_400_000.0;
/// Pending answers per symbol for a horizon in ms alone (more within one horizon are
/// counted unscored, `pending_full`).
pub const PENDING_PER_MS_HORIZON: usize = 64;
/// Resolved answers in the rolling window `tickinfer stats` shows (at least; it moves in
/// steps of [`WINDOW_STEP`]: the counts now minus a snapshot taken every step).
pub const WINDOW: usize = 10_000;
/// The window's step, in resolved answers.
pub const WINDOW_STEP: usize = 1_000;
/// Snapshots kept: the window's start and every step since.
const SNAPSHOTS: usize = WINDOW / WINDOW_STEP + 1;
/// Fixed point of returns: units per bps (returns are kept as integers).
pub const RET_SCALE: f64 = 10_000.0;
/// Returns are clamped to ± this many fixed-point units (10⁴ bps: a move of 100 %), so a
/// product of two fits i64 and hostile prices cannot overflow the sums.
const RET_LIMIT: i64 = 100_000_000;

impl LabelRule {
    /// The rule checked: a horizon, in range; a finite flat threshold.
    pub fn checked(self) -> Result<LabelRule, String> {
        if self.horizon_events.is_none() && self.horizon_ms.is_none() {
            return Err("[label] needs horizon_events and/or horizon_ms".into());
        }
        if let Some(k) = self.horizon_events.filter(|k| !(1..=MAX_HORIZON_EVENTS).contains(k)) {
            return Err(format!("[label] horizon_events {k} must be in 1..={MAX_HORIZON_EVENTS}"));
        }
        if let Some(h) = self.horizon_ms.filter(|h| !(h.is_finite() && *h > 0.0 && *h <= MAX_HORIZON_MS)) {
            return Err(format!("[label] horizon_ms {h} must be > 0 and at most {MAX_HORIZON_MS} (a day)"));
        }
        if !(self.flat_bps.is_finite() && self.flat_bps >= 0.0) {
            return Err(format!("[label] flat_bps {} must be finite and >= 0", self.flat_bps));
        }
        Ok(self)
    }

    /// The horizon in ns, if the rule has one in ms.
    pub fn horizon_ns(&self) -> Option<u64> {
        self.horizon_ms.map(|h| (h * 1e6).round() as u64)
    }

    /// Realised direction and return (fixed point, [`RET_SCALE`] per bps) of a move
    /// from `mid2_then` to `mid2_now` (both bid + ask).
    #[inline]
    pub fn realised(&self, mid2_then: i128, mid2_now: i128) -> (i8, i64) {
        let (bps, fixed) = return_of(mid2_then, mid2_now);
        let direction = if mid2_now == mid2_then || bps.abs() <= self.flat_bps {
            0
        } else if mid2_now > mid2_then {
            1
        } else {
            -1
        };
        (direction, fixed)
    }

    /// `mid 10 same-symbol events later, flat within 0 bps`.
    pub fn describe(&self) -> String {
        let horizon = match (self.horizon_events, self.horizon_ms) {
            (Some(k), Some(h)) => format!("mid {k} same-symbol events later if within {h} ms"),
            (Some(k), None) => format!("mid {k} same-symbol events later"),
            (None, Some(h)) => format!("mid in force {h} ms later"),
            (None, None) => "no horizon".into(),
        };
        format!("{horizon}, flat within {} bps", self.flat_bps)
    }
}

/// The move from `mid2_then` to `mid2_now` in bps, and in fixed point (clamped).
#[inline]
fn return_of(mid2_then: i128, mid2_now: i128) -> (f64, i64) {
    // The difference first, in i128: an unchanged mid is exactly 0, whatever the price.
    let bps = wide_to_f64(mid2_now - mid2_then) / wide_to_f64(mid2_then) * 1e4;
    // Rounded half away from zero by hand: `f64::round` is a libm call on baseline x86-64.
    let v = (bps * RET_SCALE).clamp(-RET_LIMIT as f64, RET_LIMIT as f64);
    (bps, (v + 0.5f64.copysign(v)) as i64) // NaN (never: mid2_then > 0) would give 0
}

/// Why an answer with status OK was not scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unscored {
    /// The model's manifest has no `[label]` section.
    NoLabelRule = 0,
    /// Its symbol was not seen again (k times) within the horizon in ms.
    NotSeen = 1,
    /// Every symbol slot was taken (`--max-symbols`).
    NoSlot = 2,
    /// Its symbol's pending ring was full (a horizon in ms alone, a burst of answers).
    PendingFull = 3,
}

impl Unscored {
    pub const COUNT: usize = 4;
    pub const ALL: [Unscored; Self::COUNT] =
        [Unscored::NoLabelRule, Unscored::NotSeen, Unscored::NoSlot, Unscored::PendingFull];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Unscored::NoLabelRule => "no_label_rule",
            Unscored::NotSeen => "not_seen",
            Unscored::NoSlot => "no_slot",
            Unscored::PendingFull => "pending_full",
        }
    }
}

/// Directions as the metric labels name them, by `direction + 1`.
pub const DIRECTIONS: [&str; 3] = ["sell", "flat", "buy"];

/// Counts of `[realised + 1][predicted + 1]` (as replay's report keeps them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Confusion(pub [[u64; 3]; 3]);

impl Confusion {
    pub fn total(&self) -> u64 {
        self.0.iter().flatten().sum()
    }

    /// Accuracy and macro-F1 (over the classes present in truth or prediction, as
    /// scikit-learn does).
    pub fn accuracy_and_macro_f1(&self) -> (f64, f64) {
        let c = &self.0;
        let total = self.total();
        if total == 0 {
            return (0.0, 0.0);
        }
        let acc = (0..3).map(|k| c[k][k]).sum::<u64>() as f64 / total as f64;
        let (mut sum, mut classes) = (0.0, 0);
        for (k, row) in c.iter().enumerate() {
            let tp = row[k] as f64;
            let fp = (0..3).filter(|&t| t != k).map(|t| c[t][k]).sum::<u64>() as f64;
            let fneg = (0..3).filter(|&p| p != k).map(|p| row[p]).sum::<u64>() as f64;
            if tp + fp + fneg == 0.0 {
                continue; // class absent from both
            }
            sum += if tp == 0.0 { 0.0 } else { 2.0 * tp / (2.0 * tp + fp + fneg) };
            classes += 1;
        }
        (acc, sum / classes.max(1) as f64)
    }

    /// Of the calls that were not flat, the share whose realised direction was the call's.
    pub fn hit_rate(&self) -> Option<f64> {
        let c = &self.0;
        let calls: u64 = (0..3).map(|t| c[t][0] + c[t][2]).sum();
        (calls > 0).then(|| (c[0][0] + c[2][2]) as f64 / calls as f64)
    }

    /// Realised counts by direction + 1.
    pub fn realised(&self) -> [u64; 3] {
        [0, 1, 2].map(|t| self.0[t].iter().sum())
    }

    /// Predicted counts by direction + 1.
    pub fn predicted(&self) -> [u64; 3] {
        [0, 1, 2].map(|p| (0..3).map(|t| self.0[t][p]).sum())
    }

    /// The most frequent realised direction (the first on ties, sell before flat before buy).
    pub fn majority(&self) -> i8 {
        let r = self.realised();
        let mut m = 0;
        for k in 1..3 {
            if r[k] > r[m] {
                m = k;
            }
        }
        m as i8 - 1
    }

    /// What always calling `direction` would have scored on the same outcomes.
    pub fn always(&self, direction: i8) -> Confusion {
        let mut c = [[0u64; 3]; 3];
        for (row, n) in c.iter_mut().zip(self.realised()) {
            row[(direction + 1) as usize] = n;
        }
        Confusion(c)
    }
}

/// Sums for the Pearson IC of x = direction × confidence against y = realised return
/// (fixed point): exact integers, so a window (now minus a snapshot) is exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Moments {
    pub n: u64,
    /// Σx and Σx² (|x| <= 100: i64 holds 10¹⁴ answers of them).
    pub sx: i64,
    pub sxx: i64,
    pub sy: i128,
    pub syy: i128,
    pub sxy: i128,
}

impl Moments {
    /// |x| <= 100 and |y| <= [`RET_LIMIT`]: every product fits i64.
    #[inline]
    fn add(&mut self, x: i64, y: i64) {
        self.n += 1;
        self.sx += x;
        self.sxx += x * x;
        self.sy += y as i128;
        self.syy += (y * y) as i128;
        self.sxy += (x * y) as i128;
    }

    fn minus(&self, base: &Moments) -> Moments {
        Moments {
            n: self.n - base.n,
            sx: self.sx - base.sx,
            sy: self.sy - base.sy,
            sxx: self.sxx - base.sxx,
            syy: self.syy - base.syy,
            sxy: self.sxy - base.sxy,
        }
    }

    /// Pearson correlation; `None` with fewer than two points or no variance on a side.
    pub fn pearson(&self) -> Option<f64> {
        let n = self.n as f64;
        if self.n < 2 {
            return None;
        }
        let (sx, sy) = (self.sx as f64, self.sy as f64);
        let cov = self.sxy as f64 - sx * sy / n;
        let vx = self.sxx as f64 - sx * sx / n;
        let vy = self.syy as f64 - sy * sy / n;
        (vx > 0.0 && vy > 0.0).then(|| cov / (vx * vy).sqrt())
    }
}

/// Error of the predicted return (target price against the answer's mid) against the
/// realised one, fixed point, kept as its excess over the no-change baseline's (target =
/// mid): a classifier (whose target is the mid) adds nothing there. The baseline's
/// absolute error is Σ|y|; its squared error Σy² is [`Moments::syy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Errors {
    /// Σ|y|: the baseline's absolute error.
    pub baseline_abs: i128,
    /// Σ(|e| − |y|) and Σ(e² − y²), e = predicted − y.
    pub abs_excess: i128,
    pub sq_excess: i128,
}

impl Errors {
    /// Both within ±[`RET_LIMIT`]: their difference and its square fit i64.
    #[inline]
    fn add(&mut self, predicted: i64, realised: i64) {
        let r = realised.abs();
        self.baseline_abs += r as i128;
        if predicted != 0 {
            let e = predicted - realised;
            self.abs_excess += (e.abs() - r) as i128;
            self.sq_excess += (e * e - realised * realised) as i128;
        }
    }

    fn minus(&self, base: &Errors) -> Errors {
        Errors {
            baseline_abs: self.baseline_abs - base.baseline_abs,
            abs_excess: self.abs_excess - base.abs_excess,
            sq_excess: self.sq_excess - base.sq_excess,
        }
    }
}

/// One resolved answer: scored against its realised move, or unscored and why (what a
/// window keeps; replay's report counts the same).
#[derive(Clone, Copy, Debug, Default)]
pub struct Resolved {
    /// Realised direction; `None`: unscored, for `why`.
    realised: Option<i8>,
    predicted: i8,
    why: u8,
    /// direction × confidence.
    x: i8,
    /// Realised return and the target's return, fixed point.
    y: i64,
    predicted_ret: i64,
}

impl Resolved {
    /// An answer (direction, confidence, target price) given at mid `mid2_then` (bid + ask),
    /// scored against `mid2_now` with `rule`.
    #[inline(always)]
    pub fn scored(
        rule: &LabelRule,
        mid2_then: i128,
        (direction, confidence, target_price): (i8, u8, i64),
        mid2_now: i128,
    ) -> Resolved {
        let (realised, y) = rule.realised(mid2_then, mid2_now);
        let direction = direction.clamp(-1, 1);
        Resolved {
            realised: Some(realised),
            predicted: direction,
            why: 0,
            x: (direction as i16 * confidence.min(100) as i16) as i8,
            y,
            // A classifier's target is the mid: no division for it.
            predicted_ret: if 2 * target_price as i128 == mid2_then {
                0
            } else {
                return_of(mid2_then, 2 * target_price as i128).1
            },
        }
    }

    /// An answer never scored, for `why`.
    pub fn unscored(why: Unscored) -> Resolved {
        Resolved { why: why as u8, ..Resolved::default() }
    }
}

/// Counts over a set of resolved answers (since load, or the window).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub outcomes: Confusion,
    pub unscored: [u64; Unscored::COUNT],
    pub moments: Moments,
    pub errors: Errors,
}

impl Counts {
    /// One resolved answer more.
    #[inline(always)]
    pub fn add(&mut self, r: &Resolved) {
        match r.realised {
            Some(t) => {
                self.outcomes.0[(t + 1) as usize][(r.predicted + 1) as usize] += 1;
                self.moments.add(r.x as i64, r.y);
                self.errors.add(r.predicted_ret, r.y);
            }
            None => self.unscored[r.why as usize] += 1,
        }
    }

    /// What these counts hold beyond `base` (an earlier snapshot of them).
    pub fn minus(&self, base: &Counts) -> Counts {
        let mut outcomes = self.outcomes;
        for (a, b) in outcomes.0.iter_mut().flatten().zip(base.outcomes.0.iter().flatten()) {
            *a -= b;
        }
        let mut unscored = self.unscored;
        for (a, b) in unscored.iter_mut().zip(base.unscored) {
            *a -= b;
        }
        Counts {
            outcomes,
            unscored,
            moments: self.moments.minus(&base.moments),
            errors: self.errors.minus(&base.errors),
        }
    }

    /// Answers resolved (scored or not).
    pub fn resolved(&self) -> u64 {
        self.scored() + self.unscored.iter().sum::<u64>()
    }

    pub fn scored(&self) -> u64 {
        self.outcomes.total()
    }

    /// The scores these counts give.
    pub fn scores(&self) -> Scores {
        let scored = self.scored();
        let unscored: u64 = self.unscored.iter().sum();
        let (accuracy, macro_f1) = self.outcomes.accuracy_and_macro_f1();
        let majority = self.outcomes.majority();
        let always = self.outcomes.always(majority);
        let (majority_accuracy, majority_macro_f1) = always.accuracy_and_macro_f1();
        let per = |v: i128| (scored > 0).then(|| v as f64 / scored as f64 / RET_SCALE);
        let rms = |v: i128| (scored > 0).then(|| (v as f64 / scored as f64).sqrt() / RET_SCALE);
        Scores {
            scored,
            unscored,
            coverage: (scored + unscored > 0).then(|| scored as f64 / (scored + unscored) as f64),
            accuracy,
            macro_f1,
            hit_rate: self.outcomes.hit_rate(),
            ic: self.moments.pearson(),
            majority: DIRECTIONS[(majority + 1) as usize].to_string(),
            majority_accuracy,
            majority_macro_f1,
            majority_hit_rate: always.hit_rate(),
            target_mae_bps: per(self.errors.baseline_abs + self.errors.abs_excess),
            target_rmse_bps: rms(self.moments.syy + self.errors.sq_excess),
            baseline_mae_bps: per(self.errors.baseline_abs),
            baseline_rmse_bps: rms(self.moments.syy),
        }
    }
}

/// Scores of a set of resolved answers, the always-majority baseline beside them.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scores {
    pub scored: u64,
    pub unscored: u64,
    /// scored / (scored + unscored).
    pub coverage: Option<f64>,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Share of non-flat calls whose direction came true.
    pub hit_rate: Option<f64>,
    /// Pearson correlation of direction × confidence with the realised return.
    pub ic: Option<f64>,
    /// The most frequent realised direction, and always calling it.
    pub majority: String,
    pub majority_accuracy: f64,
    pub majority_macro_f1: f64,
    pub majority_hit_rate: Option<f64>,
    /// Mean absolute and RMS error of the target's return against the realised one, bps;
    /// the no-change baseline (target = mid) beside them.
    pub target_mae_bps: Option<f64>,
    pub target_rmse_bps: Option<f64>,
    pub baseline_mae_bps: Option<f64>,
    pub baseline_rmse_bps: Option<f64>,
}

/// The serving model as quality counts it: what the counts are of.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// Bumped by every reload: a tally of another generation starts afresh.
    pub generation: u64,
    pub model: String,
    pub rule: Option<LabelRule>,
    pub reference_macro_f1: Option<f64>,
    /// A regression model (its target error is meaningful).
    pub regression: bool,
}

/// The quality counts of one scoring thread, in its [`crate::stats::Stats`]: cumulative
/// since the model was loaded (the counters), and the last [`WINDOW`] resolved answers.
/// The scoring thread updates it in place; the shared copy takes it whole when it is
/// newer (one scoring thread exists), so publishing never adds a count twice.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Updates made; the shared copy takes a tally whose `seq` is higher than its own.
    seq: u64,
    /// The identity's generation (0: none yet), read on the hot path without the `Arc`.
    generation: u64,
    /// `seq` at the last publication (nothing new to publish while equal).
    published: u64,
    /// What is counted; `None` until the scoring thread's first answer.
    pub identity: Option<Arc<Identity>>,
    /// Answers with status OK seen (= scored + unscored + pending).
    pub answers: u64,
    /// Since load.
    pub total: Counts,
    /// `total` when the window starts: the window is `total - window_base`.
    pub window_base: Counts,
    /// Answers waiting for their horizon (gauge).
    pub pending: u64,
}

impl Tally {
    /// Take `other` when it is newer (a scoring thread's tally into the shared copy).
    pub fn merge(&mut self, other: &Tally) {
        if other.seq > self.seq {
            self.clone_from(other);
        }
    }

    /// This tally takes the place of `before` in a scoring thread's stats (a promoted
    /// shadow's counts, with the `Quality` they belong to): numbered after it, so the shared
    /// copy, which took `before`, takes this one.
    pub fn succeed(&mut self, before: &Tally) {
        self.seq = self.seq.max(before.seq) + 1;
        self.published = 0;
    }

    /// Published: nothing new until the next update.
    pub fn mark_published(&mut self) {
        self.published = self.seq;
    }

    /// Something changed since the last publication.
    pub fn unpublished(&self) -> bool {
        self.seq != self.published
    }

    fn restart(&mut self, identity: &Arc<Identity>) {
        *self = Tally {
            seq: self.seq,
            published: self.published,
            generation: identity.generation,
            identity: Some(identity.clone()),
            ..Default::default()
        };
    }

    /// The counts of the last [`WINDOW`] (to [`WINDOW`] + [`WINDOW_STEP`]) resolved answers.
    pub fn window(&self) -> Counts {
        self.total.minus(&self.window_base)
    }

    /// What `tickinfer stats` shows.
    pub fn report(&self) -> Option<QualityReport> {
        let id = self.identity.as_ref()?;
        Some(QualityReport {
            model: id.model.clone(),
            rule: id.rule,
            reference_macro_f1: id.reference_macro_f1,
            regression: id.regression,
            answers: self.answers,
            pending: self.pending,
            unscored: Unscored::ALL
                .iter()
                .map(|&u| (u.as_str().to_string(), self.total.unscored[u as usize]))
                .collect(),
            outcomes: self.total.outcomes,
            since_load: self.total.scores(),
            last: self.window().scores(),
        })
    }
}

/// Live signal quality in `tickinfer stats`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QualityReport {
    pub model: String,
    /// `None`: the manifest has no `[label]` section; nothing is scored.
    pub rule: Option<LabelRule>,
    pub reference_macro_f1: Option<f64>,
    pub regression: bool,
    /// Answers with status OK seen since the model was loaded.
    pub answers: u64,
    pub pending: u64,
    pub unscored: std::collections::BTreeMap<String, u64>,
    /// Since load, `[realised + 1][predicted + 1]`.
    pub outcomes: Confusion,
    pub since_load: Scores,
    /// Over the last 10 000 to 11 000 resolved answers (`scored + unscored` says how many).
    pub last: Scores,
}

impl std::fmt::Display for QualityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(rule) = &self.rule else {
            return write!(
                f,
                "signal quality of {}: not scored (its manifest has no [label] section: horizon and flat_bps); \
                 {} answers",
                self.model, self.answers
            );
        };
        let reference =
            self.reference_macro_f1.map_or(String::new(), |r| format!("; reference macro-F1 {r}"));
        writeln!(f, "signal quality of {}: realised = {}{reference}", self.model, rule.describe())?;
        let unscored: Vec<String> =
            self.unscored.iter().filter(|(_, &n)| n > 0).map(|(why, n)| format!("{why} {n}")).collect();
        writeln!(
            f,
            "  answers {}, scored {}, pending {}, unscored {}{}",
            self.answers,
            self.since_load.scored,
            self.pending,
            self.since_load.unscored,
            if unscored.is_empty() { String::new() } else { format!(" ({})", unscored.join(", ")) }
        )?;
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        write!(
            f,
            "  {:<14} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} | always-majority: {:>8} {:>8}",
            "", "scored", "coverage", "macro-F1", "hit rate", "IC", "accuracy", "macro-F1", "hit rate"
        )?;
        for (name, s) in [
            (format!("last {}", self.last.scored + self.last.unscored), &self.last),
            ("since load".to_string(), &self.since_load),
        ] {
            write!(
                f,
                "\n  {name:<14} {:>8} {:>8} {:>8.3} {:>8} {:>8} {:>8.3} | {:<4} {:>11.3} {:>8}",
                s.scored,
                opt(s.coverage),
                s.macro_f1,
                opt(s.hit_rate),
                opt(s.ic),
                s.accuracy,
                s.majority,
                s.majority_macro_f1,
                opt(s.majority_hit_rate)
            )?;
        }
        if self.regression {
            let s = &self.last;
            write!(
                f,
                "\n  target error, last {}: MAE {} bps, RMSE {} bps (no change: MAE {} bps, RMSE {} bps)",
                s.scored,
                opt(s.target_mae_bps),
                opt(s.target_rmse_bps),
                opt(s.baseline_mae_bps),
                opt(s.baseline_rmse_bps)
            )?;
        }
        Ok(())
    }
}

/// One tally in the metrics: its counts, the model to name when it has seen no answer yet,
/// and its role (`primary`, or `shadow`: `crate::shadow`).
pub struct Exposed<'a> {
    pub tally: &'a Tally,
    pub serving: Option<&'a str>,
    pub role: &'a str,
}

/// The Prometheus exposition of the tallies: one HELP/TYPE per metric, one series per tally
/// (labels `model` and `role`).
pub fn write_prometheus(out: &mut String, tallies: &[Exposed<'_>]) {
    use std::fmt::Write as _;
    // (labels, tally, identity)
    let rows: Vec<(String, &Tally, Option<&Identity>)> = tallies
        .iter()
        .filter_map(|e| {
            let (model, id) = match (&e.tally.identity, e.serving) {
                (Some(id), _) => (id.model.as_str(), Some(id.as_ref())),
                (None, Some(m)) => (m, None),
                (None, None) => return None,
            };
            let model = model.replace(['"', '\\', '\n'], "_");
            Some((format!("model=\"{model}\",role=\"{}\"", e.role), e.tally, id))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let metric =
        |out: &mut String, name: &str, kind: &str, help: &str, line: &dyn Fn(&str, &Tally) -> String| {
            let _ = writeln!(out, "# HELP tickinfer_{name} {help}\n# TYPE tickinfer_{name} {kind}");
            for (labels, tally, _) in &rows {
                let _ = writeln!(out, "{}", line(labels, tally));
            }
        };
    metric(
        out,
        "signal_answers_total",
        "counter",
        "Answers with status ok seen by signal quality (scored + unscored + pending).",
        &|l, t| format!("tickinfer_signal_answers_total{{{l}}} {}", t.answers),
    );
    metric(
        out,
        "signal_outcomes_total",
        "counter",
        "Scored answers by predicted and realised direction (the model's label rule).",
        &|l, t| {
            let mut lines = Vec::new();
            for (p, predicted) in DIRECTIONS.iter().enumerate() {
                for (r, realised) in DIRECTIONS.iter().enumerate() {
                    lines.push(format!(
                        "tickinfer_signal_outcomes_total{{{l},predicted=\"{predicted}\",realised=\"{realised}\"}} {}",
                        t.total.outcomes.0[r][p]
                    ));
                }
            }
            lines.join("\n")
        },
    );
    metric(out, "signal_scored_total", "counter", "Answers scored against the realised move.", &|l, t| {
        format!("tickinfer_signal_scored_total{{{l}}} {}", t.total.scored())
    });
    metric(
        out,
        "signal_unscored_total",
        "counter",
        "Answers never scored, by why: no_label_rule (the manifest has no [label]), not_seen (the symbol not seen \
         again within the horizon), no_slot (--max-symbols), pending_full.",
        &|l, t| {
            Unscored::ALL
                .iter()
                .map(|&u| {
                    format!(
                        "tickinfer_signal_unscored_total{{{l},reason=\"{}\"}} {}",
                        u.as_str(),
                        t.total.unscored[u as usize]
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    metric(
        out,
        "signal_pending",
        "gauge",
        "Answers waiting for their symbol's mid at the horizon.",
        &|l, t| format!("tickinfer_signal_pending{{{l}}} {}", t.pending),
    );
    let s = RET_SCALE;
    metric(
        out,
        "signal_ic_state",
        "gauge",
        "Sums for the IC since load: x = direction x confidence, y = realised return in bps (a window's IC from \
         delta() of each).",
        &|l, t| {
            let m = &t.total.moments;
            [
                ("n", m.n as f64),
                ("x", m.sx as f64),
                ("y", m.sy as f64 / s),
                ("xx", m.sxx as f64),
                ("yy", m.syy as f64 / (s * s)),
                ("xy", m.sxy as f64 / s),
            ]
            .iter()
            .map(|(term, v)| format!("tickinfer_signal_ic_state{{{l},sum=\"{term}\"}} {v}"))
            .collect::<Vec<_>>()
            .join("\n")
        },
    );
    metric(
        out,
        "signal_ic",
        "gauge",
        "Pearson IC since load (direction x confidence against the realised return; NaN before two scores).",
        &|l, t| format!("tickinfer_signal_ic{{{l}}} {}", t.total.moments.pearson().unwrap_or(f64::NAN)),
    );
    metric(
        out,
        "signal_target_abs_error_bps_total",
        "counter",
        "Absolute error of the target's return against the realised one, bps, summed over scored answers: the \
         model's, and the no-change baseline's (target = mid).",
        &|l, t| {
            let e = &t.total.errors;
            format!(
                "tickinfer_signal_target_abs_error_bps_total{{{l},of=\"model\"}} {}\n\
                 tickinfer_signal_target_abs_error_bps_total{{{l},of=\"no_change\"}} {}",
                (e.baseline_abs + e.abs_excess) as f64 / s,
                e.baseline_abs as f64 / s
            )
        },
    );
    let labelled: Vec<_> = rows.iter().filter_map(|(l, _, id)| Some((l, (*id)?.rule?))).collect();
    if !labelled.is_empty() {
        let _ = writeln!(
            out,
            "# HELP tickinfer_signal_label_info The model's label rule (its manifest's [label]).\n\
             # TYPE tickinfer_signal_label_info gauge"
        );
        for (l, rule) in labelled {
            let _ = writeln!(
                out,
                "tickinfer_signal_label_info{{{l},horizon_events=\"{}\",horizon_ms=\"{}\",flat_bps=\"{}\"}} 1",
                rule.horizon_events.map_or(String::new(), |k| k.to_string()),
                rule.horizon_ms.map_or(String::new(), |h| h.to_string()),
                rule.flat_bps
            );
        }
    }
    let references: Vec<_> =
        rows.iter().filter_map(|(l, _, id)| Some((l, (*id)?.reference_macro_f1?))).collect();
    if !references.is_empty() {
        let _ = writeln!(
            out,
            "# HELP tickinfer_signal_reference_macro_f1 The model's test-set macro-F1, from its manifest (the training \
             script's).\n# TYPE tickinfer_signal_reference_macro_f1 gauge"
        );
        for (l, r) in references {
            let _ = writeln!(out, "tickinfer_signal_reference_macro_f1{{{l}}} {r}");
        }
    }
}

/// One answer waiting for its horizon.
#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    /// Its symbol's event number (see [`Head::events`]).
    event: u64,
    ts_ns: u64,
    mid2: i128,
    target_price: i64,
    direction: i8,
    confidence: u8,
}

/// A symbol's slot: its last quote and its pending ring.
#[derive(Clone, Copy, Debug, Default)]
struct Head {
    /// Events of the symbol seen (with a usable quote).
    events: u64,
    last_mid2: i128,
    /// Ring position of the oldest pending answer, and how many there are.
    first: u32,
    len: u32,
}

/// A new model's generation: unique in the process, so a tally never takes another model's
/// counts for its own (a reload, or a shadow promoted with its own `Quality`). Relaxed: a
/// counter, nothing published through it.
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Marks a symbol with no slot in [`Quality::index`].
const NO_SLOT: u32 = u32::MAX;

/// The scoring thread's signal quality: pending answers per symbol, scored at the horizon.
pub struct Quality {
    identity: Arc<Identity>,
    /// `identity.generation`, read on the hot path without the `Arc`.
    generation: u64,
    rule: Option<LabelRule>,
    /// `rule`'s horizon in ns (`u64::MAX`: events only, never expires).
    horizon_ns: u64,
    /// `rule`'s horizon in events (`u64::MAX`: ms only, never reached).
    horizon_events: u64,
    /// symbol_id → slot; [`NO_SLOT`] when the symbol has none. Empty when there is no rule.
    index: Vec<u32>,
    /// Slot heads; `len()` is the slots in use, capacity `max_symbols` (never grows).
    heads: Vec<Head>,
    /// Pending rings, `cap` per slot, allocated for all `max_symbols` up front.
    pending: Vec<Pending>,
    cap: usize,
    max_symbols: usize,
    /// Snapshots of the counts every [`WINDOW_STEP`] resolved answers (a ring; the first is
    /// the empty start): where the window starts.
    snapshots: Vec<Counts>,
    /// Answers resolved since load.
    resolved: u64,
    pending_total: u64,
}

impl Quality {
    /// For the model of `manifest` (its `[label]`), `max_symbols` slots, allocated now.
    pub fn new(manifest: &crate::manifest::Manifest, max_symbols: usize) -> Quality {
        Quality::with_generation(manifest, max_symbols, next_generation())
    }

    fn with_generation(manifest: &crate::manifest::Manifest, max_symbols: usize, generation: u64) -> Quality {
        let label = manifest.label.as_ref();
        let rule = label.map(|l| l.rule);
        let identity = Arc::new(Identity {
            generation,
            model: manifest.name.clone(),
            rule,
            reference_macro_f1: label.and_then(|l| l.reference_macro_f1),
            regression: matches!(manifest.output, crate::manifest::OutputSpec::Regression { .. }),
        });
        let cap = match rule {
            None => 0,
            Some(r) => r.horizon_events.map_or(PENDING_PER_MS_HORIZON, |k| k as usize),
        };
        match &rule {
            None => log::info!(
                "signal quality: {} has no [label] section in its manifest (horizon and flat_bps): its answers \
                 are not scored",
                manifest.name
            ),
            Some(r) => log::info!(
                "signal quality: answers scored against the {}; {} symbols x {} pending answers = {:.1} MiB, allocated",
                r.describe(),
                max_symbols,
                cap,
                (max_symbols * cap * std::mem::size_of::<Pending>()) as f64 / (1 << 20) as f64
            ),
        }
        let tracked = rule.is_some();
        Quality {
            generation,
            identity,
            horizon_ns: rule.and_then(|r| r.horizon_ns()).unwrap_or(u64::MAX),
            horizon_events: rule.and_then(|r| r.horizon_events).map_or(u64::MAX, u64::from),
            rule,
            index: if tracked { vec![NO_SLOT; 1 << 16] } else { vec![] },
            heads: Vec::with_capacity(if tracked { max_symbols } else { 0 }),
            pending: vec![Pending::default(); if tracked { max_symbols * cap } else { 0 }],
            cap,
            max_symbols,
            snapshots: if tracked { vec![Counts::default(); SNAPSHOTS] } else { vec![] },
            resolved: 0,
            pending_total: 0,
        }
    }

    /// A reloaded model: counts start afresh for it (the old model's pending answers are
    /// dropped). Allocates, once per reload, on the scoring thread.
    pub fn reload(&mut self, manifest: &crate::manifest::Manifest) {
        *self = Quality::with_generation(manifest, self.max_symbols, next_generation());
    }

    /// One job the scoring stage answered with `resp`, in the stage's order. No allocation.
    #[inline]
    pub fn observe(&mut self, req: &MlRequest, resp: &MlResponse, tally: &mut Tally) {
        if tally.generation != self.generation {
            tally.restart(&self.identity);
        }
        let answered = resp.status == Status::Ok.code();
        let (bid, ask) = (req.bid_price, req.ask_price);
        // A usable quote (what the transport's price checks pass) is a market event of its symbol.
        let quoted = bid > 0 && ask > bid;
        debug_assert!(!answered || quoted, "an ok answer passed the price checks");
        let Some(rule) = self.rule else {
            if answered {
                tally.seq += 1;
                tally.answers += 1;
                tally.total.unscored[Unscored::NoLabelRule as usize] += 1;
            }
            return;
        };
        if !quoted {
            return;
        }
        tally.seq += 1;
        if answered {
            tally.answers += 1;
        }
        let Some(slot) = self.slot(req.symbol_id) else {
            if answered {
                self.resolve(tally, Resolved::unscored(Unscored::NoSlot));
            }
            return;
        };
        let mid2 = bid as i128 + ask as i128;
        let ts = req.timestamp_ns;
        let ring = slot * self.cap;
        // This event resolves the symbol's oldest answers whose horizon it reaches.
        loop {
            let Head { events, last_mid2, first, len } = self.heads[slot];
            if len == 0 {
                break;
            }
            let p = &self.pending[ring + first as usize];
            let expired = ts > p.ts_ns.saturating_add(self.horizon_ns);
            let reached = events + 1 - p.event >= self.horizon_events;
            if !(expired || reached) {
                break;
            }
            // The realised mid: this event's (the k-th), or the one in force at the horizon
            // (the previous event, when there was one after the answer's own).
            let realised_mid = match (expired, rule.horizon_events) {
                (false, _) => Some(mid2),
                (true, None) if events > p.event => Some(last_mid2),
                (true, _) => None,
            };
            let resolved = match realised_mid {
                Some(now) => {
                    Resolved::scored(&rule, p.mid2, (p.direction, p.confidence, p.target_price), now)
                }
                None => Resolved::unscored(Unscored::NotSeen),
            };
            let h = &mut self.heads[slot];
            // Ring arithmetic without a division: first < cap.
            h.first = if first as usize + 1 == self.cap { 0 } else { first + 1 };
            h.len = len - 1;
            self.pending_total -= 1;
            self.resolve(tally, resolved);
        }
        let h = &mut self.heads[slot];
        h.events += 1;
        h.last_mid2 = mid2;
        if answered {
            if (h.len as usize) < self.cap {
                let end = h.first as usize + h.len as usize; // < 2 × cap
                let at = slot * self.cap + if end >= self.cap { end - self.cap } else { end };
                self.pending[at] = Pending {
                    event: h.events,
                    ts_ns: ts,
                    mid2,
                    target_price: resp.target_price,
                    direction: resp.direction,
                    confidence: resp.confidence,
                };
                h.len += 1;
                self.pending_total += 1;
            } else {
                self.resolve(tally, Resolved::unscored(Unscored::PendingFull));
            }
        }
        tally.pending = self.pending_total;
        debug_assert_eq!(
            tally.answers,
            tally.total.scored() + tally.total.unscored.iter().sum::<u64>() + tally.pending,
            "every answer is scored, unscored or pending"
        );
    }

    /// The symbol's slot, taking a free one for a new symbol; `None` when none is left.
    #[inline]
    fn slot(&mut self, symbol: u16) -> Option<usize> {
        let s = self.index[symbol as usize];
        if s != NO_SLOT {
            return Some(s as usize);
        }
        if self.heads.len() == self.max_symbols {
            return None;
        }
        self.index[symbol as usize] = self.heads.len() as u32;
        self.heads.push(Head::default());
        debug_assert!(self.heads.len() <= self.heads.capacity(), "the slot table never grows");
        Some(self.heads.len() - 1)
    }

    /// Count a resolved answer; every [`WINDOW_STEP`], move the window ([`Quality::step`]).
    #[inline(always)]
    fn resolve(&mut self, tally: &mut Tally, r: Resolved) {
        tally.total.add(&r);
        self.resolved += 1;
        if self.resolved % WINDOW_STEP as u64 == 0 {
            self.step(tally);
        }
    }

    /// Snapshot the counts and move the window's start to the snapshot [`WINDOW`] answers
    /// back (copies, no allocation; once per [`WINDOW_STEP`] resolved answers).
    #[cold]
    #[inline(never)]
    fn step(&mut self, tally: &mut Tally) {
        let step = (self.resolved / WINDOW_STEP as u64) as usize;
        self.snapshots[step % SNAPSHOTS] = tally.total;
        if let Some(start) = step.checked_sub(WINDOW / WINDOW_STEP) {
            tally.window_base = self.snapshots[start % SNAPSHOTS];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn manifest(label: &str) -> Manifest {
        let text = format!(
            "[model]\nname = \"m\"\nversion = 1\nonnx = \"m.onnx\"\nprice_scale = 10000\n{label}\n\
             [input]\nname = \"x\"\nfeatures = [\"spread_bps\"]\n\
             [output]\nkind = \"classes\"\nname = \"p\"\nclasses = [\"sell\", \"flat\", \"buy\"]\n"
        );
        Manifest::parse(&text, std::path::Path::new("m.toml")).unwrap()
    }

    fn req(symbol: u16, ts_ms: u64, mid: i64) -> MlRequest {
        MlRequest {
            symbol_id: symbol,
            timestamp_ns: ts_ms * 1_000_000,
            bid_price: mid - 50,
            ask_price: mid + 50,
            ..MlRequest::new()
        }
    }

    fn ok(direction: i8, confidence: u8) -> MlResponse {
        MlResponse { direction, confidence, ..MlResponse::error(0, 0, Status::Ok, 0) }
    }

    #[test]
    fn events_horizon_scores_the_kth_later_mid_of_the_same_symbol() {
        let mut q = Quality::new(&manifest("[label]\nhorizon_events = 2\nflat_bps = 0.0"), 4);
        let mut t = Tally::default();
        // Symbol 1 rises, symbol 2 (interleaved) stays flat.
        q.observe(&req(1, 0, 1_000_000), &ok(1, 80), &mut t);
        q.observe(&req(2, 0, 500_000), &ok(-1, 60), &mut t);
        q.observe(&req(1, 1, 1_000_100), &ok(1, 70), &mut t);
        assert_eq!(t.total.scored(), 0, "one later event is not two");
        q.observe(&req(2, 1, 500_000), &MlResponse::error(0, 2, Status::Overloaded, 0), &mut t);
        q.observe(&req(1, 2, 1_000_200), &ok(-1, 10), &mut t);
        // Symbol 1's first answer: buy, realised buy (+2 bps).
        assert_eq!(t.total.outcomes.0[2][2], 1);
        q.observe(&req(2, 2, 500_000), &ok(0, 10), &mut t);
        // Symbol 2's answer: sell, realised flat; the overloaded request counted as an event.
        assert_eq!(t.total.outcomes.0[1][0], 1);
        assert_eq!((t.answers, t.pending, t.total.scored()), (5, 3, 2));
        // A request with no usable quote is no event; an error answer adds no answer.
        q.observe(&req(1, 3, -5), &MlResponse::error(0, 1, Status::BadPrice, 0), &mut t);
        assert_eq!((t.answers, t.total.scored()), (5, 2));
        let s = t.total.scores();
        assert_eq!(s.hit_rate, Some(0.5));
        assert_eq!(t.window(), t.total, "fewer than WINDOW resolved: the window is everything");
    }

    #[test]
    fn flat_threshold_and_ms_horizon_follow_the_rule() {
        let rule = LabelRule { horizon_events: None, horizon_ms: Some(10.0), flat_bps: 1.5 };
        assert_eq!(rule.realised(2_000_000, 2_000_200).0, 0, "+1 bps is within 1.5");
        assert_eq!(rule.realised(2_000_000, 2_000_400).0, 1, "+2 bps is a rise");
        assert_eq!(rule.realised(2_000_000, 1_999_600), (-1, -20_000));
        let zero = LabelRule { flat_bps: 0.0, ..rule };
        assert_eq!(zero.realised(i64::MAX as i128, i64::MAX as i128 + 1).0, 1, "any change is a move");

        let mut q = Quality::new(&manifest("[label]\nhorizon_ms = 10\nflat_bps = 1.5"), 4);
        let mut t = Tally::default();
        q.observe(&req(1, 0, 1_000_000), &ok(1, 50), &mut t);
        q.observe(&req(1, 4, 1_000_300), &ok(1, 50), &mut t); // +3 bps, in force at 10 ms
        q.observe(&req(1, 10, 1_000_300), &ok(1, 50), &mut t); // at t + 10: still within
        assert_eq!(t.total.scored(), 0);
        q.observe(&req(1, 11, 1_000_000), &ok(0, 50), &mut t); // past 10 ms: the first is scored
        assert_eq!((t.total.outcomes.0[2][2], t.total.scored()), (1, 1));
        // At 30 ms: the 4 ms and 10 ms answers see the 11 ms mid in force at their horizons
        // (-3 bps: sell, called buy); the 11 ms answer saw no other event within its
        // horizon: not seen.
        q.observe(&req(1, 30, 1_000_000), &ok(0, 50), &mut t);
        assert_eq!(t.total.outcomes.0[0][2], 2, "{:?}", t.total.outcomes);
        assert_eq!(t.total.unscored[Unscored::NotSeen as usize], 1);
        assert_eq!((t.total.scored(), t.pending), (3, 1));
    }

    #[test]
    fn both_horizons_need_k_events_within_the_time() {
        let mut q = Quality::new(&manifest("[label]\nhorizon_events = 2\nhorizon_ms = 5\nflat_bps = 0"), 4);
        let mut t = Tally::default();
        q.observe(&req(7, 0, 1_000_000), &ok(1, 50), &mut t);
        q.observe(&req(7, 1, 1_000_100), &ok(1, 50), &mut t);
        q.observe(&req(7, 2, 1_000_200), &ok(1, 50), &mut t); // the first's 2nd event, at 2 ms: scored
        assert_eq!(t.total.scored(), 1);
        q.observe(&req(7, 9, 1_000_300), &ok(1, 50), &mut t); // the second's 2nd event, too late
        assert_eq!(t.total.unscored[Unscored::NotSeen as usize], 2, "1 ms and 2 ms answers both past 5 ms");
    }

    #[test]
    fn bounded_storage_counts_what_it_cannot_keep() {
        let mut q = Quality::new(&manifest("[label]\nhorizon_ms = 1000\nflat_bps = 0"), 2);
        let mut t = Tally::default();
        q.observe(&req(1, 0, 1_000_000), &ok(1, 50), &mut t);
        q.observe(&req(2, 0, 1_000_000), &ok(1, 50), &mut t);
        q.observe(&req(3, 0, 1_000_000), &ok(1, 50), &mut t);
        assert_eq!(t.total.unscored[Unscored::NoSlot as usize], 1, "a third symbol has no slot");
        for i in 0..PENDING_PER_MS_HORIZON as u64 {
            q.observe(&req(1, 1 + i, 1_000_000), &ok(1, 50), &mut t);
        }
        assert_eq!(t.total.unscored[Unscored::PendingFull as usize], 1);
        assert_eq!(q.heads.len(), 2);
        assert_eq!(q.pending.len(), 2 * PENDING_PER_MS_HORIZON, "allocated once, never grown");
    }

    #[test]
    fn without_a_label_rule_nothing_is_scored_and_it_says_why() {
        let mut q = Quality::new(&manifest(""), 4);
        let mut t = Tally::default();
        for i in 0..5 {
            q.observe(&req(1, i, 1_000_000 + i as i64), &ok(1, 50), &mut t);
        }
        assert_eq!((t.answers, t.total.scored(), t.total.unscored[0]), (5, 0, 5));
        assert!(q.index.is_empty() && q.pending.is_empty(), "no table for a model that is not scored");
        let r = t.report().unwrap();
        assert!(r.to_string().contains("not scored (its manifest has no [label] section"), "{r}");
    }

    #[test]
    fn the_window_holds_the_last_resolved_answers_exactly() {
        let mut q = Quality::new(&manifest("[label]\nhorizon_events = 1\nflat_bps = 0"), 1);
        let mut t = Tally::default();
        let mut mid = 1_000_000;
        let (right, n) = (2 * WINDOW_STEP as u64, (WINDOW + 3 * WINDOW_STEP) as u64);
        for i in 0..=n {
            // The first `right` calls are right, the rest wrong.
            let up = i % 3 != 0;
            let call = if (i < right) == up { 1 } else { -1 };
            q.observe(&req(1, i, mid), &ok(call, (i % 101) as u8), &mut t);
            mid += if up { 100 } else { -100 };
        }
        // n resolved, a multiple of the step: the window is exactly the last WINDOW, all wrong.
        let (total, window) = (t.total.scores(), t.window().scores());
        assert_eq!((total.scored, window.scored), (n, WINDOW as u64));
        assert_eq!(window.hit_rate, Some(0.0));
        assert_eq!(total.hit_rate, Some(right as f64 / n as f64));
        // Its sums are the window's own: recount them from its answers alone.
        let mut again = Counts::default();
        let mut m =
            1_000_000 + (0..n - WINDOW as u64).map(|i| if i % 3 != 0 { 100 } else { -100 }).sum::<i128>();
        for i in n - WINDOW as u64..n {
            let up = i % 3 != 0;
            let next = m + if up { 100 } else { -100 };
            let call = if (i < right) == up { 1 } else { -1 };
            again.add(&Resolved::scored(
                &q.rule.unwrap(),
                2 * m,
                (call, (i % 101) as u8, 0), // `ok` answers target 0
                2 * next,
            ));
            m = next;
        }
        assert_eq!(t.window(), again);
        // One more step's worth: the window moves on by a step, never more than WINDOW + a step.
        for i in n + 1..n + WINDOW_STEP as u64 {
            q.observe(&req(1, i, mid), &ok(1, 50), &mut t);
        }
        assert_eq!(t.window().resolved(), (WINDOW + WINDOW_STEP - 1) as u64);
        assert!(q.snapshots.len() == SNAPSHOTS, "allocated once");
    }

    #[test]
    fn a_regression_models_target_error_beside_no_change() {
        let text = "[model]\nname = \"r\"\nversion = 1\nonnx = \"r.onnx\"\nprice_scale = 10000\n\
                    [label]\nhorizon_events = 1\nflat_bps = 0\n[input]\nname = \"x\"\nfeatures = [\"spread_bps\"]\n\
                    [output]\nkind = \"regression\"\nname = \"y\"\ntarget = \"mid_return_bps\"\n\
                    flat_threshold = 0.5\nfull_confidence = 2.0\n";
        let mut q = Quality::new(&Manifest::parse(text, std::path::Path::new("r.toml")).unwrap(), 1);
        let mut t = Tally::default();
        let answer = |target_price| MlResponse { target_price, ..ok(1, 50) };
        // Predicts +2 bps, sees +1: error 1 bps. Then predicts the -0.9999 bps it sees: error 0.
        q.observe(&req(1, 0, 1_000_000), &answer(1_000_200), &mut t);
        q.observe(&req(1, 1, 1_000_100), &answer(1_000_000), &mut t);
        q.observe(&req(1, 2, 1_000_000), &answer(1_000_000), &mut t);
        let s = t.total.scores();
        let back = 200.0 / 2_000_200.0 * 1e4;
        assert!((s.target_mae_bps.unwrap() - 0.5).abs() < 1e-4, "{s:?}");
        assert!((s.target_rmse_bps.unwrap() - 0.5f64.sqrt()).abs() < 1e-4, "{s:?}");
        assert!((s.baseline_mae_bps.unwrap() - (1.0 + back) / 2.0).abs() < 1e-4, "{s:?}");
        assert!((s.baseline_rmse_bps.unwrap() - ((1.0 + back * back) / 2.0f64).sqrt()).abs() < 1e-4, "{s:?}");
        assert!(t.report().unwrap().to_string().contains("target error, last 2: MAE 0.500 bps"));
    }

    #[test]
    fn scores_match_sklearn_and_pearson() {
        // sklearn: f1_score(average="macro") of truth [1,1,-1,0,1], pred [1,-1,-1,1,1].
        let mut c = Confusion::default();
        for (t, p) in [(1, 1), (1, -1), (-1, -1), (0, 1), (1, 1)] {
            c.0[(t + 1) as usize][(p + 1) as usize] += 1;
        }
        let (acc, f1) = c.accuracy_and_macro_f1();
        assert!((acc - 0.6).abs() < 1e-12);
        assert!((f1 - (2.0 / 3.0 + 0.0 + 4.0 / 6.0) / 3.0).abs() < 1e-12, "{f1}");
        assert_eq!(c.majority(), 1);
        assert_eq!(c.hit_rate(), Some(3.0 / 5.0));
        let mut m = Moments::default();
        for (x, y) in [(1, 2), (2, 4), (3, 7)] {
            m.add(x, y);
        }
        // numpy.corrcoef([1,2,3],[2,4,7])[0,1]
        assert!((m.pearson().unwrap() - 0.9933992677987828).abs() < 1e-12);
    }
}
