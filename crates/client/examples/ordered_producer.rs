//! Ordered messages: every message of one order id goes to the same queue (by hash), so an orderly consumer
//! sees each order's steps in sequence.
//!
//! `cargo run -p raftmq-client --example ordered_producer -- [NAMESRV] [TOPIC]`

use raftmq_client::{ClientConfig, Message, Producer, ProducerOptions, SelectByHash};

#[tokio::main]
async fn main() -> raftmq_client::Result<()> {
    let mut args = std::env::args().skip(1);
    let namesrv = args.next().unwrap_or_else(|| "127.0.0.1:9876".into());
    let topic = args.next().unwrap_or_else(|| "OrderTopic".into());
    let producer = Producer::start(ClientConfig::new(&namesrv), ProducerOptions::new("example_ordered_producer")).await?;
    for step in ["created", "paid", "shipped", "delivered"] {
        for order in ["order-1", "order-2", "order-3"] {
            let msg = Message::new(&topic, format!("{order} {step}")).with_tags(step).with_keys([order]);
            // Retries of an ordered send stay on the selected queue, so the order holds through a failover.
            let r = producer.send_with_selector(msg, &SelectByHash, order).await?;
            println!("{order} {step:<9} -> queue {} offset {}", r.queue.queue_id, r.queue_offset);
        }
    }
    producer.shutdown().await;
    Ok(())
}
