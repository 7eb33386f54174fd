//! The kernel's per-flow skip map (`FLOW_SKIPS`): the pipeline thread writes the
//! ranges of bodies nobody keeps, and deletes a connection's entries when it closes.

use aya::maps::{Array, HashMap, MapData};
use capture_common::{FlowTuple, SkipRange};

use crate::skip::SkipSink;

pub struct KernelSkips {
    map: HashMap<MapData, FlowTuple, SkipRange>,
    /// `SKIPS_ACTIVE`: the kernel looks skip ranges up only once this is set.
    active: Array<MapData, u32>,
    activated: bool,
}

impl KernelSkips {
    pub fn new(map: HashMap<MapData, FlowTuple, SkipRange>, active: Array<MapData, u32>) -> Self {
        KernelSkips { map, active, activated: false }
    }
}

impl SkipSink for KernelSkips {
    fn skip(&mut self, tuple: &FlowTuple, range: SkipRange) -> Result<(), String> {
        if !self.activated {
            // Before the first range exists, so no segment misses it.
            self.active.set(0, 1, 0).map_err(|e| e.to_string())?;
            self.activated = true;
        }
        self.map.insert(tuple, range, 0).map_err(|e| e.to_string())
    }

    fn forget(&mut self, tuple: &FlowTuple) {
        // Absent (never written for this direction, or evicted): nothing to do.
        let _ = self.map.remove(tuple);
    }
}
