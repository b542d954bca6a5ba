//! Capture: loads the kernel programs, reads their events, rebuilds connections.
pub mod btf;
pub mod events;
pub mod probes;
