//! Records: the contract with consumers (GoReplay's payload format).
//!
//! A record value is `"<type> <id> <ts_ns> <latency_ns>[ key=value]*\n"` followed by
//! the exact HTTP bytes. Type 1 is a request, 2 the production response. Files and
//! stdout end each record with [`FILE_SEPARATOR`]; Kafka values carry no separator.
//!
//! The `key=value` tokens after GoReplay's four fields carry our metadata (GoReplay's
//! reader splits the line on spaces and ignores fields past the fourth). The `len`
//! token is the payload length: our reader trusts it over the separator, so a body
//! that contains the separator cannot forge a record, and a torn record is rejected.

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

/// Appends `addr` as its `Display` writes it (IPv4 without the formatter: hot path).
pub fn push_socket_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    use std::io::Write;
    match addr {
        SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, octet as u64);
            }
            out.push(b':');
            push_decimal(out, a.port() as u64);
        }
        // Writing to a Vec cannot fail.
        SocketAddr::V6(a) => drop(write!(out, "{a}")),
    }
}

/// Slots of [`AddrTexts`].
const ADDR_SLOTS: usize = 256;

/// The ` client=A server=B` text of header lines, kept per connection (by its two
/// addresses) so each record does not format both socket addresses again (hot path).
#[derive(Debug, Default)]
pub struct AddrTexts {
    /// Direct-mapped on the client port; a slot is overwritten by the next connection
    /// that maps to it.
    slots: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

impl AddrTexts {
    /// Appends ` client=<client> server=<server>` to `out`.
    fn push(&mut self, out: &mut Vec<u8>, client: &SocketAddr, server: &SocketAddr) {
        if self.slots.is_empty() {
            let unset = SocketAddr::from(([0, 0, 0, 0], 0));
            self.slots.resize_with(ADDR_SLOTS, || (unset, unset, Vec::new()));
        }
        let (c, s, text) = &mut self.slots[client.port() as usize % ADDR_SLOTS];
        if text.is_empty() || c != client || s != server {
            (*c, *s) = (*client, *server);
            text.clear();
            push_addrs(text, client, server);
        }
        out.extend_from_slice(text);
    }
}

/// Appends ` client=<client> server=<server>`.
fn push_addrs(out: &mut Vec<u8>, client: &SocketAddr, server: &SocketAddr) {
    out.extend_from_slice(b" client=");
    push_socket_addr(out, client);
    out.extend_from_slice(b" server=");
    push_socket_addr(out, server);
}

/// Appends `v` in decimal (itoa: two digits per step, no formatter; hot path).
pub fn push_decimal(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Bytes of a header-line token's text value written as `%XX`: those that would end
/// the token or the line (space, control bytes, DEL), `%` itself, and non-ASCII.
const TOKEN_TEXT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b' ').add(b'%');

/// Appends a text value of a header-line token (see [`TOKEN_TEXT`]).
fn push_token_text(out: &mut Vec<u8>, text: &[u8]) {
    for piece in percent_encoding::percent_encode(text, TOKEN_TEXT) {
        out.extend_from_slice(piece.as_bytes());
    }
}

/// Reverses [`push_token_text`] (a `%` not followed by two hex digits stays as is).
fn token_text(value: &str) -> String {
    percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned()
}

/// Metadata of a record: in Kafka headers, and (the part replay needs) in the
/// header line's `key=value` tokens, see [`HeaderMeta`].
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
    /// Responses: matched with its request with certainty (always true for requests).
    pub paired: bool,
    /// Framing of this message was ambiguous (e.g. both Content-Length and
    /// Transfer-Encoding): the reason, as a token without spaces.
    pub ambiguous: Option<&'static str>,
    /// Secrets in it were replaced by keyed tokens before any output saw it.
    pub redacted: bool,
    /// Captured as TLS plaintext (OpenSSL uprobes), not from TCP payloads.
    pub tls: bool,
    /// Part `index` (1-based) of `count` of one message carried in several records.
    pub part: Option<(u32, u32)>,
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
        let (client, server, ifindex, node, tls) = (conn.flow.client, conn.flow.server, conn.ifindex, &ctx.node, conn.tls);
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
                paired: msg.paired,
                ambiguous: msg.ambiguous,
                redacted: false,
                tls,
                part: None,
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

