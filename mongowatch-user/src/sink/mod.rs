//! sink layer.
