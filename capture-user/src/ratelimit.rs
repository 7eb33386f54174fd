//! Token buckets for `--rate` (exchanges per second) and `--max-bytes-per-sec` (record
//! bytes per second). Time comes from the kernel timestamps of the traffic itself, so
//! the decisions are deterministic for a given capture (and testable).

/// A bucket refilled at `rate` per second up to `capacity` (one second's worth: bursts
/// up to one second are allowed).
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last_ns: Option<u64>,
}

impl TokenBucket {
    /// A full bucket of `rate` per second, holding at most one second's worth (and at
    /// least one token, so rates below 1/s still let some through).
    pub fn per_second(rate: f64) -> TokenBucket {
        let capacity = rate.max(1.0);
        TokenBucket { rate, capacity, tokens: capacity, last_ns: None }
    }

    fn refill(&mut self, now_ns: u64) {
        match self.last_ns {
            // Events of several CPUs may come slightly out of order: time never goes back.
            Some(last) if now_ns > last => {
                self.tokens = (self.tokens + (now_ns - last) as f64 * 1e-9 * self.rate).min(self.capacity);
                self.last_ns = Some(now_ns);
            }
            Some(_) => {}
            None => self.last_ns = Some(now_ns),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now_ns: u64) -> bool {
        self.refill(now_ns);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is not in debt (see [`TokenBucket::charge`]).
    pub fn has_credit(&mut self, now_ns: u64) -> bool {
        self.refill(now_ns);
        self.tokens > 0.0
    }

    /// Takes `n` tokens, going into debt if needed: an exchange admitted on credit is
    /// kept whole whatever its size, and the debt holds back the next ones.
    pub fn charge(&mut self, n: f64) {
        self.tokens -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn bursts_up_to_one_second_then_the_rate() {
        let mut b = TokenBucket::per_second(10.0);
        let burst = (0..100).filter(|_| b.try_take(5 * S)).count();
        assert_eq!(burst, 10, "one second's worth at once");
        // 100 requests spread evenly over the next 2 s: 20 more tokens.
        let later = (1..=100).filter(|i| b.try_take(5 * S + i * S / 50)).count();
        assert_eq!(later, 20);
        // Idle for a minute: the bucket holds one second's worth, no more.
        let after_idle = (0..100).filter(|_| b.try_take(70 * S)).count();
        assert_eq!(after_idle, 10);
    }

    #[test]
    fn slow_rates_still_admit_and_time_never_goes_back() {
        let mut b = TokenBucket::per_second(0.5);
        assert!(b.try_take(S));
        assert!(!b.try_take(S + S / 2));
        assert!(!b.try_take(S / 2), "an older timestamp adds nothing");
        assert!(b.try_take(3 * S));
    }

    #[test]
    fn debt_holds_back_until_repaid() {
        let mut b = TokenBucket::per_second(1000.0);
        assert!(b.has_credit(0));
        b.charge(3500.0); // one big exchange admitted on credit
        assert!(!b.has_credit(S)); // 1000 - 3500 + 1000
        assert!(!b.has_credit(2 * S)); // -500
        assert!(b.has_credit(3 * S)); // +500
    }
}
