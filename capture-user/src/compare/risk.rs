//! How much a difference is likely to break a client, as tap-compare users grade it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Risk of a difference. Ordered: `Low < Medium < High`.
///
/// - **high**: the status class changed (2xx → 5xx), a field or header was removed, a
///   JSON value changed type, or the candidate's body cannot be decoded;
/// - **medium**: a value changed (same status class, same type);
/// - **low**: only something was added (a new field or header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    Medium,
    High,
}

impl Risk {
    pub const ALL: [Risk; 3] = [Risk::High, Risk::Medium, Risk::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Risk {
    type Err = String;

    fn from_str(s: &str) -> Result<Risk, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "high" => Ok(Risk::High),
            "medium" => Ok(Risk::Medium),
            "low" => Ok(Risk::Low),
            _ => Err(format!("{s:?}: expected high, medium or low")),
        }
    }
}

/// Counts by risk level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskCounts {
    pub high: u64,
    pub medium: u64,
    pub low: u64,
}

impl RiskCounts {
    pub fn add(&mut self, risk: Risk, n: u64) {
        *self.get_mut(risk) += n;
    }

    pub fn get(&self, risk: Risk) -> u64 {
        match risk {
            Risk::High => self.high,
            Risk::Medium => self.medium,
            Risk::Low => self.low,
        }
    }

    fn get_mut(&mut self, risk: Risk) -> &mut u64 {
        match risk {
            Risk::High => &mut self.high,
            Risk::Medium => &mut self.medium,
            Risk::Low => &mut self.low,
        }
    }

    /// Counted at `threshold` or above.
    pub fn at_least(&self, threshold: Risk) -> u64 {
        Risk::ALL.iter().filter(|r| **r >= threshold).map(|r| self.get(*r)).sum()
    }

    pub fn merge(&mut self, other: &RiskCounts) {
        for r in Risk::ALL {
            self.add(r, other.get(r));
        }
    }

    /// The highest level counted, if any.
    pub fn highest(&self) -> Option<Risk> {
        Risk::ALL.into_iter().find(|r| self.get(*r) > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_order_parse_and_count() {
        assert!(Risk::Low < Risk::Medium && Risk::Medium < Risk::High);
        assert_eq!("HIGH".parse::<Risk>(), Ok(Risk::High));
        assert_eq!("bad".parse::<Risk>().unwrap_err(), "\"bad\": expected high, medium or low");
        let mut c = RiskCounts::default();
        c.add(Risk::Medium, 2);
        c.add(Risk::Low, 5);
        assert_eq!((c.at_least(Risk::High), c.at_least(Risk::Medium), c.at_least(Risk::Low)), (0, 2, 7));
        assert_eq!(c.highest(), Some(Risk::Medium));
        assert_eq!(serde_json::to_string(&Risk::High).unwrap(), "\"high\"");
    }
}