    /// Appends the header line `"<type> <id> <ts_ns> <latency_ns> len=N ...\n"` to `out`
    /// (tokens in the order [`HeaderMeta`] documents; flags only when set).
    pub fn write_header_line(&self, out: &mut Vec<u8>) {
        self.write_line(out, None, None);
    }

    /// [`Record::write_header_line`], with the address text kept in `addrs`.
    pub fn write_header_line_cached(&self, out: &mut Vec<u8>, addrs: &mut AddrTexts) {
        self.write_line(out, None, Some(addrs));
    }

    /// The header line with every piece of metadata (Kafka batch values, where no Kafka
    /// header carries it): the tokens of [`Record::write_header_line`], then `node=`,
    /// `iface=` (`iface` given; empty for TLS plaintext), `orig_len=` (always),
    /// `end_ns=`, and when known `req_start_ns= req_end_ns= method= target= status=`.
    /// Text values are percent-encoded where they hold a space, a control byte or `%`.
    pub fn write_full_header_line(&self, out: &mut Vec<u8>, iface: &str) {
        self.write_line(out, Some(iface), None);
    }

    fn write_line(&self, out: &mut Vec<u8>, full: Option<&str>, addrs: Option<&mut AddrTexts>) {
        let m = &self.meta;
        out.push(self.type_byte());
        out.push(b' ');
        out.extend_from_slice(self.id.as_bytes());
        out.push(b' ');
        push_decimal(out, self.ts_ns);
        out.push(b' ');
        // Readers (ours, GoReplay's) take the latency as a signed number.
        push_decimal(out, self.latency_ns.min(i64::MAX as u64));
        out.extend_from_slice(b" len=");
        push_decimal(out, self.payload.len() as u64);
        match addrs {
            Some(addrs) => addrs.push(out, &m.client, &m.server),
            None => push_addrs(out, &m.client, &m.server),
        }
        if m.truncated {
            out.extend_from_slice(b" truncated=1 orig_len=");
            push_decimal(out, m.original_len);
        }
        if !m.paired {
            out.extend_from_slice(b" unpaired=1");
        }
        if let Some(reason) = m.ambiguous {
            out.extend_from_slice(b" ambiguous=");
            out.extend_from_slice(reason.as_bytes());
        }
        if m.redacted {
            out.extend_from_slice(b" redacted=1");
        }
        if m.tls {
            out.extend_from_slice(b" tls=1");
        }
        if let Some((index, count)) = m.part {
            out.extend_from_slice(b" part=");
            push_decimal(out, index as u64);
            out.push(b'/');
            push_decimal(out, count as u64);
        }
        if let Some(iface) = full {
            out.extend_from_slice(b" node=");
            push_token_text(out, m.node.as_bytes());
            out.extend_from_slice(b" iface=");
            push_token_text(out, iface.as_bytes());
            if !m.truncated {
                out.extend_from_slice(b" orig_len=");
                push_decimal(out, m.original_len);
            }
            out.extend_from_slice(b" end_ns=");
            push_decimal(out, m.end_ns);
            if let Some(v) = m.request_start_ns {
                out.extend_from_slice(b" req_start_ns=");
                push_decimal(out, v);
            }
            if let Some(v) = m.request_end_ns {
                out.extend_from_slice(b" req_end_ns=");
                push_decimal(out, v);
            }
            if let Some(v) = &m.method {
                out.extend_from_slice(b" method=");
                push_token_text(out, v.as_bytes());
            }
            if let Some(v) = &m.target {
                out.extend_from_slice(b" target=");
                push_token_text(out, v.as_bytes());
            }
            if let Some(v) = m.status {
                out.extend_from_slice(b" status=");
                push_decimal(out, v as u64);
            }
        }
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

/// Our metadata tokens of a header line, in the order they are written:
/// `len=N` (payload bytes after the line; always written by this agent),
/// `client=ip:port server=ip:port` (captured addresses), `truncated=1 orig_len=N`
/// (the message was cut at capture; N is its length on the wire), `unpaired=1` (a
/// response not matched with certainty to a request), `ambiguous=REASON` (framing
/// was ambiguous, the server may have read it differently), `redacted=1`, `tls=1`,
/// `part=I/N` (part I of N of one message); in Kafka batch values also `node=`,
/// `iface=`, `orig_len=`, `end_ns=`, `req_start_ns=`, `req_end_ns=`, `method=`,
/// `target=`, `status=` (see [`Record::write_full_header_line`]). Unknown tokens are
/// ignored, so newer writers stay readable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMeta {
    pub len: Option<usize>,
    pub client: Option<String>,
    pub server: Option<String>,
    pub truncated: bool,
    pub original_len: Option<u64>,
    pub unpaired: bool,
    pub ambiguous: Option<String>,
    pub redacted: bool,
    pub tls: bool,
    pub part: Option<(u32, u32)>,
    pub node: Option<String>,
    pub iface: Option<String>,
    pub end_ns: Option<u64>,
    pub request_start_ns: Option<u64>,
    pub request_end_ns: Option<u64>,
    pub method: Option<String>,
    pub target: Option<String>,
    pub status: Option<u16>,
}

/// A record read back from a `.gor` file or a Kafka value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRecord {
    pub type_byte: u8,
    pub id: String,
    pub ts_ns: u64,
    pub latency_ns: i64,
    pub meta: HeaderMeta,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// No newline ends the header line.
    #[error("record has no header line")]
    NoHeader,
    /// The four GoReplay fields are missing or malformed.
    #[error("bad record header {0:?}: expected \"<type> <id> <ts_ns> <latency_ns>\"")]
    BadHeader(String),
    /// One of our `key=value` tokens has a value that does not parse.
    #[error("bad record metadata {0:?} in the header line")]
    BadMeta(String),
    /// The `len` token disagrees with the bytes that follow (torn or forged record).
    #[error("record {id} says len={expected} but carries {actual} payload bytes")]
    LengthMismatch { id: String, expected: usize, actual: usize },
    /// A file ends inside a record (written partly, e.g. on a full disk).
    #[error("file ends inside a record (torn write)")]
    Torn,
}

