//! Stream layer: the bytes of each connection, per direction, cut into whole messages
//! ([`DirectionStream`]), then decoded and paired ([`Connection`]); the table of every
//! watched connection ([`Connections`]) turns kernel events into all of that.

mod budget;
mod connection;
mod direction;
mod table;

pub use budget::{BudgetStats, MemoryBudget, DEFAULT_MEMORY_BUDGET};
pub use connection::{ConnConfig, ConnEvent, Connection};
pub use direction::{DirectionStream, RawFrame, StreamConfig, StreamEvent};
pub use table::{ConnInfo, Connections, TableEvent, TableStats};

#[cfg(test)]
mod tests;
