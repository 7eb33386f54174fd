//! `--output` values: where records go.

use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    Stdout,
    /// A `.gor` file; rotated files get `.1`, `.2`, ... before the extension.
    File(PathBuf),
    /// `kafka://host:port[,host:port]/topic`.
    Kafka { brokers: String, topic: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    #[error("output {0:?}: expected `stdout`, `file:///path/name.gor` or `kafka://host:port/topic`")]
    Unknown(String),
    #[error("output {0:?}: a file URL needs an absolute path, e.g. file:///var/lib/capture/out.gor")]
    RelativeFileUrl(String),
    #[error("output {0:?}: expected kafka://host:port[,host:port]/topic")]
    BadKafkaUrl(String),
}

impl std::str::FromStr for OutputSpec {
    type Err = OutputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "stdout" || s == "-" {
            return Ok(OutputSpec::Stdout);
        }
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(OutputError::RelativeFileUrl(s.to_string()));
            }
            return Ok(OutputSpec::File(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("kafka://") {
            let bad = || OutputError::BadKafkaUrl(s.to_string());
            let (brokers, topic) = rest.split_once('/').ok_or_else(bad)?;
            let valid_topic = !topic.is_empty()
                && topic.len() <= 249
                && topic.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            let valid_brokers = !brokers.is_empty()
                && brokers.split(',').all(|b| b.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()));
            if !valid_topic || !valid_brokers {
                return Err(bad());
            }
            return Ok(OutputSpec::Kafka { brokers: brokers.to_string(), topic: topic.to_string() });
        }
        // A bare path is a file too, if it looks like one.
        if s.ends_with(".gor") {
            return Ok(OutputSpec::File(PathBuf::from(s)));
        }
        Err(OutputError::Unknown(s.to_string()))
    }
}

/// Parses sizes like `1000000`, `64KiB`, `100MB`, `1GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a size like 1000000, 64KiB, 100MB or 1GiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use B, KB, KiB, MB, MiB, GB, GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_outputs_and_names_bad_ones() {
        assert_eq!("stdout".parse(), Ok(OutputSpec::Stdout));
        assert_eq!("file:///tmp/a.gor".parse(), Ok(OutputSpec::File("/tmp/a.gor".into())));
        assert_eq!("x.gor".parse(), Ok(OutputSpec::File("x.gor".into())));
        assert_eq!(
            "file://tmp/a.gor".parse::<OutputSpec>(),
            Err(OutputError::RelativeFileUrl("file://tmp/a.gor".into()))
        );
        assert_eq!(
            "kafka://a:9092,b:9093/capture.http".parse(),
            Ok(OutputSpec::Kafka { brokers: "a:9092,b:9093".into(), topic: "capture.http".into() })
        );
        for bad in ["kafka://a:9092", "kafka://a/t", "kafka://:1/t", "kafka://a:1/", "kafka://a:1/t/x"] {
            assert_eq!(bad.parse::<OutputSpec>(), Err(OutputError::BadKafkaUrl(bad.into())), "{bad}");
        }
        let err = "ftp://x".parse::<OutputSpec>().unwrap_err().to_string();
        assert!(err.contains("ftp://x") && err.contains("expected"), "{err}");
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("1000000"), Ok(1_000_000));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("12parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("").is_err());
    }
}
