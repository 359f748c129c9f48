//! An orderly push consumer: each queue is locked on its broker and consumed one message at a time, in
//! order. Pair it with the `ordered_producer` example.
//!
//! `cargo run -p raftmq-client --example orderly_consumer -- [NAMESRV] [TOPIC]`

use raftmq_client::{ClientConfig, ConsumeContext, ConsumeFrom, ConsumeOrderlyStatus, MessageExt, PushConsumer, PushConsumerOptions};

#[tokio::main]
async fn main() -> raftmq_client::Result<()> {
    let mut args = std::env::args().skip(1);
    let namesrv = args.next().unwrap_or_else(|| "127.0.0.1:9876".into());
    let topic = args.next().unwrap_or_else(|| "OrderTopic".into());
    let opts = PushConsumerOptions::new("example_orderly_consumers").subscribe(&topic, "*").with_consume_from(ConsumeFrom::FirstOffset);
    let consumer =
        PushConsumer::start_orderly(ClientConfig::new(&namesrv), opts, |msgs: Vec<MessageExt>, ctx: ConsumeContext| async move {
            for m in &msgs {
                println!("queue {} offset {}: {}", ctx.queue.queue_id, m.queue_offset, String::from_utf8_lossy(&m.body));
            }
            ConsumeOrderlyStatus::Success
        })
        .await?;
    let _ = tokio::signal::ctrl_c().await;
    consumer.shutdown().await;
    Ok(())
}
