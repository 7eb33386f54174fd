//! The kernel's per-flow skip map (`FLOW_SKIPS`): the pipeline thread writes the
//! ranges of bodies nobody keeps, and deletes a connection's entries when it closes.

use aya::maps::{HashMap, MapData};
use capture_common::{FlowTuple, SkipRange};

use crate::skip::SkipSink;

pub struct KernelSkips {
    map: HashMap<MapData, FlowTuple, SkipRange>,
}

impl KernelSkips {
    pub fn new(map: HashMap<MapData, FlowTuple, SkipRange>) -> Self {
        KernelSkips { map }
    }
}

impl SkipSink for KernelSkips {
    fn skip(&mut self, tuple: &FlowTuple, range: SkipRange) -> Result<(), String> {
        self.map.insert(tuple, range, 0).map_err(|e| e.to_string())
    }

    fn forget(&mut self, tuple: &FlowTuple) {
        // Absent (never written for this direction, or evicted): nothing to do.
        let _ = self.map.remove(tuple);
    }
}