/// Parses the header line (without its newline).
fn parse_header_line(line: &[u8]) -> Result<(u8, String, u64, i64, HeaderMeta), ParseError> {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let bad = || ParseError::BadHeader(line.clone().into_owned());
    let ty = parts.next().filter(|t| t.len() == 1).ok_or_else(bad)?.as_bytes()[0];
    let id = parts.next().filter(|t| !t.is_empty()).ok_or_else(bad)?.to_string();
    let ts_ns = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
    // GoReplay writes -1 for unknown latency; accept a missing field too.
    let latency_ns = parts.next().map(|t| t.parse().map_err(|_| bad())).transpose()?.unwrap_or(-1);
    let mut meta = HeaderMeta::default();
    for token in parts {
        let Some((key, value)) = token.split_once('=') else { continue };
        let bad_meta = || ParseError::BadMeta(token.to_string());
        let flag = |v: &str| match v {
            "1" => Ok(true),
            "0" => Ok(false),
            _ => Err(bad_meta()),
        };
        match key {
            "len" => meta.len = Some(value.parse().map_err(|_| bad_meta())?),
            "client" => meta.client = Some(value.to_string()),
            "server" => meta.server = Some(value.to_string()),
            "truncated" => meta.truncated = flag(value)?,
            "orig_len" => meta.original_len = Some(value.parse().map_err(|_| bad_meta())?),
            "unpaired" => meta.unpaired = flag(value)?,
            "ambiguous" => meta.ambiguous = Some(value.to_string()),
            "redacted" => meta.redacted = flag(value)?,
            "tls" => meta.tls = flag(value)?,
            "part" => {
                let (i, n) = value.split_once('/').ok_or_else(bad_meta)?;
                let (i, n): (u32, u32) = (i.parse().map_err(|_| bad_meta())?, n.parse().map_err(|_| bad_meta())?);
                if i == 0 || i > n {
                    return Err(bad_meta());
                }
                meta.part = Some((i, n));
            }
            "node" => meta.node = Some(token_text(value)),
            "iface" => meta.iface = Some(token_text(value)),
            "end_ns" => meta.end_ns = Some(value.parse().map_err(|_| bad_meta())?),
            "req_start_ns" => meta.request_start_ns = Some(value.parse().map_err(|_| bad_meta())?),
            "req_end_ns" => meta.request_end_ns = Some(value.parse().map_err(|_| bad_meta())?),
            "method" => meta.method = Some(token_text(value)),
            "target" => meta.target = Some(token_text(value)),
            "status" => meta.status = Some(value.parse().map_err(|_| bad_meta())?),
            _ => {}
        }
    }
    Ok((ty, id, ts_ns, latency_ns, meta))
}

