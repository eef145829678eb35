//! Rate-limited logging for events a client or a model can repeat at line rate
//! (a flood of connections, a model answering NaN): one line per interval with
//! how many were left out since the last one, never one line per event.

/// Allows one log line per `every_ns`; counts the events in between.
#[derive(Clone, Debug)]
pub struct RateLimited {
    every_ns: u64,
    /// When the last line was allowed; `None` before the first.
    last_ns: Option<u64>,
    /// Events since the last line that were not logged.
    suppressed: u64,
}

impl RateLimited {
    pub const fn new(every_ns: u64) -> RateLimited {
        RateLimited { every_ns, last_ns: None, suppressed: 0 }
    }

    /// One more event at `now_ns`: `Some(n)` when a line may be logged now, `n` being
    /// the events left out since the previous line; `None` when this one is left out.
    #[inline]
    pub fn event(&mut self, now_ns: u64) -> Option<u64> {
        match self.last_ns {
            Some(last) if now_ns.saturating_sub(last) < self.every_ns => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_ns = Some(now_ns);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let mut r = RateLimited::new(1_000);
        assert_eq!(r.event(10), Some(0), "the first event is logged");
        assert_eq!(r.event(20), None);
        assert_eq!(r.event(999), None);
        assert_eq!(r.event(1_010), Some(2), "next interval: two were left out");
        assert_eq!(r.event(1_011), None);
        assert_eq!(r.event(5_000), Some(1));
    }
}
