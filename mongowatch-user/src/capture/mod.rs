//! Capture: loads the kernel programs, reads their events, rebuilds connections.
//! `probes` is the only module that touches the kernel; the rest is pure code.
pub mod btf;
pub mod events;
pub mod probes;
pub mod procfs;
pub mod tracker;
