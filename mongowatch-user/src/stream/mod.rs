//! stream layer.
