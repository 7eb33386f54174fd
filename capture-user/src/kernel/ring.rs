//! Reads ring-buffer events asynchronously and decodes them into segments.

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::segment::{self, DecodeError, Segment};

pub struct RingReader {
    fd: AsyncFd<RingBuf<MapData>>,
}

/// Events handed on at most per batch, so one busy ring does not starve the rest.
const MAX_BATCH: usize = 4096;

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
            let mut n = 0;
            while n < MAX_BATCH {
                let Some(item) = ring.next() else { break };
                match segment::decode(&item) {
                    Ok(seg) => segments.push(seg),
                    Err(e) => errors.push(e),
                }
                n += 1;
            }
            if n == 0 {
                guard.clear_ready();
                continue;
            }
            if n < MAX_BATCH {
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
