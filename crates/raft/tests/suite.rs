//! openraft's storage conformance `Suite` run against the real stores: the commitlog as log store (tiny
//! segments and index files so every case crosses file boundaries) and the consume-queue state machine
//! (a checkpoint at every index, which the Suite's snapshot cases expect).

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use raftmq_commitlog::{CommitLog, CommitLogConfig};
use raftmq_raft::log_store::{LogStore, StoreLink};
use raftmq_raft::state_machine::{StateMachine, StateMachineConfig};
use raftmq_raft::types::{NodeId, TypeConfig};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = CommitLogConfig::new(dir.path().join("log"));
        cfg.segment_bytes = 4096;
        cfg.index_slots_per_file = 16;
        let log = CommitLog::open(cfg).expect("open commitlog");
        // The Suite purges logs no state machine applied, so purges must not wait for state durability.
        let link = StoreLink::unguarded();
        let mut sm_cfg = StateMachineConfig::new(dir.path().join("sm"));
        sm_cfg.checkpoint_every = 1;
        sm_cfg.cq_units_per_file = 64;
        let sm = StateMachine::open(sm_cfg, log.reader(), link.clone())?;
        Ok((dir, LogStore::new(log, link), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}
