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
        let (mut n, mut bytes) = (0, 0);
        while n < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Some(item) = ring.next() else { break };
            bytes += item.len();
            match segment::decode(&item) {
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
            match segment::decode(&item) {
                Ok(seg) => segments.push(seg),
                Err(e) => errors.push(e),
            }
        }
    }
}
