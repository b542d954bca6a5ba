//! Wire layer: decodes MongoDB messages from whole frames and pairs requests with replies.
//!
//! - [`frame`]: the header, size limits, and the plausibility tests used to find message
//!   starts (the stream layer calls them).
//! - [`decode()`]: one frame to a [`Message`]; OP_COMPRESSED via [`decompress`].
//! - [`encode()`]: the reverse, for tests, benches and fixtures.
//! - [`Pairer`]: replies to requests, exhaust streams, one-way requests.
//! - [`WireStats`]: what was seen and what went wrong, counted.

mod compress;
mod decode;
mod encode;
mod error;
pub mod frame;
mod pair;
mod stats;
mod types;

pub use compress::decompress;
pub use decode::decode;
pub use encode::{encode, encode_compressed};
pub use error::{DecodeError, DecodeErrorKind};
pub use frame::MAX_MESSAGE_SIZE;
pub use pair::{PairConfig, Pairer};
pub use stats::{DecodeErrorCounts, DropCounts, DropReason, PairStats, StreamStats, WireStats};
pub use types::*;

#[cfg(test)]
pub(crate) mod tests;
