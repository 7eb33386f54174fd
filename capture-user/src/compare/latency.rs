//! Latency aggregates of bounded size: HdrHistograms (two significant digits,
//! microseconds) instead of every sample, serialisable so reports can be merged.

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded, in µs (one hour); longer ones are recorded as this.
const MAX_US: u64 = 3_600_000_000;

/// Bucket upper bounds in ms for charts (roughly 1-2-5 per decade); the last bucket is open.
pub const BUCKETS_MS: [f64; 13] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0];

/// Latencies of one side (production or candidate).
#[derive(Clone, Debug)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(Histogram::new_with_bounds(1, MAX_US, 2).expect("valid bounds"))
    }
}

impl PartialEq for Latencies {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Latencies {
    /// Records one latency in ms; negative or non-finite values are not latencies.
    pub fn record_ms(&mut self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            self.0.saturating_record(((ms * 1000.0).round() as u64).clamp(1, MAX_US));
        }
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Both have the same bounds, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// The latency at percentile `p` (0-100), in ms: a value within 1% of a recorded one.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        (!self.0.is_empty()).then(|| self.0.value_at_percentile(p) as f64 / 1000.0)
    }

    pub fn max_ms(&self) -> Option<f64> {
        (!self.0.is_empty()).then(|| self.0.max() as f64 / 1000.0)
    }

    pub fn mean_ms(&self) -> Option<f64> {
        (!self.0.is_empty()).then(|| self.0.mean() / 1000.0)
    }

    /// Counts per chart bucket ([`BUCKETS_MS`], plus one open bucket at the end).
    pub fn bucket_counts(&self) -> Vec<u64> {
        let mut counts = vec![0u64; BUCKETS_MS.len() + 1];
        for v in self.0.iter_recorded() {
            let ms = v.value_iterated_to() as f64 / 1000.0;
            let i = BUCKETS_MS.iter().position(|&b| ms < b).unwrap_or(BUCKETS_MS.len());
            counts[i] += v.count_at_value();
        }
        counts
    }

    /// The histogram in HdrHistogram's compressed V2 format, base64: what other tools
    /// (and `capture report merge`) read back.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::new();
        match V2DeflateSerializer::new().serialize(&self.0, &mut bytes) {
            Ok(_) => base64::engine::general_purpose::STANDARD.encode(bytes),
            Err(_) => String::new(),
        }
    }

    pub fn decode(text: &str) -> Result<Latencies, String> {
        let mut out = Latencies::default();
        if text.is_empty() {
            return Ok(out);
        }
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("histogram: {e}"))?;
        let h: Histogram<u64> = Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| format!("histogram: {e:?}"))?;
        out.0.add(&h).map_err(|e| format!("histogram: {e:?}"))?;
        Ok(out)
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count(),
            p50: self.percentile_ms(50.0),
            p90: self.percentile_ms(90.0),
            p99: self.percentile_ms(99.0),
            max: self.max_ms(),
            mean: self.mean_ms(),
            buckets: self.bucket_counts(),
            histogram: self.encode(),
        }
    }
}

/// Percentiles in ms (`null` without samples), chart bucket counts, and the
/// histogram itself (HdrHistogram V2, compressed, base64) for merging.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    /// Requests per latency bucket: <1, 1-2, 2-5, 5-10, ... ms, ≥10 s.
    pub buckets: Vec<u64>,
    pub histogram: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_within_one_percent_and_bounded_memory() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.record_ms(f64::from(ms));
        }
        let near = |got: Option<f64>, want: f64| (got.unwrap() - want).abs() <= want * 0.01;
        assert!(near(l.percentile_ms(50.0), 50.0) && near(l.percentile_ms(90.0), 90.0) && near(l.percentile_ms(99.0), 99.0));
        assert!(near(l.max_ms(), 100.0));
        assert_eq!(l.count(), 100);
        assert_eq!(Latencies::default().percentile_ms(50.0), None);
        // Small values are exact.
        let mut small = Latencies::default();
        small.record_ms(0.123);
        assert_eq!(small.percentile_ms(50.0), Some(0.123));
        // A million samples take the same room as a hundred: a fixed array of counts.
        let room = l.0.distinct_values();
        for i in 0..1_000_000u64 {
            l.record_ms((i % 100_000) as f64 / 100.0);
        }
        assert_eq!(l.0.distinct_values(), room);
        assert!(room < 4096, "{room} counters");
        l.record_ms(f64::NAN);
        l.record_ms(-1.0);
        assert_eq!(l.count(), 1_000_100);
    }

    #[test]
    fn histograms_round_trip_and_merge() {
        let (mut a, mut b) = (Latencies::default(), Latencies::default());
        for ms in [0.5, 3.0, 12.0] {
            a.record_ms(ms);
        }
        b.record_ms(7000.0);
        let decoded = Latencies::decode(&a.encode()).unwrap();
        assert_eq!(decoded, a);
        let mut merged = decoded;
        merged.merge(&Latencies::decode(&b.summary().histogram).unwrap());
        assert_eq!(merged.count(), 4);
        assert_eq!(merged.bucket_counts(), vec![1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert!(Latencies::decode("not base64!").is_err());
        assert_eq!(Latencies::decode("").unwrap().count(), 0);
    }
}
