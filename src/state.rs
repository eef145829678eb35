//! Per-symbol state for stateful features, owned by the scoring stage (one
//! thread: no locks).
//!
//! Every *valid* request the scoring stage runs updates its symbol's state, in
//! the order the stage sees the requests, before its own feature row is
//! computed: a request sees the state left by every earlier request of its
//! symbol, inside one model batch too (batching never changes an answer).
//! Requests refused before the model (bad prices, overload…) never touch it.
//!
//! Memory is allocated once, when the model is loaded: `max_symbols` slots, each
//! with a ring of the last `capacity` events ([`Entry`], 32 bytes) and its
//! running accumulators (EWMAs, event rates), plus a sequence model's memory: a
//! window model's last `K` feature rows, or a recurrent model's state tensors
//! (fed to each step and written back after it). A symbol gets a slot on its first
//! request; once every slot is taken, a new symbol is refused (the scoring stage
//! answers `ML_ERR_TOO_MANY_SYMBOLS`), never allocated for — unless idle symbols
//! may be evicted ([`State::set_eviction`]): the least recently seen symbol, idle
//! at least that long, then gives its slot (and its history) to the new one. A
//! reset frees the slots it clears.
//!
//! The definitions (formulas in docs/models-and-backends.md, "Stateful features") live in
//! [`crate::features`]; `scripts/tickfeatures.py` mirrors them operation for
//! operation, and the parity test holds both to the same bits.

use crate::features::Scales;
use crate::wire::{wide_to_f64, MlRequest};

/// What the stateful features of one model need kept per symbol.
#[derive(Clone, Debug, PartialEq)]
pub struct StateSpec {
    /// Ring entries per symbol (the longest window, +1 for a return over n events).
    pub capacity: usize,
    /// EWMA weights `alpha = 1 - 0.5^(1/halflife)`, one accumulator each.
    pub ewma_alphas: Vec<f64>,
    /// Event-rate time constants in seconds, one accumulator each.
    pub rate_taus_s: Vec<f64>,
    /// Earlier events of its symbol a request needs for every feature to be warm
    /// (for a sequence model: its window or warm-up too).
    pub history: usize,
    /// Floats of sequence memory per symbol: a window model's last `K` feature rows
    /// (`K × F`) or a recurrent model's state tensors (their widths summed). 0: none.
    pub sequence_floats: usize,
    /// What the sequence memory means (window and feature map, or the recurrent model's
    /// bytes): a reload keeps the state only when this is equal too.
    pub sequence_id: String,
}

impl StateSpec {
    /// No stateful feature: nothing is kept.
    pub fn stateless() -> StateSpec {
        StateSpec {
            capacity: 0,
            ewma_alphas: vec![],
            rate_taus_s: vec![],
            history: 0,
            sequence_floats: 0,
            sequence_id: String::new(),
        }
    }

    pub fn is_stateless(&self) -> bool {
        self.capacity == 0
            && self.ewma_alphas.is_empty()
            && self.rate_taus_s.is_empty()
            && self.sequence_floats == 0
    }

    /// Bytes of state per symbol.
    pub fn bytes_per_symbol(&self) -> usize {
        self.capacity * std::mem::size_of::<Entry>()
            + (self.ewma_alphas.len() + self.rate_taus_s.len()) * 8
            + self.sequence_floats * 4
            + std::mem::size_of::<SlotHead>()
            + 8 // batch mark
    }
}

/// One past event of a symbol, as the window features read it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Entry {
    /// (bid + ask) / 2, price units.
    pub mid: f64,
    /// (ask - bid) / mid × 10⁴.
    pub spread_bps: f64,
    /// Order-flow imbalance of this event against the previous one (0 for a symbol's first).
    pub ofi: f64,
    /// Mid return against the previous event, bps (0 for a symbol's first).
    pub ret_bps: f64,
}

/// The last quote of a symbol (what the next event is compared with).
#[derive(Clone, Copy, Debug, Default)]
struct Quote {
    bid: f64,
    ask: f64,
    bid_size: f64,
    ask_size: f64,
    mid: f64,
    ts_ns: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct SlotHead {
    /// Events seen (this one included once updated).
    count: u64,
    /// Ring position of the newest entry.
    newest: usize,
    last: Quote,
    /// Milliseconds since the previous event (0 for the first), signed.
    dt_ms: f64,
}

/// Marks a symbol with no slot in [`State::index`], and the ends of the recency list.
const NO_SLOT: u32 = u32::MAX;

/// What [`State::admit_at`] did for a request's symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// The symbol has a slot (it had one, or took a free one).
    Yes,
    /// The symbol took the slot of this one, the least recently seen, idle long enough.
    Evicting(u16),
    /// Every slot is taken (and none idle long enough): refuse the request.
    No,
}

