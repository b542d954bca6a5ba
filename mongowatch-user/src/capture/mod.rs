//! Capture: loads the kernel programs, reads their events, rebuilds connections.
