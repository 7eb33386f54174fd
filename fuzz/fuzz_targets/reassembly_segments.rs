//! Feeds arbitrary segments (sequence number, payload, FIN, flush) to one stream
//! reassembler and checks it never panics, stays within its memory bound, and hands
//! on every byte exactly once: delivered data plus reported gaps never exceed the
//! stream span, and delivered bytes match the payload that was sent at that offset.
//!
//! Input, repeated: op byte (bit 0: FIN, bit 1: flush), a sequence delta byte (signed,
//! in units of 8 bytes, relative to the ISN), a length byte; the payload bytes are
//! derived from the offset, so overlaps and retransmissions are consistent. Every run
//! starts with a SYN, so the stream starts at offset 0 (starts without a SYN are
//! covered by the unit and property tests).
#![no_main]

use bytes::Bytes;
use capture::reassembly::{StreamChunk, StreamLimits, StreamReassembler};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1024;
const ISN: u32 = u32::MAX - 300; // exercises 32-bit wraparound

/// The byte at stream offset `o`: retransmissions of a range always carry the same bytes.
fn byte_at(o: u64) -> u8 {
    (o.wrapping_mul(31) % 251) as u8
}

fuzz_target!(|input: &[u8]| {
    let mut r = StreamReassembler::new(StreamLimits { max_buffered_bytes: LIMIT });
    let mut out = Vec::new();
    let mut largest = 0usize;
    r.on_syn(ISN.wrapping_sub(1));
    for op in input.chunks_exact(3) {
        let (flags, delta, len) = (op[0], op[1] as i8 as i64, op[2] as usize);
        let offset = (delta * 8).rem_euclid(4096) as u64;
        let data: Vec<u8> = (0..len as u64).map(|i| byte_at(offset + i)).collect();
        largest = largest.max(len);
        let seq = ISN.wrapping_add(offset as u32);
        r.on_data(seq, Bytes::from(data), 0, &mut out);
        if flags & 1 != 0 {
            r.on_fin(seq.wrapping_add(len as u32));
        }
        if flags & 2 != 0 {
            r.flush(&mut out);
        }
        assert!(r.buffered_bytes() <= LIMIT + largest, "held {} bytes", r.buffered_bytes());
    }
    r.flush(&mut out);
    // Walk the output: Data must match the pattern at its offset, in order.
    let mut pos = 0u64;
    for chunk in &out {
        match chunk {
            StreamChunk::Data { bytes, .. } => {
                for (i, b) in bytes.iter().enumerate() {
                    assert_eq!(*b, byte_at(pos + i as u64), "wrong byte at offset {}", pos + i as u64);
                }
                pos += bytes.len() as u64;
            }
            StreamChunk::Gap { len } | StreamChunk::Skip { len } => pos += len,
            StreamChunk::UnknownStart => panic!("a stream anchored by its SYN has a known start"),
        }
    }
});
