//! Stream layer: the bytes of each connection, per direction, cut into whole messages
//! ([`DirectionStream`]), then decoded and paired ([`Connection`]).

mod budget;
mod connection;
mod direction;

pub use budget::{BudgetStats, MemoryBudget, DEFAULT_MEMORY_BUDGET};
pub use connection::{ConnConfig, ConnEvent, Connection, Dir};
pub use direction::{DirectionStream, RawFrame, StreamConfig, StreamEvent};

#[cfg(test)]
mod tests;
