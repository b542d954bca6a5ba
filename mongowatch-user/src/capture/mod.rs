//! Capture: loads the kernel programs, reads their events, keeps the watched set.
//! `probes`, `ladder` and `tls` (the TLS library probes) are the only modules that touch the
//! kernel (and `ring_fill`, which reads the ring's position counters); the rest is pure code.
pub mod btf;
pub mod cgroup;
pub mod clock;
pub mod events;
pub mod ladder;
pub mod probes;
pub mod processes;
pub mod procfs;
pub mod ring_fill;
pub mod select;
pub mod tls;