/// Parses one record value (no separator). A `len` token must match the payload.
pub fn parse_value(value: &[u8]) -> Result<ParsedRecord, ParseError> {
    let nl = value.iter().position(|&b| b == b'\n').ok_or(ParseError::NoHeader)?;
    let (type_byte, id, ts_ns, latency_ns, meta) = parse_header_line(&value[..nl])?;
    let payload = &value[nl + 1..];
    if let Some(expected) = meta.len {
        if expected != payload.len() {
            return Err(ParseError::LengthMismatch { id, expected, actual: payload.len() });
        }
    }
    Ok(ParsedRecord { type_byte, id, ts_ns, latency_ns, meta, payload: payload.to_vec() })
}

/// Splits the contents of a `.gor` file into record values (without separators).
///
/// A record whose header line has a `len` token spans exactly that many payload bytes
/// and must be followed by the separator; otherwise it is torn or forged: it is
/// returned as an error and reading resumes at the next line that starts a whole
/// record. Records without `len` (GoReplay's files) end at the next separator.
pub fn split_file(data: &[u8]) -> Vec<Result<&[u8], ParseError>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        match split_next(&data[pos..], true) {
            Split::Record(value, used) => {
                out.push(Ok(value));
                pos += used;
            }
            Split::Bad(e, used) => {
                out.push(Err(e));
                pos += used;
            }
            Split::NeedMore => unreachable!("at the end of the data nothing more is needed"),
        }
    }
    out
}

/// What starts the remaining bytes of a `.gor` file (see [`split_file`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Split<'a> {
    /// A record value, and the bytes it takes with its separator.
    Record(&'a [u8], usize),
    /// Bytes that are no whole record (torn or forged), and how many to skip.
    Bad(ParseError, usize),
    /// The bytes end before this can be told; only when `at_end` is false.
    NeedMore,
}

/// The record (or bad bytes) at the start of `rest`. `at_end`: no bytes follow
/// `rest` in the file; otherwise [`Split::NeedMore`] asks for more when `rest` ends
/// too early to tell, so a reader can go through a file in pieces.
pub fn split_next(rest: &[u8], at_end: bool) -> Split<'_> {
    let Some(nl) = memchr::memchr(b'\n', rest) else {
        return if at_end { Split::Bad(ParseError::Torn, rest.len()) } else { Split::NeedMore };
    };
    let header = parse_header_line(&rest[..nl]);
    if let Some(len) = header.as_ref().ok().and_then(|h| h.4.len) {
        if let Some(end) = whole_record_end(rest, nl, len) {
            return Split::Record(&rest[..end], end + FILE_SEPARATOR.len());
        }
        let wanted = nl.saturating_add(1).saturating_add(len).saturating_add(FILE_SEPARATOR.len());
        if !at_end && rest.len() < wanted {
            return Split::NeedMore;
        }
        let id = header.map(|h| h.1).unwrap_or_default();
        // Candidates: every line start after the header line.
        let next = std::iter::once(nl + 1)
            .chain(memchr::memchr_iter(b'\n', &rest[nl + 1..]).map(|i| nl + 1 + i + 1))
            .find(|&p| p < rest.len() && record_at(&rest[p..]).is_some());
        return match next {
            Some(p) => Split::Bad(ParseError::LengthMismatch { id, expected: len, actual: p - nl - 1 }, p),
            None if at_end => Split::Bad(ParseError::Torn, rest.len()),
            None => Split::NeedMore,
        };
    }
    match find(rest, FILE_SEPARATOR) {
        Some(i) => Split::Record(&rest[..i], i + FILE_SEPARATOR.len()),
        // A GoReplay file without a final separator: GoReplay accepts the last record.
        None if at_end => Split::Record(rest, rest.len()),
        None => Split::NeedMore,
    }
}

