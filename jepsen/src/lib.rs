//! raftmq's Jepsen-style harness as a library: the history model (`history`) and the queue checker
//! (`checker`), the namespace cluster (`cluster`, `net`, `clock`), the fault schedule (`nemesis`), the queue
//! workload (`workload`, with its transactional producer in `transactions`), plots (`plot`) and one whole run
//! (`run`). The `raftmq-jepsen` binary drives it.

pub mod checker;
pub mod clock;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod plot;
pub mod run;
pub mod transactions;
pub mod workload;
