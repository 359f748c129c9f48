//! Sends messages with every send mode: sync, async (future and callback), oneway, batch.
//!
//! `cargo run -p raftmq-client --example producer -- [NAMESRV] [TOPIC]` (defaults 127.0.0.1:9876, TopicTest).

use raftmq_client::{ClientConfig, Message, Producer, ProducerOptions};

#[tokio::main]
async fn main() -> raftmq_client::Result<()> {
    let mut args = std::env::args().skip(1);
    let namesrv = args.next().unwrap_or_else(|| "127.0.0.1:9876".into());
    let topic = args.next().unwrap_or_else(|| "TopicTest".into());
    let producer = Producer::start(ClientConfig::new(&namesrv), ProducerOptions::new("example_producer")).await?;

    // Sync: waits until a quorum of the broker group has the message on disk.
    let r = producer.send(Message::new(&topic, "hello, sync").with_tags("TagA").with_keys(["order-1"])).await?;
    println!("sync:     {r}");

    // Async: the send runs in the background; await the future when you need the result.
    let pending: Vec<_> = (0..3).map(|i| producer.send_async(Message::new(&topic, format!("hello, async {i}")))).collect();
    for p in pending {
        println!("async:    {}", p.await?);
    }

    // Callback: never blocks the caller.
    let (tx, rx) = tokio::sync::oneshot::channel();
    producer.send_with_callback(Message::new(&topic, "hello, callback"), move |r| {
        let _ = tx.send(r);
    });
    println!("callback: {}", rx.await.map_err(|_| raftmq_client::ClientError::State("callback dropped".into()))??);

    // Oneway: no answer, no retry.
    producer.send_oneway(Message::new(&topic, "hello, oneway")).await?;

    // Batch: one topic, stored all or nothing, at consecutive offsets of one queue.
    let batch = (0..4).map(|i| Message::new(&topic, format!("hello, batch {i}"))).collect();
    println!("batch:    {}", producer.send_batch(batch).await?);

    producer.shutdown().await;
    Ok(())
}
