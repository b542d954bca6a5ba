//! Wire layer: frames and decodes MongoDB messages and pairs requests with replies.
mod types;

pub use types::*;
