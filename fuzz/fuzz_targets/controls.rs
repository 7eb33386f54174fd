//! The traffic controls under arbitrary input. The first byte picks one of three parts:
//!
//! 0. Skips in the reassembler: data segments (consistent bytes per offset, any order,
//!    overlaps), skips of any length, FINs and flushes. Every handed-on byte must be the
//!    one sent at its offset, Skip chunks advance the position, and every byte of the
//!    stream is delivered, reported missing or skipped exactly once.
//! 1. The framer with a judge and skips: data/gap/skip/close ops on both directions; the
//!    judge drops requests whose target contains "drop", skips take any part of what
//!    `skippable` allows. No emitted message may belong to a dropped exchange.
//! 2. Redaction of a message built from the input (secret-bearing headers and query,
//!    a JSON or form body, Content-Length or chunked): the placed secrets never appear
//!    in the output, and the rewritten framing is consistent.
//! 3. Redaction of arbitrary bytes: no panic.
#![no_main]

use bytes::Bytes;
use capture::flow::Direction;
use capture::http::view::RequestHead;
use capture::http::{ExchangeJudge, HttpConfig, HttpConnection, HttpStats};
use capture::reassembly::{StreamChunk, StreamLimits, StreamReassembler};
use capture::redact::{RedactConfig, RedactKey, Redactor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    match input.split_first() {
        Some((0, rest)) => reassembly_with_skips(rest),
        Some((1, rest)) => framer_with_judge_and_skips(rest),
        Some((2, rest)) => redaction(rest),
        Some((3, rest)) => {
            let _ = redactor().redact_payload(rest);
        }
        _ => {}
    }
});

fn byte_at(o: u64) -> u8 {
    (o.wrapping_mul(31) % 251) as u8
}

fn reassembly_with_skips(input: &[u8]) {
    const ISN: u32 = u32::MAX - 200;
    let mut r = StreamReassembler::new(StreamLimits { max_buffered_bytes: 2048 });
    let mut out = Vec::new();
    r.on_syn(ISN.wrapping_sub(1));
    let mut largest = 0usize;
    let mut skips = 0u64;
    for op in input.chunks_exact(3) {
        let (kind, a, b) = (op[0] % 4, op[1] as u64, op[2] as usize);
        match kind {
            0 | 1 => {
                let offset = a * 16;
                let data: Vec<u8> = (0..b as u64).map(|i| byte_at(offset + i)).collect();
                largest = largest.max(b);
                r.on_data(ISN.wrapping_add(offset as u32), Bytes::from(data), 0, &mut out);
            }
            2 => {
                if r.skip(a * 7 + b as u64, &mut out).is_some() {
                    skips += 1;
                }
            }
            _ => r.flush(&mut out),
        }
        assert!(r.buffered_bytes() <= 2048 + largest);
    }
    r.flush(&mut out);
    let (mut pos, mut skipped) = (0u64, 0u64);
    for chunk in &out {
        match chunk {
            StreamChunk::Data { bytes, .. } => {
                for (i, b) in bytes.iter().enumerate() {
                    assert_eq!(*b, byte_at(pos + i as u64), "wrong byte at offset {}", pos + i as u64);
                }
                pos += bytes.len() as u64;
            }
            StreamChunk::Gap { len } => pos += len,
            StreamChunk::Skip { len } => {
                pos += len;
                skipped += len;
            }
            StreamChunk::UnknownStart => panic!("a stream anchored by its SYN has a known start"),
        }
    }
    let s = r.stats();
    assert_eq!(s.skips, skips);
    assert_eq!(s.skip_bytes, skipped);
    assert_eq!(s.bytes_delivered + s.gap_bytes + s.skip_bytes, pos);
}

/// Drops exchanges whose target contains "drop"; keeps unpaired responses.
struct DropMarked;

impl ExchangeJudge for DropMarked {
    fn keep_request(&mut self, request: &RequestHead<'_>, _: u64) -> bool {
        !request.target.contains("drop")
    }
    fn keep_unpaired_response(&mut self) -> bool {
        true
    }
}

const CONFIG: HttpConfig = HttpConfig { max_message_bytes: 512, max_head_bytes: 256, max_total_buffered_bytes: usize::MAX };

