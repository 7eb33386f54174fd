//! Records: the contract with consumers (GoReplay's payload format).
//!
//! A record value is `"<type> <id> <ts_ns> <latency_ns>\n"` followed by the exact
//! HTTP bytes. Type 1 is a request, 2 the production response. Files and stdout
//! end each record with [`FILE_SEPARATOR`]; Kafka values carry no separator.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::connections::ConnectionInfo;
use crate::http::{HttpMessage, MessageKind};

/// Ends each record in `.gor` files and on stdout (GoReplay's separator).
pub const FILE_SEPARATOR: &[u8] = "\n\u{1F435}\u{1F648}\u{1F649}\n".as_bytes();

pub const TYPE_REQUEST: u8 = b'1';
pub const TYPE_RESPONSE: u8 = b'2';

/// Identifies one agent run; with the connection number it makes record ids and
/// Kafka keys unique across hosts and restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunId(pub u64);

impl RunId {
    /// 64 random bits from the kernel.
    pub fn random() -> RunId {
        let mut buf = [0u8; 8];
        // getrandom(2) cannot fail for 8 bytes once the pool is initialised.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr() as *mut libc::c_void, 8, 0) };
        if n != 8 {
            // Fall back to time and pid: still unique per host and start.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            return RunId(t ^ ((std::process::id() as u64) << 32));
        }
        RunId(u64::from_le_bytes(buf))
    }

    /// Record id (shared by a request and its response): 16 hex digits of run id, 8 of
    /// connection number (together the connection id), 8 of exchange index.
    pub fn record_id(self, conn: u64, exchange: u64) -> String {
        let mut s = String::with_capacity(32);
        push_hex(&mut s, self.0, 16);
        push_hex(&mut s, conn as u32 as u64, 8);
        push_hex(&mut s, exchange as u32 as u64, 8);
        s
    }
}

/// Appends `v` as exactly `digits` lower-case hex digits (hot path: no formatter).
fn push_hex(s: &mut String, v: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        s.push(HEX[((v >> (i * 4)) & 0xf) as usize] as char);
    }
}

/// Appends `v` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Metadata that travels beside the value (Kafka headers; not in `.gor` files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub node: std::sync::Arc<str>,
    pub ifindex: u32,
    pub truncated: bool,
    pub original_len: u64,
    /// Wall-clock ns of the first and last byte of this message.
    pub start_ns: u64,
    pub end_ns: u64,
    /// For responses: wall-clock ns of the request's first and last byte.
    pub request_start_ns: Option<u64>,
    pub request_end_ns: Option<u64>,
    pub method: Option<String>,
    pub target: Option<String>,
    pub status: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: MessageKind,
    /// Connection id (24 hex digits, the Kafka key) + exchange index (8 hex digits).
    pub id: String,
    /// Wall-clock ns: the request's first byte (type 1) or the response's first byte (type 2).
    pub ts_ns: u64,
    /// Type 1: request transfer time (first to last byte). Type 2: time from the
    /// request's last byte to the response's first byte (0 if unpaired).
    pub latency_ns: u64,
    pub payload: Bytes,
    pub meta: RecordMeta,
}

/// What every record of this agent run shares.
#[derive(Clone, Debug)]
pub struct RecordContext {
    pub run: RunId,
    /// Node name (hostname, or `--node-name`); shared by every record.
    pub node: std::sync::Arc<str>,
    /// Wall-clock ns minus kernel monotonic ns, measured at start.
    pub wall_offset_ns: i64,
}

impl RecordContext {
    pub fn new(node: String) -> RecordContext {
        RecordContext { run: RunId::random(), node: node.into(), wall_offset_ns: wall_offset_ns() }
    }

    /// Kernel timestamps (CLOCK_MONOTONIC, as `bpf_ktime_get_ns`) to wall-clock ns.
    pub fn to_wall(&self, mono_ns: u64) -> u64 {
        (mono_ns as i64).saturating_add(self.wall_offset_ns).max(0) as u64
    }
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns.
pub fn wall_offset_ns() -> i64 {
    clock_ns(libc::CLOCK_REALTIME) as i64 - clock_ns(libc::CLOCK_MONOTONIC) as i64
}

/// Reads a clock in ns.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Record {
    /// Builds a record from a framed message of connection `conn` (moving its bytes).
    pub fn from_message(msg: HttpMessage, conn: &ConnectionInfo, ctx: &RecordContext) -> Record {
        let (run, to_wall) = (ctx.run, |t| ctx.to_wall(t));
        let (client, server, ifindex, node) = (conn.flow.client, conn.flow.server, conn.ifindex, &ctx.node);
        let conn = conn.id;
        let latency_ns = match msg.kind {
            MessageKind::Request => msg.end_ns.saturating_sub(msg.start_ns),
            MessageKind::Response => {
                msg.request_end_ns.map(|r| msg.start_ns.saturating_sub(r)).unwrap_or(0)
            }
        };
        Record {
            kind: msg.kind,
            id: run.record_id(conn, msg.exchange),
            ts_ns: to_wall(msg.start_ns),
            latency_ns,
            payload: msg.bytes,
            meta: RecordMeta {
                client,
                server,
                node: node.clone(),
                ifindex,
                truncated: msg.truncated,
                original_len: msg.original_len,
                start_ns: to_wall(msg.start_ns),
                end_ns: to_wall(msg.end_ns),
                request_start_ns: msg.request_start_ns.map(&to_wall),
                request_end_ns: msg.request_end_ns.map(&to_wall),
                method: msg.method,
                target: msg.target,
                status: msg.status,
            },
        }
    }

