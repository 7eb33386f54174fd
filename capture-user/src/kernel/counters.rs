//! Reads the kernel program's per-CPU counters.

use aya::maps::{MapData, PerCpuArray};
use capture_common::Counter;

/// Sum over CPUs of every counter, in `Counter::ALL` order.
pub fn read(map: &PerCpuArray<MapData, u64>) -> Vec<(Counter, u64)> {
    Counter::ALL
        .iter()
        .map(|&c| {
            let total = map
                .get(&(c as u32), 0)
                .map(|values| values.iter().sum::<u64>())
                .unwrap_or(0);
            (c, total)
        })
        .collect()
}
