//! The label rule's look-ahead over a recorded stream, offline: each event with a usable
//! quote waits in its symbol's queue until that symbol's mid is known at the rule's horizon
//! ([`LabelRule`], the manifest's `[label]`, as `crate::quality` applies it live):
//!
//! - `horizon_events = k`: resolved by the symbol's k-th later event, at that event's mid;
//! - `horizon_ms = h`: resolved by the symbol's first event after t + h, at the mid in force
//!   at t + h (the last event at or before it, if one came after the waiting event; else
//!   *not seen*);
//! - both: the k-th later event if it comes within h; else not seen.
//!
//! One implementation for replay's signal-quality report ([`super::report::Sink`]: each
//! answer scored when it resolves) and for `tickinfer features` (`crate::dataset`: each
//! row's label columns). Events are numbered per symbol, so the oldest waiting ones may be
//! dropped ([`Lookahead::forget_oldest_while`], a caller's memory bound) without changing
//! how the rest resolve.

use std::collections::VecDeque;

use crate::quality::LabelRule;

/// No queue for this symbol yet (in [`Lookahead::index`]).
const NONE: u32 = u32::MAX;

/// Events waiting for their symbol's mid at the horizon, each with the caller's `T`.
pub struct Lookahead<T> {
    rule: LabelRule,
    horizon_ns: Option<u64>,
    /// symbol_id → its queue in `queues` ([`NONE`]: not seen yet); 65 536 entries once used.
    index: Vec<u32>,
    queues: Vec<Queue<T>>,
    waiting: usize,
}

struct Queue<T> {
    /// Events of the symbol seen so far (the next one's number).
    events: u64,
    /// bid + ask of its latest event.
    last_mid2: i128,
    waiting: VecDeque<Waiting<T>>,
}

struct Waiting<T> {
    /// The event's number among its symbol's events.
    event: u64,
    ts_ns: u64,
    mid2: i128,
    item: T,
}

impl<T> Lookahead<T> {
    /// `rule` checked ([`LabelRule::checked`]) by the caller.
    pub fn new(rule: LabelRule) -> Lookahead<T> {
        Lookahead { horizon_ns: rule.horizon_ns(), rule, index: Vec::new(), queues: Vec::new(), waiting: 0 }
    }

    pub fn rule(&self) -> &LabelRule {
        &self.rule
    }

    /// `symbol`'s next event with a usable quote (bid > 0, ask > bid: what the server's price
    /// checks pass), at `ts_ns` with bid + ask `mid2`. It first resolves the symbol's waiting
    /// events whose horizon it reaches, oldest first — `resolved(item, their bid + ask, the
    /// realised bid + ask, or None: not seen within the horizon in ms)` — then waits itself.
    #[inline]
    pub fn push(
        &mut self,
        symbol: u16,
        ts_ns: u64,
        mid2: i128,
        item: T,
        mut resolved: impl FnMut(T, i128, Option<i128>),
    ) {
        if self.index.is_empty() {
            self.index = vec![NONE; 1 << 16];
        }
        let at = match self.index[symbol as usize] {
            NONE => {
                self.index[symbol as usize] = self.queues.len() as u32;
                self.queues.push(Queue { events: 0, last_mid2: 0, waiting: VecDeque::new() });
                self.queues.len() - 1
            }
            at => at as usize,
        };
        let q = &mut self.queues[at];
        let n = q.events;
        while let Some(oldest) = q.waiting.front() {
            let expired = self.horizon_ns.is_some_and(|h| ts_ns > oldest.ts_ns.saturating_add(h));
            let reached = self.rule.horizon_events.is_some_and(|k| n - oldest.event >= k as u64);
            if !(expired || reached) {
                break;
            }
            let Some(w) = q.waiting.pop_front() else { break };
            self.waiting -= 1;
            // Reached: this event is the k-th later one. Expired: the mid in force at the
            // horizon is the symbol's previous event's (ms alone), if one came after it.
            let realised = match (expired, self.rule.horizon_events) {
                (false, _) => Some(mid2),
                (true, None) if n > w.event + 1 => Some(q.last_mid2),
                (true, _) => None,
            };
            resolved(w.item, w.mid2, realised);
        }
        q.waiting.push_back(Waiting { event: n, ts_ns, mid2, item });
        q.events += 1;
        q.last_mid2 = mid2;
        self.waiting += 1;
    }

    /// Events waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// The waiting events' items (per symbol, oldest first).
    pub fn items(&self) -> impl Iterator<Item = &T> + '_ {
        self.queues.iter().flat_map(|q| q.waiting.iter().map(|w| &w.item))
    }

    /// Stop waiting for each symbol's oldest events while `gone` says so: they are never
    /// resolved; the others resolve as before (each event keeps its number).
    pub fn forget_oldest_while(&mut self, mut gone: impl FnMut(&T) -> bool) {
        for q in &mut self.queues {
            while q.waiting.front().is_some_and(|w| gone(&w.item)) {
                q.waiting.pop_front();
                self.waiting -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(k: Option<u32>, ms: Option<f64>) -> LabelRule {
        LabelRule { horizon_events: k, horizon_ms: ms, flat_bps: 0.0 }
    }

    /// (item, then, realised) of every resolution, pushing (symbol, ts ms, mid2) in order.
    fn run(rule: LabelRule, events: &[(u16, u64, i128)]) -> Vec<(usize, i128, Option<i128>)> {
        let mut l = Lookahead::new(rule);
        let mut out = Vec::new();
        for (i, &(s, ms, mid2)) in events.iter().enumerate() {
            l.push(s, ms * 1_000_000, mid2, i, |item, then, now| out.push((item, then, now)));
        }
        out
    }

    #[test]
    fn events_ms_and_both_by_hand() {
        let ev = [(1, 0, 10), (2, 0, 50), (1, 1, 11), (1, 2, 12), (2, 9, 51), (1, 9, 13)];
        // Two events later, per symbol.
        assert_eq!(run(rule(Some(2), None), &ev), vec![(0, 10, Some(12)), (2, 11, Some(13))]);
        // 5 ms: symbol 2's event at 0 ms resolves at 9 ms unseen (no later event of it within
        // 5 ms); symbol 1's at 0 and 1 ms at 9 ms with the mid in force (12), the one at 2 ms
        // unseen (nothing after it within 5 ms).
        assert_eq!(
            run(rule(None, Some(5.0)), &ev),
            vec![(1, 50, None), (0, 10, Some(12)), (2, 11, Some(12)), (3, 12, None)]
        );
        // Both: the 2nd later event within 5 ms, else not seen.
        assert_eq!(
            run(rule(Some(2), Some(5.0)), &ev),
            vec![(0, 10, Some(12)), (1, 50, None), (2, 11, None), (3, 12, None)]
        );
    }

    #[test]
    fn forgetting_the_oldest_keeps_the_rule_for_the_rest() {
        let mut l = Lookahead::new(rule(Some(2), None));
        let mut out = Vec::new();
        for i in 0..3u64 {
            l.push(7, i, 100 + i as i128, i, |item, _, now| out.push((item, now)));
        }
        l.forget_oldest_while(|&i| i < 2);
        assert_eq!(l.waiting(), 1, "0 resolved, 1 forgotten, 2 waits");
        for (i, mid2) in [(3, 200), (4, 300)] {
            l.push(7, i, mid2, i, |item, _, now| out.push((item, now)));
        }
        assert_eq!(out, vec![(0, Some(102)), (2, Some(300))], "2 still resolves two events later");
        assert_eq!(l.items().copied().collect::<Vec<_>>(), vec![3, 4]);
    }
}
