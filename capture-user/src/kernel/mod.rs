//! Everything that touches the kernel: loading the eBPF object, attaching it to
//! interfaces, reading the ring buffer and the counters. Needs root; pure code
//! never depends on this module.

pub mod counters;
pub mod loader;
pub mod ring;

pub use loader::{KernelCapture, KernelError};
