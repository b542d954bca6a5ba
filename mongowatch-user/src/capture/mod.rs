//! Capture: loads the kernel programs, reads their events, keeps the watched set.
//! `probes` and `ladder` are the only modules that touch the kernel; the rest is pure code.
pub mod btf;
pub mod clock;
pub mod events;
pub mod ladder;
pub mod probes;
pub mod processes;
pub mod procfs;
