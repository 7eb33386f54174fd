//! Feeds the fuzz input to one HttpConnection as a sequence of operations and checks
//! that nothing panics and memory stays bounded.
//!
//! Input format, repeated: one op byte, then for data ops a length byte and that many
//! bytes. Op byte: bit 0 = direction; bits 1-2: 0/1 = data, 2 = gap (length byte * 7),
//! 3 = close; bit 3: then memory pressure (the connection gives back up to
//! length byte * 13 kept bytes). Bit 4 of the first op byte: both directions start
//! unknown (joined mid-stream).
#![no_main]

use capture::flow::Direction;
use capture::http::{HttpConfig, HttpConnection, HttpStats, MessageKind};
use libfuzzer_sys::fuzz_target;

const CONFIG: HttpConfig = HttpConfig {
    max_message_bytes: 512,
    max_head_bytes: 256,
    max_total_buffered_bytes: usize::MAX,
};

fuzz_target!(|input: &[u8]| {
    let mut conn = HttpConnection::new(CONFIG);
    let mut stats = HttpStats::default();
    let mut out = Vec::new();
    let mut rest = input;
    let mut ts = 0u64;
    if input.first().is_some_and(|op| op & 16 != 0) {
        conn.on_unknown_start(Direction::ClientToServer, &mut stats);
        conn.on_unknown_start(Direction::ServerToClient, &mut stats);
    }
    while let [op, tail @ ..] = rest {
        ts += 1;
        let dir = if op & 1 == 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        let len = tail.first().copied().unwrap_or(0) as usize;
        let tail = tail.get(1..).unwrap_or(&[]);
        match (op >> 1) & 3 {
            0 | 1 => {
                let n = len.min(tail.len());
                conn.on_data(dir, &tail[..n], ts, &mut stats, &mut out);
                rest = &tail[n..];
            }
            2 => {
                conn.on_gap(dir, len as u64 * 7, &mut stats, &mut out);
                rest = tail;
            }
            _ => {
                conn.on_close(ts, &mut stats, &mut out);
                rest = tail;
            }
        }
        if op & 8 != 0 {
            let before = conn.buffered_bytes();
            conn.stop_keeping(len * 13, &mut stats);
            assert!(conn.buffered_bytes() <= before);
        }
        // Per direction: a partial head plus leading empty lines, and one capped message.
        assert!(
            conn.buffered_bytes() <= 2 * (2 * CONFIG.max_head_bytes + CONFIG.max_message_bytes)
        );
        for m in out.drain(..) {
            assert!(m.bytes.len() <= CONFIG.max_message_bytes);
            assert!(m.original_len >= m.bytes.len() as u64);
            assert_eq!(m.truncated, m.original_len > m.bytes.len() as u64);
            assert!(m.ambiguous.is_none() || m.kind == MessageKind::Request, "only requests are ambiguous");
        }
    }
    conn.on_close(ts + 1, &mut stats, &mut out);
    assert_eq!(conn.buffered_bytes(), 0);
});
