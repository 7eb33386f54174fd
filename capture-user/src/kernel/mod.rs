//! Everything that touches the kernel: loading the eBPF object, attaching it to
//! interfaces (TCX or netlink filters with an owner), following link changes,
//! reading the ring buffer and the counters, writing skip ranges. Needs root; pure code never depends on
//! this module.

pub mod counters;
pub mod flow_control;
pub mod links;
pub mod loader;
pub mod ownership;
pub mod ring;
pub mod tc_netlink;
pub mod tls;
pub mod watched;

pub use loader::{KernelCapture, KernelError};
