//! Counts what a capture variant wrote: requests, and responses captured whole.
//!
//! Reads `.gor` records (a file's, or a Kafka topic's dumped by kafka_dump.py in the
//! same format): `<type> <id> <ts> <latency> len=N [flags]\n<N bytes>\n🐵🙈🙉\n`. This is
//! a checker of the bench's own runs (nginx serving one file), not a general reader.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

const SEPARATOR: &[u8] = "\n🐵🙈🙉\n".as_bytes();
const KAFKA_DUMP_PY: &str = include_str!("kafka_dump.py");

/// What one capture run wrote.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Captured {
    pub requests: u64,
    pub responses: u64,
    /// Responses paired with their request, not cut, status 200, body of the served size.
    pub whole_responses: u64,
    /// Responses flagged `unpaired=1` / `truncated=1` (why some are not whole).
    pub unpaired: u64,
    pub truncated: u64,
}

/// Counts the records of every `.gor` file in `dir` (the agent rotates into name.N.gor).
pub(crate) fn count_dir(dir: &Path, body_size: usize) -> Result<Captured> {
    let mut captured = Captured::default();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "gor") {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            count(BufReader::with_capacity(1 << 20, file), body_size, &mut captured)
                .with_context(|| format!("reading {}", path.display()))?;
        }
    }
    Ok(captured)
}

/// Reads the topic back (inside namespace `ns`) and counts its records: the
/// `expected` records the agent had acknowledged, or what arrives before 3 s of silence.
pub(crate) fn count_kafka(ns: &str, bootstrap: &str, topic: &str, expected: u64, body_size: usize) -> Result<Captured> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", KAFKA_DUMP_PY, bootstrap, topic, &expected.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting python3 to read the topic back (confluent-kafka)")?;
    let mut captured = Captured::default();
    let counted = count(BufReader::with_capacity(1 << 20, child.stdout.take().unwrap()), body_size, &mut captured);
    let status = child.wait()?;
    if !status.success() {
        bail!("reading topic {topic} back failed ({status})");
    }
    counted.with_context(|| format!("records of topic {topic}"))?;
    Ok(captured)
}

fn count(mut input: impl BufRead, body_size: usize, captured: &mut Captured) -> Result<()> {
    let mut header = Vec::new();
    let mut payload = Vec::new();
    let mut separator = [0u8; SEPARATOR.len()];
    loop {
        header.clear();
        if input.read_until(b'\n', &mut header)? == 0 {
            return Ok(());
        }
        let line = String::from_utf8_lossy(&header);
        let fields: Vec<&str> = line.trim_end().split(' ').collect();
        let len: usize = fields
            .iter()
            .find_map(|f| f.strip_prefix("len="))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("record header without len=: {line:?}"))?;
        payload.resize(len, 0);
        input.read_exact(&mut payload).context("record shorter than its len=")?;
        input.read_exact(&mut separator).context("record without its separator")?;
        if separator != SEPARATOR {
            bail!("record not followed by the separator: {line:?}");
        }
        match fields[0] {
            "1" => captured.requests += 1,
            "2" => {
                captured.responses += 1;
                captured.unpaired += u64::from(fields.iter().any(|f| f.starts_with("unpaired=")));
                captured.truncated += u64::from(fields.iter().any(|f| f.starts_with("truncated=")));
                if is_whole_response(&fields[1..], &payload, body_size) {
                    captured.whole_responses += 1;
                }
            }
            other => bail!("unknown record type {other:?}"),
        }
    }
}

/// A 200 paired with its request, not cut, not a part, whose body is the served size.
fn is_whole_response(fields: &[&str], payload: &[u8], body_size: usize) -> bool {
    let flagged = fields.iter().any(|f| f.starts_with("truncated=") || f.starts_with("unpaired=") || f.starts_with("part="));
    let head_len = payload.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    !flagged && payload.starts_with(b"HTTP/1.1 200 ") && head_len.is_some_and(|h| payload.len() - h == body_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, flags: &str, payload: &[u8]) -> Vec<u8> {
        let mut r = format!("{kind} 00112233445566770000000100000001 1 0 len={} client=127.0.0.1:1 server=127.0.0.1:2{flags}\n", payload.len())
            .into_bytes();
        r.extend_from_slice(payload);
        r.extend_from_slice(SEPARATOR);
        r
    }

    fn response(status: &str, body: usize) -> Vec<u8> {
        let mut r = format!("HTTP/1.1 {status}\r\nContent-Length: {body}\r\n\r\n").into_bytes();
        r.extend(std::iter::repeat_n(b'x', body));
        r
    }

    #[test]
    fn counts_requests_and_only_whole_200s_of_the_served_size() {
        let mut input = Vec::new();
        input.extend(record(1, "", b"GET /100.bin HTTP/1.1\r\nHost: a\r\n\r\n"));
        input.extend(record(2, "", &response("200 OK", 100)));
        input.extend(record(1, "", b"GET /100.bin HTTP/1.1\r\nHost: a\r\n\r\n"));
        input.extend(record(2, "", &response("200 OK", 99))); // short body
        input.extend(record(2, "", &response("403 Forbidden", 100)));
        input.extend(record(2, " truncated=1 orig_len=500", &response("200 OK", 100)));
        input.extend(record(2, " unpaired=1", &response("200 OK", 100)));
        // A body that holds the separator stays one record (len= is trusted).
        let mut tricky = response("200 OK", 100 - SEPARATOR.len());
        tricky.extend_from_slice(SEPARATOR);
        input.extend(record(2, "", &tricky));
        let mut captured = Captured::default();
        count(&input[..], 100, &mut captured).unwrap();
        assert_eq!(captured, Captured { requests: 2, responses: 6, whole_responses: 2, unpaired: 1, truncated: 1 });
    }

    #[test]
    fn a_torn_record_is_an_error_not_a_count() {
        let mut input = record(2, "", &response("200 OK", 100));
        input.truncate(input.len() - 3);
        assert!(count(&input[..], 100, &mut Captured::default()).is_err());
        let mut wrong_len = record(2, "", &response("200 OK", 100));
        wrong_len.insert(200, b'x');
        assert!(count(&wrong_len[..], 100, &mut Captured::default()).is_err());
    }
}
