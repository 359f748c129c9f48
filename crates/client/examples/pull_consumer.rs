//! A pull consumer: read every queue of a topic from the group's committed offset, then commit.
//!
//! `cargo run -p raftmq-client --example pull_consumer -- [NAMESRV] [TOPIC]`

use std::time::Duration;

use raftmq_client::{ClientConfig, PullConsumer, PullStatus};

#[tokio::main]
async fn main() -> raftmq_client::Result<()> {
    let mut args = std::env::args().skip(1);
    let namesrv = args.next().unwrap_or_else(|| "127.0.0.1:9876".into());
    let topic = args.next().unwrap_or_else(|| "TopicTest".into());
    let consumer = PullConsumer::start(ClientConfig::new(&namesrv), "example_pull_consumers").await?;
    for q in consumer.fetch_subscribe_queues(&topic).await? {
        let mut offset = consumer.fetch_consume_offset(&q).await?.unwrap_or(0);
        loop {
            // Long polling: the broker holds the pull up to 1 s when the queue has nothing new.
            let r = consumer.pull_blocking(&q, "*", offset, 32, Duration::from_secs(1)).await?;
            for m in &r.messages {
                println!("{} queue {} offset {}: {}", q.broker_name, q.queue_id, m.queue_offset, String::from_utf8_lossy(&m.body));
            }
            offset = r.next_begin_offset;
            if r.status != PullStatus::Found {
                break;
            }
        }
        consumer.update_consume_offset(&q, offset).await?;
    }
    consumer.shutdown().await;
    Ok(())
}