/// End of the value (before the separator) of a record whose header line ends at
/// `nl` and declares `len` payload bytes, if the separator follows exactly there.
fn whole_record_end(rest: &[u8], nl: usize, len: usize) -> Option<usize> {
    let end = nl.checked_add(1)?.checked_add(len)?;
    (rest.len() >= end && rest[end..].starts_with(FILE_SEPARATOR)).then_some(end)
}

/// Whether `rest` starts with a whole record that declares its length.
fn record_at(rest: &[u8]) -> Option<usize> {
    let nl = memchr::memchr(b'\n', rest)?;
    let len = parse_header_line(&rest[..nl]).ok()?.4.len?;
    whole_record_end(rest, nl, len)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formatter-free address writer agrees with `Display` (headers and Kafka
    /// values carry what readers parse with the standard library).
    #[test]
    fn socket_addrs_are_written_as_display_writes_them() {
        for a in ["0.0.0.0:0", "10.0.0.1:8080", "255.255.255.255:65535", "127.0.0.1:80", "[::1]:80", "[fd00::1]:443", "[::ffff:10.0.0.1]:1"] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            push_socket_addr(&mut out, &addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
        }
    }

    fn message(kind: MessageKind, bytes: &'static [u8]) -> HttpMessage {
        HttpMessage {
            kind,
            exchange: 3,
            paired: true,
            bytes: Bytes::from_static(bytes),
            original_len: bytes.len() as u64,
            truncated: false,
            ambiguous: None,
            start_ns: 1_000,
            end_ns: 1_500,
            request_start_ns: (kind == MessageKind::Response).then_some(100),
            request_end_ns: (kind == MessageKind::Response).then_some(400),
            method: Some("GET".into()),
            target: Some("/".into()),
            status: None,
            head: None,
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
            tls: false,
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
        let values: Vec<&[u8]> = split_file(&file).into_iter().map(Result::unwrap).collect();
        assert_eq!(values.len(), 2);
        let resp = parse_value(values[1]).unwrap();
        assert_eq!(resp.type_byte, b'2');
        assert_eq!(resp.meta.len, Some(b"HTTP/1.1 200 OK\r\n\r\n".len()));
        assert_eq!((resp.meta.client.as_deref(), resp.meta.server.as_deref()), (Some("127.0.0.1:1"), Some("127.0.0.1:1")));
        assert!(!resp.meta.truncated && !resp.meta.unpaired && resp.meta.part.is_none());
    }

    /// Batch values carry in the header line what Kafka headers carry per record.
    #[test]
    fn full_header_line_carries_every_kafka_header_value() {
        let ctx = RecordContext { run: RunId(1), node: "node a%".into(), wall_offset_ns: 0 };
        let mut msg = message(MessageKind::Response, b"HTTP/1.1 200 OK\r\n\r\n");
        msg.status = Some(200);
        msg.target = Some("/a b".into());
        let mut resp = Record::from_message(msg, &conn(), &ctx);
        resp.meta.tls = true;
        let mut line = Vec::new();
        resp.write_full_header_line(&mut line, "eth0");
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(text.starts_with(&resp.header_line()[..resp.header_line().len() - 1]), "{text}");
        line.extend_from_slice(&resp.payload);
        let m = parse_value(&line).unwrap().meta;
        assert_eq!((m.node.as_deref(), m.iface.as_deref()), (Some("node a%"), Some("eth0")));
        assert_eq!((m.original_len, m.end_ns, m.request_start_ns, m.request_end_ns), (Some(19), Some(1_500), Some(100), Some(400)));
        assert_eq!((m.method.as_deref(), m.target.as_deref(), m.status), (Some("GET"), Some("/a b"), Some(200)));
        assert!(m.tls && !m.redacted && !m.truncated);
        assert!(text.contains(" node=node%20a%25 ") && text.contains(" target=/a%20b "), "{text}");
    }

    fn conn() -> ConnectionInfo {
        let client: SocketAddr = "[fd00::2]:40000".parse().unwrap();
        let server: SocketAddr = "[fd00::1]:80".parse().unwrap();
        ConnectionInfo { id: 1, flow: crate::flow::FlowKey { client, server }, ifindex: 1, opened_ns: 0, saw_syn: true, tls: false }
    }

    fn gor_file(records: &[&Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            out.extend_from_slice(&r.value());
            out.extend_from_slice(FILE_SEPARATOR);
        }
        out
    }

    #[test]
    fn every_metadata_token_round_trips() {
        let ctx = RecordContext { run: RunId(1), node: "n".into(), wall_offset_ns: 0 };
        let mut rec = Record::from_message(message(MessageKind::Response, b"HTTP/1.1 200 OK\r\n\r\n"), &conn(), &ctx);
        rec.meta.truncated = true;
        rec.meta.original_len = 3_000_000;
        rec.meta.paired = false;
        rec.meta.ambiguous = Some("content_length_and_chunked");
        rec.meta.redacted = true;
        rec.meta.tls = true;
        rec.meta.part = Some((2, 3));
        let line = rec.header_line();
        assert!(line.ends_with(
            " len=19 client=[fd00::2]:40000 server=[fd00::1]:80 truncated=1 orig_len=3000000 unpaired=1 \
             ambiguous=content_length_and_chunked redacted=1 tls=1 part=2/3\n"
        ), "{line}");
        let meta = parse_value(&rec.value()).unwrap().meta;
        let want = HeaderMeta {
            len: Some(19),
            client: Some("[fd00::2]:40000".into()),
            server: Some("[fd00::1]:80".into()),
            truncated: true,
            original_len: Some(3_000_000),
            unpaired: true,
            ambiguous: Some("content_length_and_chunked".into()),
            redacted: true,
            tls: true,
            part: Some((2, 3)),
            ..HeaderMeta::default()
        };
        assert_eq!(meta, want);
        // GoReplay's reader takes the first four space-separated fields: they are unchanged.
        let fields: Vec<&str> = line.trim_end().split(' ').take(4).collect();
        assert_eq!(fields, [&"2".to_string(), &rec.id, &rec.ts_ns.to_string(), &rec.latency_ns.to_string()].map(|s| s.as_str()));
        assert!(matches!(parse_value(b"1 x 1 0 part=0/2\n"), Err(ParseError::BadMeta(_))));
        assert!(matches!(parse_value(b"1 x 1 0 len=abc\n"), Err(ParseError::BadMeta(_))));
        assert_eq!(parse_value(b"1 x 1 0 future=thing\nGET").unwrap().payload, b"GET");
    }

    /// Issue 10, finding 4: a request body holding the separator and a fake record
    /// was read back as two records (a forged GET with a forged response).
    #[test]
    fn forged_separator_in_a_body_is_not_a_record() {
        let ctx = RecordContext { run: RunId(2), node: "n".into(), wall_offset_ns: 0 };
        let forged = "POST /upload HTTP/1.1\r\nContent-Length: 120\r\n\r\nx\n\u{1F435}\u{1F648}\u{1F649}\n\
                      1 00000000000000010000000100000009 1 0\nGET /forged?steal=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut msg = message(MessageKind::Request, b"");
        msg.bytes = Bytes::from(forged.as_bytes().to_vec());
        let post = Record::from_message(msg, &conn(), &ctx);
        let after = Record::from_message(message(MessageKind::Response, b"HTTP/1.1 200 OK\r\n\r\n"), &conn(), &ctx);
        let file = gor_file(&[&post, &after]);
        let values: Vec<&[u8]> = split_file(&file).into_iter().map(Result::unwrap).collect();
        assert_eq!(values.len(), 2, "the body's separator does not split the record");
        assert_eq!(parse_value(values[0]).unwrap().payload, forged.as_bytes());
        assert_eq!(parse_value(values[1]).unwrap().type_byte, b'2');
    }

    /// Issue 10, finding 2: a header line written without its payload (full disk) was
    /// glued to the next record and read back without an error.
    #[test]
    fn torn_record_on_a_full_disk_is_rejected() {
        let ctx = RecordContext { run: RunId(3), node: "n".into(), wall_offset_ns: 0 };
        let a = Record::from_message(message(MessageKind::Request, b"GET /a HTTP/1.1\r\n\r\n"), &conn(), &ctx);
        let b = Record::from_message(message(MessageKind::Request, b"GET /b HTTP/1.1\r\n\r\n"), &conn(), &ctx);
        let c = Record::from_message(message(MessageKind::Request, b"GET /c HTTP/1.1\r\n\r\n"), &conn(), &ctx);
        // `a` whole, then only `b`'s header line, then `c` whole.
        let mut file = gor_file(&[&a]);
        file.extend_from_slice(b.header_line().as_bytes());
        file.extend_from_slice(&gor_file(&[&c]));
        let results = split_file(&file);
        assert_eq!(results.len(), 3, "{results:?}");
        assert_eq!(parse_value(results[0].as_ref().unwrap()).unwrap().payload, b"GET /a HTTP/1.1\r\n\r\n");
        assert!(matches!(results[1], Err(ParseError::LengthMismatch { .. })), "{:?}", results[1]);
        assert_eq!(parse_value(results[2].as_ref().unwrap()).unwrap().payload, b"GET /c HTTP/1.1\r\n\r\n", "the next whole record is found again");
        // A file cut inside the last record.
        let whole = gor_file(&[&a, &c]);
        for cut in [whole.len() - 1, whole.len() - FILE_SEPARATOR.len(), whole.len() - 5 - FILE_SEPARATOR.len()] {
            let results = split_file(&whole[..cut]);
            assert_eq!(results.len(), 2, "cut at {cut}");
            assert!(results[0].is_ok());
            assert!(results[1].is_err(), "cut at {cut}: {:?}", results[1]);
        }
        // A Kafka value whose payload does not match its length.
        let mut value = a.value();
        value.pop();
        assert!(matches!(parse_value(&value), Err(ParseError::LengthMismatch { expected: 19, actual: 18, .. })));
    }

    #[test]
    fn goreplay_files_without_length_split_on_the_separator() {
        let file = "1 8e9f 1 -1\nGET /a HTTP/1.1\r\n\r\n\n\u{1F435}\u{1F648}\u{1F649}\n2 8e9f 2 -1\nHTTP/1.1 200 OK\r\n\r\n";
        let values: Vec<&[u8]> = split_file(file.as_bytes()).into_iter().map(Result::unwrap).collect();
        assert_eq!(values.len(), 2);
        assert_eq!(parse_value(values[1]).unwrap().payload, b"HTTP/1.1 200 OK\r\n\r\n");
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

    #[test]
    fn cached_address_text_gives_the_same_header_lines() {
        let ctx = RecordContext { run: RunId(1), node: "node".into(), wall_offset_ns: 0 };
        // Connections whose client ports share a slot, IPv6, and a connection coming back.
        let flows = [
            ("10.0.0.1:40000", "10.0.0.2:80"),
            ("10.0.0.3:40000", "10.0.0.2:80"),
            ("10.0.0.1:40256", "10.0.0.2:80"),
            ("[2001:db8::1]:40000", "[2001:db8::2]:8080"),
            ("10.0.0.1:40000", "10.0.0.2:8080"),
            ("10.0.0.1:40000", "10.0.0.2:80"),
            ("0.0.0.0:0", "0.0.0.0:0"),
        ];
        let mut addrs = AddrTexts::default();
        for (i, (client, server)) in flows.iter().chain(flows.iter()).enumerate() {
            let flow = crate::flow::FlowKey { client: client.parse().unwrap(), server: server.parse().unwrap() };
            let conn = ConnectionInfo { id: i as u64, flow, ifindex: 1, opened_ns: 0, saw_syn: true, tls: false };
            let rec = Record::from_message(message(MessageKind::Request, b"GET / HTTP/1.1\r\n\r\n"), &conn, &ctx);
            let (mut cached, mut plain) = (Vec::new(), Vec::new());
            rec.write_header_line_cached(&mut cached, &mut addrs);
            rec.write_header_line(&mut plain);
            assert_eq!(String::from_utf8(cached).unwrap(), String::from_utf8(plain).unwrap());
        }
    }
}
