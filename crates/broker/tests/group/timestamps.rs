//! SEARCH_OFFSET_BY_TIMESTAMP binary-searches store timestamps, which is only right if they never decrease
//! along a queue. The store stamps every put itself, in log order, from a clock that never goes back and that
//! a new leader floors at the newest committed store timestamp — whatever timestamps the encoded messages
//! carried and whatever clock an earlier leader had.

use std::net::SocketAddrV4;
use std::time::Duration;

use bytes::Bytes;
use raftmq_broker::store::{store_timestamp_of, MessageStore};
use raftmq_raft::types::{Message, QueueAppend, TopicConfig};
use raftmq_remoting::{encode_stored_message, MessageToStore};

use crate::common::{now_ms, Group};

const T: &str = "TimeTopic";

fn encoded(queue_id: i32, store_timestamp: i64) -> Bytes {
    let host: SocketAddrV4 = "127.0.0.1:10911".parse().unwrap();
    let m = MessageToStore {
        topic: T,
        queue_id,
        flag: 0,
        queue_offset: 0,
        physical_offset: 0,
        sys_flag: 0,
        born_timestamp: store_timestamp,
        born_host: host,
        store_timestamp,
        store_host: host,
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        body: b"body",
        properties: "",
    };
    let mut out = Vec::new();
    encode_stored_message(&m, &mut out).unwrap();
    Bytes::from(out)
}

fn stored_timestamps(store: &MessageStore, queue_id: u32) -> Vec<i64> {
    let r = store.get(T, queue_id, 0, 1024, usize::MAX, |_| true);
    r.messages.iter().map(|m| store_timestamp_of(&m.to_bytes()).expect("timestamp")).collect()
}

/// What the search must answer, by definition, from the stored timestamps.
fn expected(ts: &[i64], t: i64, upper: bool) -> u64 {
    if upper {
        ts.iter().rposition(|x| *x <= t).unwrap_or(0) as u64
    } else {
        ts.iter().position(|x| *x >= t).unwrap_or(ts.len()) as u64
    }
}

#[test]
fn store_timestamps_never_decrease_so_the_time_search_is_exact() {
    crate::common::runtime().block_on(async {
        let g = Group::start().await;
        let leader = g.wait_leader(None, Duration::from_secs(20)).await;
        let node = g.brokers[leader].node().clone();
        let store = MessageStore::new(node.clone(), 60_000);
        store.upsert_topic(TopicConfig { name: T.into(), read_queues: 2, write_queues: 2, perm: 6 }).await.expect("topic");
        // An earlier leader whose clock ran an hour ahead left this in the log (written raw, unstamped).
        let ahead = now_ms() + 3_600_000;
        let raw = QueueAppend {
            topic: T.into(),
            queue_id: 0,
            messages: vec![Message { tags_code: 0, data: encoded(0, ahead), phys_offset: None }],
        };
        node.produce(vec![raw]).await.expect("raw produce");
        // This leader's puts, whatever their encoded timestamps say (later sends stamped earlier, as happens
        // when requests overtake each other on the way to the batcher).
        for (i, ts) in [now_ms(), now_ms() - 10_000, now_ms() - 20_000, now_ms() - 5_000].into_iter().enumerate() {
            store.put(T, 1, vec![(0, encoded(1, ts))]).await.unwrap_or_else(|e| panic!("put {i}: {e}"));
        }
        let ts = stored_timestamps(&store, 1);
        assert_eq!(ts.len(), 4);
        assert!(ts[0] >= ahead, "a new leader stamps above the newest committed store timestamp: {} < {ahead}", ts[0]);
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "store timestamps decrease along the queue: {ts:?}");
        for t in [ahead - 20_000, ahead - 1, ts[0], ts[3], ts[3] + 1] {
            for upper in [false, true] {
                assert_eq!(store.offset_by_time(T, 1, t, upper), expected(&ts, t, upper), "search for {t} (upper {upper}) in {ts:?}");
            }
        }
        g.shutdown().await;
    });
}
