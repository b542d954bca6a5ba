//! One memory budget for the stream buffers of every connection. Each connection's buffer is
//! bounded by the largest message (48 MB), but the number of connections is not: without an
//! overall bound, a thousand connections each half-way through a large reply hold gigabytes.
//!
//! The connection table charges every change of a connection's [`Connection::held`] here and,
//! while the total is over the limit, sheds the connection that holds the most
//! ([`Connection::shed`]): its half-received messages are dropped with a counted reason and the
//! streams stay in sync, so only those messages are lost.
//!
//! [`Connection::held`]: super::Connection::held
//! [`Connection::shed`]: super::Connection::shed

use serde::Serialize;

/// The default budget: room for several maximum-size messages at once.
pub const DEFAULT_MEMORY_BUDGET: usize = 256 << 20;

/// What the budget did, for `--stats`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BudgetStats {
    pub limit_bytes: u64,
    /// Most memory held by stream buffers at once (after any shedding it caused).
    pub peak_bytes: u64,
    /// Connections shed, and the memory that gave back.
    pub evictions: u64,
    pub evicted_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: usize,
    stats: BudgetStats,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: 0,
            stats: BudgetStats {
                limit_bytes: limit as u64,
                ..BudgetStats::default()
            },
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Memory held now by the buffers charged here.
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn stats(&self) -> &BudgetStats {
        &self.stats
    }

    /// A connection's buffers went from holding `before` bytes to `after` (a connection that
    /// leaves the table goes to 0).
    pub fn charge(&mut self, before: usize, after: usize) {
        self.used = self.used.saturating_sub(before).saturating_add(after);
        if !self.over() {
            self.stats.peak_bytes = self.stats.peak_bytes.max(self.used as u64);
        }
    }

    /// Sets the total from a count of every connection (buffers also shrink outside any
    /// charge: idle connections give back unused capacity).
    pub fn recount(&mut self, used: usize) {
        self.used = used;
        if !self.over() {
            self.stats.peak_bytes = self.stats.peak_bytes.max(used as u64);
        }
    }

    pub fn over(&self) -> bool {
        self.used > self.limit
    }

    /// While over the limit: the connection to shed next, the one holding the most (a single
    /// scan, paid only when over). None when within the limit or when nothing holds memory.
    pub fn victim<K>(&self, held: impl IntoIterator<Item = (K, usize)>) -> Option<K> {
        if !self.over() {
            return None;
        }
        held.into_iter()
            .filter(|(_, h)| *h > 0)
            .max_by_key(|(_, h)| *h)
            .map(|(k, _)| k)
    }

    /// A victim was shed, giving back `freed` of what was charged for it.
    pub fn shed(&mut self, freed: usize) {
        self.stats.evictions += 1;
        self.stats.evicted_bytes += freed as u64;
        self.used = self.used.saturating_sub(freed);
    }
}
