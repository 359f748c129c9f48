//! The blocking facade: send without writing any async code.
//!
//! `cargo run -p raftmq-client --example blocking_producer -- [NAMESRV] [TOPIC]`

use raftmq_client::blocking::Producer;
use raftmq_client::{ClientConfig, Message, ProducerOptions};

fn main() -> raftmq_client::Result<()> {
    let mut args = std::env::args().skip(1);
    let namesrv = args.next().unwrap_or_else(|| "127.0.0.1:9876".into());
    let topic = args.next().unwrap_or_else(|| "TopicTest".into());
    let producer = Producer::start(ClientConfig::new(&namesrv), ProducerOptions::new("example_blocking_producer"))?;
    for i in 0..3 {
        println!("{}", producer.send(Message::new(&topic, format!("blocking {i}")))?);
    }
    producer.shutdown();
    Ok(())
}
