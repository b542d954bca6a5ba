//! Stream layer: the bytes of each connection, per direction, cut into whole messages
//! ([`DirectionStream`]), then decoded and paired ([`Connection`]).

mod connection;
mod direction;

pub use connection::{ConnConfig, ConnEvent, Connection, Dir};
pub use direction::{DirectionStream, RawFrame, StreamConfig, StreamEvent};

#[cfg(test)]
mod tests;
