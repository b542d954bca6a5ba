//! queue layer.
