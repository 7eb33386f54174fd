//! Reads ring-buffer events asynchronously and decodes them into segments.

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::segment::{self, DecodeError, Segment};

pub struct RingReader {
    fd: AsyncFd<RingBuf<MapData>>,
}

/// Events and payload bytes per batch at most: bounds the memory queued between the
/// reader and the pipeline thread (batches in flight x this).
const MAX_BATCH: usize = 4096;
const MAX_BATCH_BYTES: usize = 1 << 20;

impl RingReader {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the ring owns its map fd for as long as the AsyncFd owns the ring.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(RingReader { fd })
    }

    /// Waits until events are available, then decodes up to a batch of them.
    /// Decoding errors are handed back so the caller can count them.
    pub async fn next_batch(
        &mut self,
        segments: &mut Vec<Segment>,
        errors: &mut Vec<DecodeError>,
    ) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let (mut n, mut bytes) = (0, 0);
            let mut full = false;
            while !full {
                let Some(item) = ring.next() else { break };
                bytes += item.len();
                match segment::decode(&item) {
                    Ok(seg) => segments.push(seg),
                    Err(e) => errors.push(e),
                }
                n += 1;
                full = n >= MAX_BATCH || bytes >= MAX_BATCH_BYTES;
            }
            if n == 0 {
                guard.clear_ready();
                continue;
            }
            if !full {
                guard.clear_ready();
            }
            return Ok(());
        }
    }

    /// Drains what is in the ring now without waiting (used at shutdown).
    pub fn drain(&mut self, segments: &mut Vec<Segment>, errors: &mut Vec<DecodeError>) {
        let ring = self.fd.get_mut();
        while let Some(item) = ring.next() {
            match segment::decode(&item) {
                Ok(seg) => segments.push(seg),
                Err(e) => errors.push(e),
            }
        }
    }
}
