//! When each request is sent: the captured gaps between requests divided by
//! `--speed`, each gap capped at `--max-wait` (one record with a timestamp far from
//! the rest must not make the replay wait for years), a fixed `--rate`, or no
//! pacing at all (`--speed max`).

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// The captured gaps between requests divided by this factor (1.0 = original timing).
    Original { speed: f64 },
    /// A fixed number of requests per second, in capture order.
    Rate(f64),
    /// No pacing (`--speed max`): each request as soon as its worker is free, i.e. as
    /// fast as the targets answer; the order within a captured connection is kept.
    Max,
}

/// A gap that `--max-wait` shortened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CappedGap {
    /// Record id of the request after the gap.
    pub id: String,
    /// The gap after dividing by the speed.
    pub wanted: Duration,
}

/// Turns request timestamps (in capture order) into send offsets from the start.
#[derive(Clone, Debug)]
pub struct Schedule {
    pacing: Pacing,
    max_wait: Duration,
    previous_ts: Option<u64>,
    offset: Duration,
    sent: u64,
    /// Gaps shortened to `max_wait`.
    pub capped: u64,
}

impl Schedule {
    pub fn new(pacing: Pacing, max_wait: Duration) -> Schedule {
        Schedule { pacing, max_wait, previous_ts: None, offset: Duration::ZERO, sent: 0, capped: 0 }
    }

    /// The offset from the start at which request `id`, captured at `ts_ns`, is sent,
    /// and the gap before it if `max_wait` shortened it.
    pub fn next(&mut self, id: &str, ts_ns: u64) -> (Duration, Option<CappedGap>) {
        let mut capped = None;
        match self.pacing {
            Pacing::Original { speed } => {
                // Records of a live input may come slightly out of order: no negative gaps.
                let gap_ns = self.previous_ts.map_or(0, |p| ts_ns.saturating_sub(p));
                let wanted = Duration::from_secs_f64(gap_ns as f64 / 1e9 / speed);
                let gap = if wanted > self.max_wait {
                    self.capped += 1;
                    capped = Some(CappedGap { id: id.to_string(), wanted });
                    self.max_wait
                } else {
                    wanted
                };
                self.offset += gap;
                self.previous_ts = Some(self.previous_ts.map_or(ts_ns, |p| p.max(ts_ns)));
            }
            Pacing::Rate(rate) => self.offset = Duration::from_secs_f64(self.sent as f64 / rate),
            Pacing::Max => {}
        }
        self.sent += 1;
        (self.offset, capped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn offsets(pacing: Pacing, max_wait: u64, ts: &[u64]) -> (Vec<f64>, u64) {
        let mut s = Schedule::new(pacing, Duration::from_secs(max_wait));
        let out = ts.iter().map(|&t| s.next("x", t).0.as_secs_f64()).collect();
        (out, s.capped)
    }

    #[test]
    fn original_pacing_divides_gaps_by_the_speed() {
        let ts = [10 * S, 10 * S + S / 5, 11 * S, 11 * S];
        assert_eq!(offsets(Pacing::Original { speed: 1.0 }, 60, &ts).0, [0.0, 0.2, 1.0, 1.0]);
        assert_eq!(offsets(Pacing::Original { speed: 10.0 }, 60, &ts).0, [0.0, 0.02, 0.1, 0.1]);
        assert_eq!(offsets(Pacing::Rate(4.0), 60, &ts).0, [0.0, 0.25, 0.5, 0.75]);
        assert_eq!(offsets(Pacing::Max, 60, &ts), (vec![0.0; 4], 0), "no waits, nothing capped");
    }

    /// Issue 11, bug 6 ("hangs"), pacing part: one record with a timestamp far from the
    /// rest made --speed pacing wait for years, silently.
    #[test]
    fn hangs_on_a_pacing_outlier() {
        let year = 365 * 24 * 3600 * S;
        // An outlier years after the rest, then traffic again, and one out of order.
        let ts = [S, 2 * S, 2 * S + year, 2 * S + year + S, 2 * S + year];
        let mut s = Schedule::new(Pacing::Original { speed: 2.0 }, Duration::from_secs(10));
        let got: Vec<(Duration, Option<CappedGap>)> = ts.iter().enumerate().map(|(i, &t)| s.next(&format!("r{i}"), t)).collect();
        let secs: Vec<f64> = got.iter().map(|g| g.0.as_secs_f64()).collect();
        assert_eq!(secs, [0.0, 0.5, 10.5, 11.0, 11.0]);
        assert_eq!(s.capped, 1);
        let capped = got[2].1.as_ref().unwrap();
        assert_eq!(capped.id, "r2");
        assert_eq!(capped.wanted, Duration::from_secs(year / S / 2), "the line says how long it would have waited");
        assert!(got.iter().enumerate().all(|(i, g)| g.1.is_none() || i == 2));
    }
}
