//! Reads ring-buffer events asynchronously and decodes them into segments.

use aya::maps::{MapData, RingBuf};
use bytes::BytesMut;
use tokio::io::unix::AsyncFd;

use crate::segment::{self, DecodeError, Segment};

pub struct RingReader {
    fd: AsyncFd<RingBuf<MapData>>,
    /// Payloads of a batch are copied here back to back: one allocation per batch (or
    /// none, when the pipeline has let go of the previous one) instead of one per event.
    arena: BytesMut,
}

/// Events and payload bytes per batch at most: bounds the memory queued between the
/// reader and the pipeline thread (batches in flight x this).
const MAX_BATCH: usize = 4096;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Arena room reserved before each batch; it grows when a batch needs more.
const ARENA_BYTES: usize = 256 << 10;

impl RingReader {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the ring owns its map fd for as long as the AsyncFd owns the ring.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(RingReader { fd, arena: BytesMut::new() })
    }

    /// Waits until the kernel signals data (it does so only past a fill threshold;
    /// callers also poll with [`RingReader::try_batch`] on a timer).
    pub async fn wait(&mut self) -> std::io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Decodes up to a batch of available events without waiting; returns how many.
    /// Decoding errors are handed back so the caller can count them.
    pub fn try_batch(&mut self, segments: &mut Vec<Segment>, errors: &mut Vec<DecodeError>) -> usize {
        let ring = self.fd.get_mut();
        self.arena.reserve(ARENA_BYTES);
        let (mut n, mut bytes) = (0, 0);
        while n < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Some(item) = ring.next() else { break };
            bytes += item.len();
            match segment::decode_into(&item, &mut self.arena) {
                Ok(seg) => segments.push(seg),
                Err(e) => errors.push(e),
            }
            n += 1;
        }
        n
    }

    /// Drains what is in the ring now without waiting (used at shutdown).
    pub fn drain(&mut self, segments: &mut Vec<Segment>, errors: &mut Vec<DecodeError>) {
        let ring = self.fd.get_mut();
        while let Some(item) = ring.next() {
            match segment::decode_into(&item, &mut self.arena) {
                Ok(seg) => segments.push(seg),
                Err(e) => errors.push(e),
            }
        }
    }
}
