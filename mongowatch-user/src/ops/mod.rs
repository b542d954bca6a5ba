//! Ops layer: commands and replies -> application-level operations (cursors correlated).
pub mod input;

pub use input::{ConnInfo, Input};
