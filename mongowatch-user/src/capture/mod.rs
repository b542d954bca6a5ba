//! Capture: loads the kernel programs, reads their events, keeps the watched set.
//! `probes` is the only module that touches the kernel (with `ring_depth`, which only reads
//! the ring's positions); the rest is pure code.
pub mod btf;
pub mod clock;
pub mod events;
pub mod probes;
pub mod processes;
pub mod procfs;
pub mod ring_depth;
