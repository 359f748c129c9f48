//! Transactional messages: an order is published only if its local transaction commits. Three orders: one
//! commits, one rolls back, and one leaves the outcome unknown, so the broker checks back later (a raftmq
//! broker `transactionTimeOut`, 6 s by default, after the half message; RocketMQ 4.x at its next check pass,
//! up to 60 s later) and `check_local` answers from the "database". The example waits for that check-back up
//! to 90 s.
//!
//! `cargo run -p raftmq-client --example transaction_producer -- [NAMESRV] [TOPIC]` (defaults 127.0.0.1:9876,
//! TopicTest). Consume the topic afterwards: `order-1` and `order-3` arrive, `order-2` never does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftmq_client::{ClientConfig, Message, MessageExt, TransactionListener, TransactionProducer, TransactionProducerOptions, TxnState};

/// Stands in for the application's database: what became of each order, by transaction id. A real
/// `check_local` must read durable state, because any producer of the group may be asked, after a restart.
#[derive(Default)]
struct Orders {
    outcomes: Mutex<HashMap<String, TxnState>>,
}

impl TransactionListener for Orders {
    /// What the local transaction should do with this order (a real one would write the order here).
    type Arg = TxnState;

    fn execute_local(&self, msg: &Message, outcome: &TxnState) -> TxnState {
        let id = msg.msg_id().unwrap_or_default().to_string();
        // "Unknown": the write happened, but this process could not tell in time (say, a timeout). The
        // database knows, and the check-back will find it committed.
        let stored = if *outcome == TxnState::Unknown { TxnState::Commit } else { *outcome };
        self.outcomes.lock().unwrap_or_else(|e| e.into_inner()).insert(id, stored);
        *outcome
    }

    fn check_local(&self, msg: &MessageExt) -> TxnState {
        let state = self.outcomes.lock().unwrap_or_else(|e| e.into_inner()).get(&msg.msg_id).copied();
        println!("check-back for {} ({}): {:?}", msg.msg_id, String::from_utf8_lossy(&msg.body), state);
        // Never heard of it: nothing was written, so the message must not be published.
        state.unwrap_or(TxnState::Rollback)
    }
}

#[tokio::main]
async fn main() -> raftmq_client::Result<()> {
    let mut args = std::env::args().skip(1);
    let namesrv = args.next().unwrap_or_else(|| "127.0.0.1:9876".into());
    let topic = args.next().unwrap_or_else(|| "TopicTest".into());
    let opts = TransactionProducerOptions::new("example_transaction_producer");
    let producer = TransactionProducer::start(ClientConfig::new(&namesrv), opts, Orders::default()).await?;

    for (key, outcome) in [("order-1", TxnState::Commit), ("order-2", TxnState::Rollback), ("order-3", TxnState::Unknown)] {
        let msg = Message::new(&topic, format!("{key} paid")).with_keys([key]).with_tags("paid");
        // Sends the half message (invisible to consumers), runs execute_local, then ends the transaction.
        let r = producer.send_in_transaction(msg, &outcome).await?;
        println!("{key}: {r}");
    }

    let start = Instant::now();
    while producer.check_counts().answered == 0 && start.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("check-backs answered: {:?}", producer.check_counts());
    producer.shutdown().await;
    Ok(())
}