/// The per-symbol table.
///
/// Invariants: `index[s] == slot` exactly when `owner[slot] == s`; the slots in use
/// are those not on `free` (`in_use + free.len() == max_symbols`); with an eviction
/// policy, the slots in use form the recency list `newest → … → oldest` through
/// `newer`/`older`, ordered by `last_seen`.
pub struct State {
    spec: StateSpec,
    /// symbol_id → slot; [`NO_SLOT`] when the symbol has none. Empty when stateless.
    index: Vec<u32>,
    /// Slot heads, one per slot (`max_symbols`).
    heads: Vec<SlotHead>,
    /// slot → the symbol holding it ([`NO_SLOT`] when free).
    owner: Vec<u32>,
    /// Free slots (a stack; every slot at first).
    free: Vec<u32>,
    /// Slots held by a symbol.
    in_use: usize,
    /// Idle time after which a symbol's slot may go to a new symbol (ns); `None`: never.
    evict_idle_ns: Option<u64>,
    /// Per slot: when its symbol was last admitted (ns, the scoring thread's clock).
    last_seen: Vec<u64>,
    /// The recency list: per slot, the next more recently seen slot and the next less.
    newer: Vec<u32>,
    older: Vec<u32>,
    /// Most and least recently seen slots in use ([`NO_SLOT`] when none).
    newest: u32,
    oldest: u32,
    /// Ring entries, `capacity` per slot, allocated for all `max_symbols` up front.
    entries: Vec<Entry>,
    /// Accumulators, `ewma_alphas.len() + rate_taus_s.len()` per slot, likewise.
    accum: Vec<f64>,
    /// Sequence memory, `sequence_floats` per slot, likewise.
    sequence: Vec<f32>,
    /// Per slot: the last batch ([`State::begin_batch`]) that marked it.
    marks: Vec<u64>,
    /// The current batch's number; starts at 1 so that a zeroed mark is never current.
    batch: u64,
    max_symbols: usize,
}

/// A symbol's state just after its newest event, as the features read it.
pub struct SymbolView<'a> {
    pub count: u64,
    /// The symbol's slot (for [`State::sequence_mut`]).
    pub slot: usize,
    /// Fewer earlier events than the features need (`count <= history`).
    pub warming: bool,
    /// Milliseconds since the previous event of this symbol (0 for its first).
    pub dt_ms: f64,
    ring: &'a [Entry],
    newest: usize,
    /// EWMAs, then event rates, in the spec's order.
    pub accum: &'a [f64],
}

impl SymbolView<'_> {
    /// The entry `back` events before the newest (0: the newest), if kept and seen.
    #[inline]
    pub fn back(&self, back: usize) -> Option<&Entry> {
        if back as u64 >= self.count || back >= self.ring.len() {
            return None;
        }
        // `newest < cap` and `back < cap`: one wrap at most (a compare, not a division).
        let at = if self.newest >= back { self.newest - back } else { self.newest + self.ring.len() - back };
        Some(&self.ring[at])
    }

    /// The last `n` entries (fewer while the symbol is new), oldest first: sums over
    /// them run in the same order as the Python twin's.
    #[inline]
    pub fn window(&self, n: usize) -> impl Iterator<Item = &Entry> + '_ {
        let m = n.min(self.count as usize).min(self.ring.len());
        // The ring's run from the oldest of them to the newest, as two slices (no division
        // per entry): the same entries in the same order as `back(m - 1)` … `back(0)`.
        let (cap, newest) = (self.ring.len(), self.newest);
        let (older, newer): (&[Entry], &[Entry]) = match m {
            0 => (&[], &[]),
            _ if newest + 1 >= m => (&self.ring[newest + 1 - m..=newest], &[]),
            _ => (&self.ring[cap + newest + 1 - m..], &self.ring[..=newest]),
        };
        older.iter().chain(newer)
    }
}