    /// Kafka key: all records of one connection share it, so they stay in order.
    pub fn connection_id(&self) -> &str {
        &self.id[..24]
    }

    pub fn type_byte(&self) -> u8 {
        match self.kind {
            MessageKind::Request => TYPE_REQUEST,
            MessageKind::Response => TYPE_RESPONSE,
        }
    }

    /// Appends the header line `"<type> <id> <ts_ns> <latency_ns>\n"` to `out`.
    pub fn write_header_line(&self, out: &mut Vec<u8>) {
        out.push(self.type_byte());
        out.push(b' ');
        out.extend_from_slice(self.id.as_bytes());
        out.push(b' ');
        push_decimal(out, self.ts_ns);
        out.push(b' ');
        push_decimal(out, self.latency_ns);
        out.push(b'\n');
    }

    /// The header line, without the payload.
    pub fn header_line(&self) -> String {
        let mut out = Vec::with_capacity(64);
        self.write_header_line(&mut out);
        String::from_utf8(out).expect("ASCII")
    }

    /// The Kafka value: header line + payload, no separator.
    pub fn value(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.payload.len());
        self.write_header_line(&mut out);
        out.extend_from_slice(&self.payload);
        out
    }
}

/// A record read back from a `.gor` file or a Kafka value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRecord {
    pub type_byte: u8,
    pub id: String,
    pub ts_ns: u64,
    pub latency_ns: i64,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("record has no header line")]
    NoHeader,
    #[error("bad record header {0:?}: expected \"<type> <id> <ts_ns> <latency_ns>\"")]
    BadHeader(String),
}

/// Parses one record value (no separator).
pub fn parse_value(value: &[u8]) -> Result<ParsedRecord, ParseError> {
    let nl = value.iter().position(|&b| b == b'\n').ok_or(ParseError::NoHeader)?;
    let line = String::from_utf8_lossy(&value[..nl]).into_owned();
    let mut parts = line.split(' ');
    let bad = || ParseError::BadHeader(line.clone());
    let ty = parts.next().filter(|t| t.len() == 1).ok_or_else(bad)?.as_bytes()[0];
    let id = parts.next().ok_or_else(bad)?.to_string();
    let ts_ns = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
    // GoReplay writes -1 for unknown latency; accept a missing field too.
    let latency_ns = parts.next().map(|t| t.parse().map_err(|_| bad())).transpose()?.unwrap_or(-1);
    Ok(ParsedRecord { type_byte: ty, id, ts_ns, latency_ns, payload: value[nl + 1..].to_vec() })
}

/// Splits the contents of a `.gor` file into record values.
pub fn split_file(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        match find(rest, FILE_SEPARATOR) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + FILE_SEPARATOR.len()..];
            }
            None => {
                out.push(rest);
                break;
            }
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: MessageKind, bytes: &'static [u8]) -> HttpMessage {
        HttpMessage {
            kind,
            exchange: 3,
            paired: true,
            bytes: Bytes::from_static(bytes),
            original_len: bytes.len() as u64,
            truncated: false,
            start_ns: 1_000,
            end_ns: 1_500,
            request_start_ns: (kind == MessageKind::Response).then_some(100),
            request_end_ns: (kind == MessageKind::Response).then_some(400),
            method: Some("GET".into()),
            target: Some("/".into()),
            status: None,
        }
    }

    #[test]
    fn request_and_response_share_id_and_round_trip() {
        let ctx = RecordContext { run: RunId(0xabcdef), node: "node".into(), wall_offset_ns: 10 };
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let conn = ConnectionInfo {
            id: 7,
            flow: crate::flow::FlowKey { client: addr, server: addr },
            ifindex: 1,
            opened_ns: 0,
            saw_syn: true,
        };
        let req = Record::from_message(message(MessageKind::Request, b"GET / HTTP/1.1\r\n\r\n"), &conn, &ctx);
        let resp = Record::from_message(message(MessageKind::Response, b"HTTP/1.1 200 OK\r\n\r\n"), &conn, &ctx);
        assert_eq!(req.id, resp.id);
        assert_eq!(req.id, "0000000000abcdef0000000700000003");
        assert_eq!(req.connection_id(), "0000000000abcdef00000007");
        assert_eq!(req.latency_ns, 500);
        assert_eq!(resp.latency_ns, 600);
        let parsed = parse_value(&req.value()).unwrap();
        assert_eq!(parsed.type_byte, b'1');
        assert_eq!(parsed.ts_ns, 1_010);
        assert_eq!(parsed.payload, b"GET / HTTP/1.1\r\n\r\n");
        let mut file = req.value();
        file.extend_from_slice(FILE_SEPARATOR);
        file.extend_from_slice(&resp.value());
        file.extend_from_slice(FILE_SEPARATOR);
        let values = split_file(&file);
        assert_eq!(values.len(), 2);
        assert_eq!(parse_value(values[1]).unwrap().type_byte, b'2');
    }

    #[test]
    fn ids_and_numbers_format_like_the_formatter() {
        let run = RunId(0x0123_4567_89ab_cdef);
        assert_eq!(run.record_id(0x1_0000_0002, 0xff), format!("{:016x}{:08x}{:08x}", run.0, 2u32, 0xffu32));
        for v in [0u64, 9, 10, 1_795_587_641_486_497_627, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
    }

    #[test]
    fn goreplay_header_with_minus_one_latency_parses() {
        let p = parse_value(b"1 8e9f 1439818151013404131 -1\nGET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(p.latency_ns, -1);
        assert_eq!(parse_value(b"junk"), Err(ParseError::NoHeader));
        assert!(matches!(parse_value(b"1 x notanumber 0\n"), Err(ParseError::BadHeader(_))));
    }
}
