//! A push consumer in a consumer group: concurrent listener, tag filter, clustering mode. Run two of them
//! with different instance names to see the group split the queues. Stops on Ctrl-C, committing offsets.
//!
//! `cargo run -p raftmq-client --example push_consumer -- [NAMESRV] [TOPIC] [INSTANCE]`

use raftmq_client::{ClientConfig, ConsumeConcurrentlyStatus, ConsumeContext, ConsumeFrom, MessageExt, PushConsumer, PushConsumerOptions};

#[tokio::main]
async fn main() -> raftmq_client::Result<()> {
    let mut args = std::env::args().skip(1);
    let namesrv = args.next().unwrap_or_else(|| "127.0.0.1:9876".into());
    let topic = args.next().unwrap_or_else(|| "TopicTest".into());
    let instance = args.next().unwrap_or_else(|| std::process::id().to_string());
    let opts = PushConsumerOptions::new("example_consumers").subscribe(&topic, "*").with_consume_from(ConsumeFrom::FirstOffset);
    let consumer = PushConsumer::start_concurrently(
        ClientConfig::new(&namesrv).with_instance_name(instance),
        opts,
        |msgs: Vec<MessageExt>, ctx: ConsumeContext| async move {
            for m in &msgs {
                println!(
                    "queue {} offset {} tags {:?}: {}",
                    ctx.queue.queue_id,
                    m.queue_offset,
                    m.tags(),
                    String::from_utf8_lossy(&m.body)
                );
            }
            ConsumeConcurrentlyStatus::ConsumeSuccess
        },
    )
    .await?;
    println!("consuming as {}; queues {:?}", consumer.client_id(), consumer.assigned_queues());
    let _ = tokio::signal::ctrl_c().await;
    consumer.shutdown().await;
    Ok(())
}