impl State {
    /// Allocate the table for `max_symbols` symbols (nothing when `spec` is stateless).
    pub fn new(spec: StateSpec, max_symbols: usize) -> State {
        if spec.is_stateless() {
            return State {
                spec,
                index: vec![],
                heads: vec![],
                owner: vec![],
                free: vec![],
                in_use: 0,
                evict_idle_ns: None,
                last_seen: vec![],
                newer: vec![],
                older: vec![],
                newest: NO_SLOT,
                oldest: NO_SLOT,
                entries: vec![],
                accum: vec![],
                sequence: vec![],
                marks: vec![],
                batch: 1,
                max_symbols,
            };
        }
        let per = spec.ewma_alphas.len() + spec.rate_taus_s.len();
        State {
            index: vec![NO_SLOT; 1 << 16],
            heads: vec![SlotHead::default(); max_symbols],
            owner: vec![NO_SLOT; max_symbols],
            // Popped from the end: slot 0 first.
            free: (0..max_symbols as u32).rev().collect(),
            in_use: 0,
            evict_idle_ns: None,
            last_seen: vec![0; max_symbols],
            newer: vec![NO_SLOT; max_symbols],
            older: vec![NO_SLOT; max_symbols],
            newest: NO_SLOT,
            oldest: NO_SLOT,
            entries: vec![Entry::default(); max_symbols * spec.capacity],
            accum: vec![0.0; max_symbols * per],
            sequence: vec![0.0; max_symbols * spec.sequence_floats],
            marks: vec![0; max_symbols],
            batch: 1,
            max_symbols,
            spec,
        }
    }

    pub fn spec(&self) -> &StateSpec {
        &self.spec
    }

    pub fn is_stateless(&self) -> bool {
        self.spec.is_stateless()
    }

    pub fn max_symbols(&self) -> usize {
        self.max_symbols
    }

    /// Symbols holding a slot.
    pub fn symbols(&self) -> usize {
        self.in_use
    }

    /// Let a new symbol take the slot of the least recently seen one once that one has
    /// been idle `idle` (`None`: never; a new symbol is refused when every slot is taken).
    pub fn set_eviction(&mut self, idle: Option<std::time::Duration>) {
        self.evict_idle_ns = idle.map(|d| d.as_nanos() as u64);
    }

    /// The eviction policy set with [`set_eviction`](Self::set_eviction).
    pub fn eviction(&self) -> Option<std::time::Duration> {
        self.evict_idle_ns.map(std::time::Duration::from_nanos)
    }

    /// Bytes allocated for the whole table.
    pub fn bytes(&self) -> usize {
        if self.is_stateless() {
            return 0;
        }
        self.index.len() * 4 + self.max_symbols * self.spec.bytes_per_symbol()
    }

    /// Whether `symbol` has (or now gets) a free slot. False when every slot is taken.
    /// Evicts nothing and does not count as the symbol being seen ([`admit_at`](Self::admit_at) does).
    #[inline]
    pub fn admit(&mut self, symbol: u16) -> bool {
        if self.is_stateless() || self.index[symbol as usize] != NO_SLOT {
            return true;
        }
        match self.free.pop() {
            Some(slot) => {
                self.assign(slot, symbol, 0);
                true
            }
            None => false,
        }
    }

    /// The scoring stage's admission of a request's symbol, seen at `now_ns`: a slot
    /// it has, a free one, or — with an eviction policy, every slot taken — the slot of
    /// the least recently seen symbol if that one has been idle long enough (its
    /// history is lost). One branch more than [`admit`](Self::admit) without a policy;
    /// with one, a few stores to keep the recency list.
    #[inline]
    pub fn admit_at(&mut self, symbol: u16, now_ns: u64) -> Admitted {
        if self.is_stateless() {
            return Admitted::Yes;
        }
        let slot = self.index[symbol as usize];
        if slot != NO_SLOT {
            if self.evict_idle_ns.is_some() {
                self.touch(slot, now_ns);
            }
            return Admitted::Yes;
        }
        if let Some(slot) = self.free.pop() {
            self.assign(slot, symbol, now_ns);
            return Admitted::Yes;
        }
        let Some(idle_ns) = self.evict_idle_ns else { return Admitted::No };
        let oldest = self.oldest;
        if oldest == NO_SLOT || now_ns.saturating_sub(self.last_seen[oldest as usize]) < idle_ns {
            return Admitted::No;
        }
        let evicted = self.owner[oldest as usize] as u16;
        self.release(oldest);
        let slot = self.free.pop().expect("the slot just released");
        self.assign(slot, symbol, now_ns);
        Admitted::Evicting(evicted)
    }

