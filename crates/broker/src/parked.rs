//! Bounds on long-polled pulls: a pull that finds nothing new is held ("parked") until a message arrives or
//! its suspend time ends, and each parked pull holds one of its connection's request slots
//! (`connInflightRequestsMax`) and a task. Without a bound of their own, one client instance with many
//! queues — or a misbehaving one — could fill its connection with parked pulls, so that its sends on the same
//! connection (RocketMQ clients share one connection per broker) wait behind them, and many such connections
//! would hold an unbounded number of tasks.
//!
//! [`ParkedPulls`] counts parked pulls per connection (`pullParkedPerConnMax`) and over the broker
//! (`pullParkedMax`). A pull past either bound is not parked: it is answered at once 2 SYSTEM_BUSY
//! `[PARKED_PULLS]…`, which RocketMQ's push consumer treats as a broker exception and retries after
//! `pullTimeDelayMillsWhenException` (3 s) — the pull is delayed, nothing is lost, and the offset does not
//! move. A pull that finds messages is never refused here: only waiting is bounded.
//!
//! The table holds one entry per connection with a parked pull, removed when its last one ends, so it is
//! bounded by `connectionsMax`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Default `pullParkedPerConnMax`: half of the default `connInflightRequestsMax` (1024), leaving the other
/// half of a connection's slots to its sends, heartbeats and offset commits.
pub const PULL_PARKED_PER_CONN_MAX_DEFAULT: usize = 512;
/// Default `pullParkedMax`: parked pulls over all connections of the broker.
pub const PULL_PARKED_MAX_DEFAULT: usize = 65_536;
/// Largest accepted `pullParkedMax`.
pub const PULL_PARKED_MAX_LIMIT: usize = 1 << 20;

/// Which bound refused a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParkRefused {
    /// The connection already holds `pullParkedPerConnMax` parked pulls.
    Connection { parked: usize, max: usize },
    /// The broker already holds `pullParkedMax` parked pulls.
    Broker { parked: usize, max: usize },
}

impl ParkRefused {
    /// The remark of the 2 SYSTEM_BUSY answer.
    pub(crate) fn remark(&self) -> String {
        match self {
            ParkRefused::Connection { parked, max } => format!(
                "[PARKED_PULLS]this connection already holds {parked} long-polled pulls (pullParkedPerConnMax {max}); \
                 nothing is new in this queue yet, pull again later"
            ),
            ParkRefused::Broker { parked, max } => format!(
                "[PARKED_PULLS]the broker already holds {parked} long-polled pulls (pullParkedMax {max}); \
                 nothing is new in this queue yet, pull again later"
            ),
        }
    }
}

#[derive(Default)]
struct Table {
    by_conn: HashMap<u64, usize>,
    total: usize,
}

/// Parked pulls per connection and in total, with their bounds and a refusal counter.
pub(crate) struct ParkedPulls {
    per_conn_max: usize,
    total_max: usize,
    table: Mutex<Table>,
    refused: AtomicU64,
}

/// One parked pull's place; dropping it (answered, timed out, or the request's task cancelled) frees it.
pub(crate) struct Parking<'a> {
    owner: &'a ParkedPulls,
    conn: u64,
}

impl ParkedPulls {
    pub(crate) fn new(per_conn_max: usize, total_max: usize) -> ParkedPulls {
        debug_assert!(per_conn_max >= 1 && total_max >= 1);
        ParkedPulls { per_conn_max, total_max, table: Mutex::default(), refused: AtomicU64::new(0) }
    }

    /// Takes a place for one more parked pull of connection `conn`, or says which bound refuses it.
    pub(crate) fn park(&self, conn: u64) -> Result<Parking<'_>, ParkRefused> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let refusal = if t.total >= self.total_max {
            Some(ParkRefused::Broker { parked: t.total, max: self.total_max })
        } else {
            let mine = t.by_conn.get(&conn).copied().unwrap_or(0);
            (mine >= self.per_conn_max).then_some(ParkRefused::Connection { parked: mine, max: self.per_conn_max })
        };
        if let Some(r) = refusal {
            drop(t);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(r);
        }
        *t.by_conn.entry(conn).or_insert(0) += 1;
        t.total += 1;
        Ok(Parking { owner: self, conn })
    }

    /// Pulls parked now, over all connections.
    pub(crate) fn parked(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Connections with at least one parked pull.
    #[cfg(test)]
    fn connections(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).by_conn.len()
    }

    /// Pulls refused a place since start.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Parking<'_> {
    fn drop(&mut self) {
        let mut t = self.owner.table.lock().unwrap_or_else(|p| p.into_inner());
        let last = match t.by_conn.get_mut(&self.conn) {
            Some(n) => {
                debug_assert!(*n >= 1);
                *n -= 1;
                *n == 0
            }
            None => {
                debug_assert!(false, "a parking of an unknown connection");
                false
            }
        };
        if last {
            t.by_conn.remove(&self.conn);
        }
        debug_assert!(t.total >= 1);
        t.total = t.total.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_parks_up_to_its_bound_and_a_place_is_freed_on_drop() {
        let p = ParkedPulls::new(2, 10);
        let a = p.park(1).unwrap();
        let b = p.park(1).unwrap();
        assert_eq!(p.park(1).err(), Some(ParkRefused::Connection { parked: 2, max: 2 }));
        // Another connection is not affected.
        let c = p.park(2).unwrap();
        assert_eq!((p.parked(), p.connections(), p.refused()), (3, 2, 1));
        drop(a);
        let a2 = p.park(1).unwrap();
        drop((a2, b, c));
        assert_eq!((p.parked(), p.connections()), (0, 0), "entries go when their last parked pull ends");
    }

    #[test]
    fn the_broker_bound_holds_over_all_connections() {
        let p = ParkedPulls::new(4, 3);
        let held: Vec<_> = (0..3).map(|c| p.park(c).unwrap()).collect();
        let r = p.park(99).err().unwrap();
        assert_eq!(r, ParkRefused::Broker { parked: 3, max: 3 });
        assert!(r.remark().starts_with("[PARKED_PULLS]") && r.remark().contains("pullParkedMax 3"), "{}", r.remark());
        drop(held);
        assert!(p.park(99).is_ok());
        assert_eq!(p.parked(), 0, "the place of a dropped temporary is freed at once");
    }
}
