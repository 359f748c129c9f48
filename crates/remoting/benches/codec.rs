//! Criterion micro-benchmarks of the remoting hot paths: a SEND_MESSAGE_V2 frame encoded and decoded, a
//! message encoded in RocketMQ's stored layout, a 32-message pull body iterated in place, and a plain-ACL
//! signature made and verified over a SEND_MESSAGE_V2 request.
//! `cargo bench -p raftmq-remoting --bench codec`

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use raftmq_remoting::frame::FRAME_BYTES_MAX_DEFAULT;
use raftmq_remoting::header::SendMessageRequestHeader;
use raftmq_remoting::message::{encode_properties, encode_stored_message, property, MessageToStore, StoredMessages};
use raftmq_remoting::{RemotingCommand, RequestCode};

fn send_request(body: &[u8]) -> RemotingCommand {
    let mut props = String::new();
    encode_properties(
        [(property::WAIT_STORE_MSG_OK, "true"), (property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, "7F000001000078BF2E5A3C1D00000001")],
        &mut props,
    )
    .expect("properties");
    let h = SendMessageRequestHeader {
        producer_group: "bench_producer".into(),
        topic: "BenchTopic".into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id: 3,
        born_timestamp: 1_795_000_000_000,
        properties: Some(props),
        ..Default::default()
    };
    let mut cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 42).with_body(body.to_vec());
    h.write_ext_fields_v2(&mut cmd.ext_fields);
    cmd
}

fn stored(body: &[u8], queue_offset: i64) -> Vec<u8> {
    let m = MessageToStore {
        topic: "BenchTopic",
        queue_id: 3,
        flag: 0,
        queue_offset,
        physical_offset: queue_offset * 300,
        sys_flag: 0,
        born_timestamp: 1_795_000_000_000,
        born_host: "127.0.0.1:50000".parse().expect("addr"),
        store_timestamp: 1_795_000_000_001,
        store_host: "127.0.0.1:10911".parse().expect("addr"),
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        body,
        properties: "WAIT\u{1}true\u{2}UNIQ_KEY\u{1}7F000001000078BF2E5A3C1D00000001\u{2}",
    };
    let mut out = Vec::new();
    encode_stored_message(&m, &mut out).expect("encode");
    out
}

fn frames(c: &mut Criterion) {
    let body = vec![b'x'; 128];
    let cmd = send_request(&body);
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode SEND_MESSAGE_V2 128 B", |b| {
        let mut buf = BytesMut::with_capacity(1024);
        b.iter(|| {
            buf.clear();
            black_box(&cmd).encode(&mut buf, FRAME_BYTES_MAX_DEFAULT).expect("encode");
            black_box(buf.len())
        })
    });
    let mut encoded = BytesMut::new();
    cmd.encode(&mut encoded, FRAME_BYTES_MAX_DEFAULT).expect("encode");
    let encoded = encoded.freeze();
    g.bench_function("decode SEND_MESSAGE_V2 128 B + header fields", |b| {
        b.iter(|| {
            let mut src = BytesMut::from(&encoded[..]);
            let cmd = RemotingCommand::decode(&mut src, FRAME_BYTES_MAX_DEFAULT).expect("decode").expect("whole frame");
            black_box(SendMessageRequestHeader::decode_for(cmd.request_code(), &cmd.ext_fields).expect("header"))
        })
    });
    g.finish();
}

fn messages(c: &mut Criterion) {
    let mut g = c.benchmark_group("message");
    for size in [128usize, 1024] {
        let body = vec![b'y'; size];
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("encode stored {size} B"), |b| b.iter(|| black_box(stored(black_box(&body), 7))));
    }
    let pull_body: Vec<u8> = (0..32).flat_map(|i| stored(&[b'z'; 128], i)).collect();
    g.throughput(Throughput::Elements(32));
    g.bench_function("iterate 32-message pull body", |b| {
        b.iter(|| StoredMessages::new(black_box(&pull_body)).map(|m| m.map(|m| m.body.len()).unwrap_or(0)).sum::<usize>())
    });
    g.finish();
}

fn acl(c: &mut Criterion) {
    use raftmq_remoting::acl::{verify, Credentials, SIGNATURE};
    let creds = Credentials::new("RocketMQ", "12345678");
    let mut g = c.benchmark_group("acl");
    g.throughput(Throughput::Elements(1));
    for size in [128usize, 4096] {
        let cmd = send_request(&vec![b'x'; size]);
        g.bench_function(format!("sign SEND_MESSAGE_V2 {size} B"), |b| {
            b.iter(|| {
                let mut c = black_box(&cmd).clone();
                creds.sign(&mut c);
                black_box(c.ext_fields.len())
            })
        });
        let mut signed = cmd.clone();
        creds.sign(&mut signed);
        let sig = signed.ext_fields[SIGNATURE].clone();
        g.bench_function(format!("verify SEND_MESSAGE_V2 {size} B"), |b| {
            b.iter(|| assert!(verify(black_box(&signed.ext_fields), &signed.body, "12345678", &sig, &["raftmqForwardedBy"])))
        });
    }
    g.finish();
}

criterion_group!(benches, frames, messages, acl);
criterion_main!(benches);