    /// Give free `slot` to `symbol`, its state empty, as the most recently seen.
    fn assign(&mut self, slot: u32, symbol: u16, now_ns: u64) {
        debug_assert_eq!(self.owner[slot as usize], NO_SLOT);
        self.clear_slot(slot as usize);
        self.index[symbol as usize] = slot;
        self.owner[slot as usize] = symbol as u32;
        self.in_use += 1;
        self.last_seen[slot as usize] = now_ns;
        self.push_newest(slot);
        debug_assert_eq!(self.in_use + self.free.len(), self.max_symbols);
    }

    /// Take `slot` from its symbol (its history forgotten) and put it on the free list.
    fn release(&mut self, slot: u32) {
        let symbol = self.owner[slot as usize];
        debug_assert_ne!(symbol, NO_SLOT, "release of a free slot");
        self.index[symbol as usize] = NO_SLOT;
        self.owner[slot as usize] = NO_SLOT;
        self.unlink(slot);
        self.clear_slot(slot as usize);
        self.in_use -= 1;
        self.free.push(slot);
        debug_assert_eq!(self.in_use + self.free.len(), self.max_symbols);
    }

    /// `slot`'s symbol was seen at `now_ns`: it becomes the most recently seen.
    #[inline]
    fn touch(&mut self, slot: u32, now_ns: u64) {
        self.last_seen[slot as usize] = now_ns;
        if self.newest != slot {
            self.unlink(slot);
            self.push_newest(slot);
        }
    }

    fn push_newest(&mut self, slot: u32) {
        let s = slot as usize;
        self.newer[s] = NO_SLOT;
        self.older[s] = self.newest;
        if self.newest != NO_SLOT {
            self.newer[self.newest as usize] = slot;
        } else {
            self.oldest = slot;
        }
        self.newest = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let s = slot as usize;
        let (newer, older) = (self.newer[s], self.older[s]);
        match newer {
            NO_SLOT => self.newest = older,
            n => self.older[n as usize] = older,
        }
        match older {
            NO_SLOT => self.oldest = newer,
            o => self.newer[o as usize] = newer,
        }
        (self.newer[s], self.older[s]) = (NO_SLOT, NO_SLOT);
    }

    /// Empty `slot`'s history, accumulators and sequence memory.
    fn clear_slot(&mut self, slot: usize) {
        let per = self.spec.ewma_alphas.len() + self.spec.rate_taus_s.len();
        let n = self.spec.sequence_floats;
        self.heads[slot] = SlotHead::default();
        self.accum[slot * per..(slot + 1) * per].iter_mut().for_each(|v| *v = 0.0);
        self.sequence[slot * n..(slot + 1) * n].iter_mut().for_each(|v| *v = 0.0);
    }

    /// The slot of an admitted symbol.
    #[inline]
    pub fn slot_of(&self, symbol: u16) -> Option<usize> {
        self.index.get(symbol as usize).filter(|&&i| i != NO_SLOT).map(|&i| i as usize)
    }

    /// Start a new batch for [`mark`](Self::mark): no slot is marked in it yet.
    #[inline]
    pub fn begin_batch(&mut self) {
        self.batch += 1;
    }

    /// Mark `slot` as used by the current batch; false if it already was (a recurrent
    /// model must then run the batch so far before this symbol's next step).
    #[inline]
    pub fn mark(&mut self, slot: usize) -> bool {
        let fresh = self.marks[slot] != self.batch;
        self.marks[slot] = self.batch;
        fresh
    }

    /// A slot's sequence memory (`sequence_floats` values).
    #[inline]
    pub fn sequence_mut(&mut self, slot: usize) -> &mut [f32] {
        let n = self.spec.sequence_floats;
        &mut self.sequence[slot * n..(slot + 1) * n]
    }