/// Ops as in `http_segments` (op byte: bit 0 direction, bits 1-2: 0/1 data, 2 gap,
/// 3 skip; length byte), plus op 0xff = close.
fn framer_with_judge_and_skips(input: &[u8]) {
    let mut conn = HttpConnection::new(CONFIG);
    let mut stats = HttpStats::default();
    let mut out = Vec::new();
    let mut judge = DropMarked;
    let mut rest = input;
    let mut ts = 0u64;
    while let [op, tail @ ..] = rest {
        ts += 1;
        let dir = if op & 1 == 0 { Direction::ClientToServer } else { Direction::ServerToClient };
        let len = tail.first().copied().unwrap_or(0) as usize;
        let tail = tail.get(1..).unwrap_or(&[]);
        if *op == 0xff {
            conn.on_close(ts, &mut stats, &mut out);
            rest = tail;
            continue;
        }
        match (op >> 1) & 3 {
            0 | 1 => {
                let n = len.min(tail.len());
                conn.on_data_judged(dir, &tail[..n], ts, &mut judge, &mut stats, &mut out);
                rest = &tail[n..];
            }
            2 => {
                conn.on_gap(dir, len as u64 * 7, &mut stats, &mut out);
                rest = tail;
            }
            _ => {
                if let Some(n) = conn.skippable(dir) {
                    // Any part of what may be skipped: the rest comes as data later.
                    let part = n.min(len as u64 * 97 + 1);
                    conn.on_skip(dir, part, &mut stats, &mut out);
                }
                rest = tail;
            }
        }
        assert!(conn.buffered_bytes() <= 2 * (2 * CONFIG.max_head_bytes + CONFIG.max_message_bytes));
        for m in out.drain(..) {
            assert!(!m.target.as_deref().unwrap_or("").contains("drop"), "a dropped exchange was emitted");
            assert!(m.bytes.len() <= CONFIG.max_message_bytes);
            assert!(m.original_len >= m.bytes.len() as u64);
            assert_eq!(m.truncated, m.original_len > m.bytes.len() as u64);
        }
    }
    conn.on_close(ts + 1, &mut stats, &mut out);
    assert_eq!(conn.buffered_bytes(), 0);
}

/// A hex string of 12 digits from the input: a secret no other part of the message holds.
fn secret(tag: &str, seed: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.iter().chain(tag.as_bytes()) {
        h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
    }
    format!("Q{tag}{:012x}Z", h & 0xffff_ffff_ffff)
}

fn redaction(input: &[u8]) {
    let Some((&flags, body)) = input.split_first() else { return };
    let mut r = redactor();
    let (auth, cookie, sig) = (secret("auth", input), secret("cookie", input), secret("sig", input));
    let json = flags & 1 != 0;
    let chunked = flags & 2 != 0;
    let mut head = format!(
        "POST /p?a=1&sig={sig} HTTP/1.1\r\nAuthorization: Bearer {auth}\r\nCookie: x=1; sid={cookie}\r\nContent-Type: {}\r\n",
        if json { "application/json" } else { "application/x-www-form-urlencoded" }
    );
    let mut msg;
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        msg = head.into_bytes();
        for piece in body.chunks(7) {
            msg.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            msg.extend_from_slice(piece);
            msg.extend_from_slice(b"\r\n");
        }
        msg.extend_from_slice(b"0\r\n\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        msg = head.into_bytes();
        msg.extend_from_slice(body);
    }
    let Some(out) = r.redact_payload(&msg) else { panic!("the header secrets were not redacted") };
    for s in [&auth, &cookie, &sig] {
        assert!(!out.windows(s.len()).any(|w| w == s.as_bytes()), "{s} left in the output");
    }
    // Framing: the new body is exactly what the head says.
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    let new_head = String::from_utf8_lossy(&out[..head_end]).into_owned();
    let new_body = &out[head_end..];
    if chunked {
        let mut pos = 0;
        loop {
            let nl = new_body[pos..].windows(2).position(|w| w == b"\r\n").expect("chunk-size line") + pos;
            let size = usize::from_str_radix(std::str::from_utf8(&new_body[pos..nl]).unwrap(), 16).unwrap();
            pos = nl + 2;
            if size == 0 {
                assert_eq!(&new_body[pos..], b"\r\n", "complete after the last chunk");
                break;
            }
            pos += size;
            assert_eq!(&new_body[pos..pos + 2], b"\r\n");
            pos += 2;
        }
    } else {
        let cl = new_head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).expect("Content-Length");
        assert_eq!(cl.trim().parse::<usize>().unwrap(), new_body.len());
    }
}

/// Defaults plus the query parameter `sig`.
fn redactor() -> Redactor {
    let key = RedactKey::new(b"fuzz key of sixteen bytes or more".to_vec()).unwrap();
    Redactor::new(RedactConfig::new(&[], &[], &["sig".into()], &[], &[], &[], key))
}