    /// Fold one valid request into its symbol's state and return the view its features
    /// read. The symbol must have been admitted. `scales`: fixed point → units.
    #[inline]
    pub fn update(&mut self, req: &MlRequest, scales: Scales) -> SymbolView<'_> {
        self.update_with_sequence(req, scales).0
    }

    /// [`update`](Self::update), also lending the symbol's sequence memory.
    #[inline]
    pub fn update_with_sequence(&mut self, req: &MlRequest, scales: Scales) -> (SymbolView<'_>, &mut [f32]) {
        let slot = self.index[req.symbol_id as usize];
        debug_assert_ne!(slot, NO_SLOT, "update of a symbol that was not admitted");
        let slot = slot as usize;
        let cap = self.spec.capacity;
        let per = self.spec.ewma_alphas.len() + self.spec.rate_taus_s.len();
        let head = &mut self.heads[slot];
        // The same arithmetic, in the same order, as scripts/tickfeatures.py.
        let bid = req.bid_price as f64 * scales.inv_price;
        let ask = req.ask_price as f64 * scales.inv_price;
        let (bid_size, ask_size) =
            (req.bid_size as f64 * scales.inv_size, req.ask_size as f64 * scales.inv_size);
        let mid = (bid + ask) * 0.5;
        let ts_ns = req.timestamp_ns;
        let q = Quote { bid, ask, bid_size, ask_size, mid, ts_ns };
        let (ofi, ret_bps, dt_ms, dt_s) = if head.count == 0 {
            (0.0, 0.0, 0.0, 0.0)
        } else {
            let p = head.last;
            let mut e = 0.0;
            if bid >= p.bid {
                e += bid_size;
            }
            if bid <= p.bid {
                e -= p.bid_size;
            }
            if ask <= p.ask {
                e -= ask_size;
            }
            if ask >= p.ask {
                e += p.ask_size;
            }
            let dt_ms = wide_to_f64(ts_ns as i128 - p.ts_ns as i128) / 1e6;
            let dt_s = ts_ns.saturating_sub(p.ts_ns) as f64 / 1e9;
            (e, (mid - p.mid) / p.mid * 1e4, dt_ms, dt_s)
        };
        let accum = &mut self.accum[slot * per..(slot + 1) * per];
        let (ewmas, rates) = accum.split_at_mut(self.spec.ewma_alphas.len());
        for (v, &alpha) in ewmas.iter_mut().zip(&self.spec.ewma_alphas) {
            *v = alpha * ret_bps + (1.0 - alpha) * *v;
        }
        for (v, &tau) in rates.iter_mut().zip(&self.spec.rate_taus_s) {
            *v = *v * (-dt_s / tau).exp() + 1.0 / tau;
        }
        let ring = &mut self.entries[slot * cap..(slot + 1) * cap];
        if cap > 0 {
            // A compare, not `% cap`: a division per event on the hot path.
            head.newest = if head.count == 0 || head.newest + 1 == cap { 0 } else { head.newest + 1 };
            ring[head.newest] = Entry { mid, spread_bps: (ask - bid) / mid * 1e4, ofi, ret_bps };
        }
        head.count += 1;
        head.last = q;
        head.dt_ms = dt_ms;
        let warming = head.count <= self.spec.history as u64;
        let n = self.spec.sequence_floats;
        let sequence = &mut self.sequence[slot * n..(slot + 1) * n];
        (SymbolView { count: head.count, slot, warming, dt_ms, ring, newest: head.newest, accum }, sequence)
    }

    /// Forget `symbol`'s history and free its slot, or every symbol's (`None`).
    pub fn reset(&mut self, symbol: Option<u16>) {
        match symbol {
            Some(s) => {
                if let Some(slot) = self.slot_of(s) {
                    self.release(slot as u32);
                }
            }
            None => {
                for slot in 0..self.owner.len() as u32 {
                    if self.owner[slot as usize] != NO_SLOT {
                        self.release(slot);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(capacity: usize) -> StateSpec {
        StateSpec {
            capacity,
            ewma_alphas: vec![0.5],
            rate_taus_s: vec![1.0],
            history: 2,
            ..StateSpec::stateless()
        }
    }

    fn req(symbol: u16, ts: u64, bid: i64, ask: i64, bsz: i64, asz: i64) -> MlRequest {
        MlRequest {
            timestamp_ns: ts,
            symbol_id: symbol,
            bid_price: bid,
            ask_price: ask,
            bid_size: bsz,
            ask_size: asz,
            ..MlRequest::new()
        }
    }

    #[test]
    fn ring_order_ofi_returns_and_accumulators_by_hand() {
        let mut st = State::new(spec(3), 2);
        assert!(st.admit(7) && st.admit(8));
        let v = st.update(&req(7, 1_000_000, 100, 102, 10, 20), Scales::UNIT);
        assert_eq!(
            (v.count, v.dt_ms, v.back(0).unwrap().ofi, v.back(0).unwrap().ret_bps),
            (1, 0.0, 0.0, 0.0)
        );
        assert_eq!(v.accum, &[0.0, 1.0], "ewma 0; rate 1/tau after one event");
        assert!(
            st.update(&req(8, 0, 1, 2, 1, 1), Scales::UNIT).warming,
            "history 2: the first event is warming"
        );
        // Bid up, ask unchanged: e = +bid_size - prev ask... (bid>=pb: +12; ask<=pa: -25; ask>=pa: +20)
        let v = st.update(&req(7, 3_000_000, 101, 102, 12, 25), Scales::UNIT);
        assert_eq!(v.back(0).unwrap().ofi, 12.0 - 25.0 + 20.0);
        assert_eq!(v.dt_ms, 2.0);
        let r = (101.5 - 101.0) / 101.0 * 1e4;
        assert_eq!(v.back(0).unwrap().ret_bps, r);
        assert_eq!(v.accum[0], 0.5 * r);
        assert_eq!(v.accum[1], 1.0 * (-0.002f64).exp() + 1.0);
        let mids: Vec<f64> = v.window(5).map(|e| e.mid).collect();
        assert_eq!(mids, vec![101.0, 101.5], "oldest first, only what was seen");
        st.update(&req(7, 4_000_000, 101, 103, 1, 1), Scales::UNIT);
        let v = st.update(&req(7, 5_000_000, 102, 103, 1, 1), Scales::UNIT);
        let mids: Vec<f64> = v.window(5).map(|e| e.mid).collect();
        assert_eq!(mids, vec![101.5, 102.0, 102.5], "the ring keeps the newest 3");
        assert_eq!(v.back(3), None);
        assert!(!v.warming);
    }

    #[test]
    fn symbols_are_bounded_isolated_and_reset() {
        let mut st = State::new(spec(2), 2);
        assert!(st.admit(1) && st.admit(2) && st.admit(1));
        assert!(!st.admit(3), "a third symbol has no slot");
        st.update(&req(1, 0, 100, 101, 1, 1), Scales::UNIT);
        st.update(&req(1, 0, 100, 101, 1, 1), Scales::UNIT);
        assert_eq!(st.update(&req(2, 0, 50, 51, 1, 1), Scales::UNIT).count, 1, "symbols do not share state");
        st.reset(Some(1));
        assert_eq!(st.symbols(), 1, "a symbol's reset frees its slot");
        assert!(st.admit(3), "which a new symbol takes");
        assert!(!st.admit(1), "and the reset symbol has none now");
        assert_eq!(st.update(&req(3, 0, 100, 101, 1, 1), Scales::UNIT).count, 1, "1's history is not 3's");
        st.reset(None);
        assert_eq!(st.symbols(), 0, "every slot freed");
        assert!(st.admit(2) && st.admit(1));
        assert_eq!(st.update(&req(2, 0, 50, 51, 1, 1), Scales::UNIT).count, 1, "history forgotten");
        let stateless = State::new(StateSpec::stateless(), 10);
        assert_eq!(stateless.bytes(), 0);
    }

    #[test]
    fn the_least_recently_seen_idle_symbol_gives_its_slot() {
        let ms = 1_000_000;
        let mut st = State::new(spec(2), 3);
        for (symbol, t) in [(1, 0), (2, ms), (3, 2 * ms)] {
            assert_eq!(st.admit_at(symbol, t), Admitted::Yes);
        }
        st.update(&req(1, 0, 100, 101, 1, 1), Scales::UNIT);
        assert_eq!(st.admit_at(4, 10 * ms), Admitted::No, "no eviction policy: refused");
        st.set_eviction(Some(std::time::Duration::from_millis(5)));
        assert_eq!(st.admit_at(1, 3 * ms), Admitted::Yes, "symbol 1 seen again: 2 is now the oldest");
        assert_eq!(st.admit_at(4, 6 * ms - 1), Admitted::No, "symbol 2, the oldest, idle just under 5 ms");
        assert_eq!(st.admit_at(4, 7 * ms), Admitted::Evicting(2), "the least recently seen, idle 6 ms");
        assert_eq!((st.slot_of(2), st.symbols()), (None, 3));
        assert_eq!(st.admit_at(5, 8 * ms), Admitted::Evicting(3));
        assert_eq!(st.admit_at(6, 9 * ms), Admitted::Evicting(1), "then 1 (seen at 3 ms)");
        assert_eq!(st.update(&req(6, 0, 100, 101, 1, 1), Scales::UNIT).count, 1, "1's history is not 6's");
        // The recency list stays whole through resets in its middle.
        st.reset(Some(5));
        assert_eq!(st.admit_at(7, 20 * ms), Admitted::Yes, "a freed slot first");
        assert_eq!(st.admit_at(8, 20 * ms), Admitted::Evicting(4));
        assert_eq!(st.admit_at(9, 30 * ms), Admitted::Evicting(6));
        assert_eq!(st.admit_at(10, 40 * ms), Admitted::Evicting(7));
        assert_eq!(st.symbols(), 3);
    }
}
