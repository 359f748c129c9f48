//! `raftmq admin`, `produce` and `consume`: small remoting clients for operators and quick manual use.
//! They speak the same RocketMQ protocol as any client: routes from the nameserver, sends to each group's
//! brokerId 0 (its Raft leader), pulls by queue offset.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use raftmq_net::RemotingClient;
use raftmq_remoting::body::{decode_json_body, ClusterInfo, TopicRouteData};
use raftmq_remoting::header::{
    CreateTopicRequestHeader, GetMaxOffsetRequestHeader, GetRouteInfoRequestHeader, OffsetResponseHeader, PullMessageRequestHeader,
    PullMessageResponseHeader, QueryConsumerOffsetRequestHeader, SendMessageRequestHeader, SendMessageResponseHeader,
    UpdateConsumerOffsetRequestHeader,
};
use raftmq_remoting::message::{encode_properties, property, StoredMessages, UniqIdGenerator};
use raftmq_remoting::{RemotingCommand, RequestCode, ResponseCode};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Admin subcommands.
#[derive(Subcommand)]
pub enum AdminCmd {
    /// Each broker node's Raft role, term, commit and applied index.
    Status,
    /// The leader of a broker group, as `n<nodeId>`.
    Leader {
        /// Broker group (default: the only or first one).
        #[arg(long)]
        broker: Option<String>,
    },
    /// Topics.
    Topic {
        #[command(subcommand)]
        cmd: TopicCmd,
    },
    /// Consumer-group progress and lag on a topic.
    Group {
        /// Consumer group.
        group: String,
        /// Topic.
        #[arg(long)]
        topic: String,
    },
}

/// Topic subcommands.
#[derive(Subcommand)]
pub enum TopicCmd {
    /// Create or update a topic on every broker group.
    Create {
        /// Topic name.
        name: String,
        /// Read and write queues.
        #[arg(long, default_value_t = 4)]
        queues: i32,
    },
    /// List topics.
    List,
    /// Show a topic's route.
    Route {
        /// Topic name.
        name: String,
    },
}

/// `raftmq produce` arguments.
#[derive(Args)]
pub struct ProduceArgs {
    /// Nameserver address.
    #[arg(long, env = "RAFTMQ_NAMESRV_ADDR", default_value = "127.0.0.1:9876")]
    namesrv: String,
    /// Topic.
    #[arg(long)]
    topic: String,
    /// Messages to send.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Body (default: "message <n>").
    #[arg(long)]
    body: Option<String>,
    /// Tag.
    #[arg(long)]
    tag: Option<String>,
    /// Keys (space-separated).
    #[arg(long)]
    keys: Option<String>,
    /// Producer group.
    #[arg(long, default_value = "raftmq_cli_producer")]
    group: String,
}

/// `raftmq consume` arguments.
#[derive(Args)]
pub struct ConsumeArgs {
    /// Nameserver address.
    #[arg(long, env = "RAFTMQ_NAMESRV_ADDR", default_value = "127.0.0.1:9876")]
    namesrv: String,
    /// Topic.
    #[arg(long)]
    topic: String,
    /// Consumer group (offsets are committed for it).
    #[arg(long)]
    group: String,
    /// Stop after this many messages.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Stop after this long without reaching `count`.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
}

async fn connect(addr: &str) -> Result<RemotingClient> {
    RemotingClient::connect(addr, TIMEOUT, None).await.with_context(|| format!("connect {addr}"))
}

async fn call(c: &RemotingClient, cmd: RemotingCommand) -> Result<RemotingCommand> {
    c.invoke(cmd, TIMEOUT).await.with_context(|| format!("request to {}", c.addr()))
}

fn check(resp: &RemotingCommand, what: &str) -> Result<()> {
    if resp.code != ResponseCode::SUCCESS.0 {
        bail!("{what}: code {} {}", resp.code, resp.remark.as_deref().unwrap_or(""));
    }
    Ok(())
}

async fn route(ns: &RemotingClient, topic: &str) -> Result<Option<TopicRouteData>> {
    let h = GetRouteInfoRequestHeader { topic: topic.into(), ..Default::default() };
    let resp = call(ns, RemotingCommand::request(RequestCode::GET_ROUTEINFO_BY_TOPIC, 0).with_header(&h)).await?;
    if resp.code == ResponseCode::TOPIC_NOT_EXIST.0 {
        return Ok(None);
    }
    check(&resp, "route")?;
    Ok(Some(decode_json_body("TopicRouteData", &resp.body)?))
}

async fn cluster(ns: &RemotingClient) -> Result<ClusterInfo> {
    let resp = call(ns, RemotingCommand::request(RequestCode::GET_BROKER_CLUSTER_INFO, 0)).await?;
    check(&resp, "cluster info")?;
    Ok(decode_json_body("ClusterInfo", &resp.body)?)
}

async fn node_status(addr: &str) -> Result<serde_json::Value> {
    let c = connect(addr).await?;
    let resp = call(&c, RemotingCommand::request(RequestCode(raftmq_broker::RAFTMQ_NODE_STATUS), 0)).await?;
    check(&resp, "node status")?;
    Ok(serde_json::from_slice(&resp.body)?)
}

/// Runs an admin command.
pub async fn admin(namesrv: &str, cmd: AdminCmd) -> Result<()> {
    let ns = connect(namesrv).await?;
    match cmd {
        AdminCmd::Status => {
            let info = cluster(&ns).await?;
            println!(
                "{:<12} {:<6} {:<22} {:<10} {:>6} {:>8} {:>10} {:>10} {:>10}",
                "group", "node", "address", "role", "ready", "term", "last", "commit", "applied"
            );
            for (name, b) in &info.broker_addr_table {
                for (id, addr) in &b.broker_addrs {
                    match node_status(addr).await {
                        Ok(s) => println!(
                            "{:<12} {:<6} {:<22} {:<10} {:>6} {:>8} {:>10} {:>10} {:>10}",
                            name,
                            format!("n{}", s["nodeId"]),
                            addr,
                            s["role"].as_str().unwrap_or("?"),
                            s["ready"].to_string(),
                            s["term"].to_string(),
                            s["lastLogIndex"].to_string(),
                            s["commitIndex"].to_string(),
                            s["appliedIndex"].to_string()
                        ),
                        Err(e) => println!("{name:<12} {:<6} {addr:<22} unreachable: {e:#}", format!("id{id}")),
                    }
                }
            }
            Ok(())
        }
        AdminCmd::Leader { broker } => {
            let info = cluster(&ns).await?;
            let b = match &broker {
                Some(n) => info.broker_addr_table.get(n).ok_or_else(|| anyhow!("no broker group {n}"))?,
                None => info.broker_addr_table.values().next().ok_or_else(|| anyhow!("no broker group registered"))?,
            };
            let addr = b.master_addr().ok_or_else(|| anyhow!("group {} has no leader registered", b.broker_name))?;
            let s = node_status(addr).await?;
            if s["role"] != "Leader" {
                bail!("{addr} registered as leader but reports {}", s["role"]);
            }
            println!("n{}", s["nodeId"]);
            Ok(())
        }
        AdminCmd::Topic { cmd: TopicCmd::Create { name, queues } } => {
            let info = cluster(&ns).await?;
            for b in info.broker_addr_table.values() {
                let addr = b.master_addr().ok_or_else(|| anyhow!("group {} has no leader", b.broker_name))?;
                let h = CreateTopicRequestHeader {
                    topic: name.clone(),
                    default_topic: "TBW102".into(),
                    read_queue_nums: queues,
                    write_queue_nums: queues,
                    perm: 6,
                    topic_filter_type: "SINGLE_TAG".into(),
                    ..Default::default()
                };
                let c = connect(addr).await?;
                check(&call(&c, RemotingCommand::request(RequestCode::UPDATE_AND_CREATE_TOPIC, 0).with_header(&h)).await?, "create topic")?;
                println!("created {name} with {queues} queues on {}", b.broker_name);
            }
            Ok(())
        }
        AdminCmd::Topic { cmd: TopicCmd::List } => {
            let resp = call(&ns, RemotingCommand::request(RequestCode::GET_ALL_TOPIC_LIST_FROM_NAMESERVER, 0)).await?;
            check(&resp, "topic list")?;
            let v: serde_json::Value = serde_json::from_slice(&resp.body)?;
            for t in v["topicList"].as_array().into_iter().flatten() {
                println!("{}", t.as_str().unwrap_or_default());
            }
            Ok(())
        }
        AdminCmd::Topic { cmd: TopicCmd::Route { name } } => {
            let r = route(&ns, &name).await?.ok_or_else(|| anyhow!("topic {name} has no route"))?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        AdminCmd::Group { group, topic } => {
            let r = route(&ns, &topic).await?.ok_or_else(|| anyhow!("topic {topic} has no route"))?;
            println!("{:<12} {:>6} {:>12} {:>12} {:>10}", "group", "queue", "broker max", "consumer", "lag");
            for q in &r.queue_datas {
                let Some(addr) = r.broker_datas.iter().find(|b| b.broker_name == q.broker_name).and_then(|b| b.master_addr()) else {
                    continue;
                };
                let c = connect(addr).await?;
                for qid in 0..q.read_queue_nums {
                    let mh = GetMaxOffsetRequestHeader { topic: topic.clone(), queue_id: qid, ..Default::default() };
                    let max = call(&c, RemotingCommand::request(RequestCode::GET_MAX_OFFSET, 0).with_header(&mh)).await?;
                    let max = max.decode_header::<OffsetResponseHeader>().map(|h| h.offset).unwrap_or(0);
                    let qh = QueryConsumerOffsetRequestHeader {
                        consumer_group: group.clone(),
                        topic: topic.clone(),
                        queue_id: qid,
                        set_zero_if_not_found: Some(false),
                    };
                    let off = call(&c, RemotingCommand::request(RequestCode::QUERY_CONSUMER_OFFSET, 0).with_header(&qh)).await?;
                    let off = if off.code == ResponseCode::SUCCESS.0 {
                        off.decode_header::<OffsetResponseHeader>().map(|h| h.offset).ok()
                    } else {
                        None
                    };
                    let lag = off.map(|o| (max - o).max(0).to_string()).unwrap_or_else(|| "-".into());
                    println!(
                        "{:<12} {:>6} {:>12} {:>12} {:>10}",
                        q.broker_name,
                        qid,
                        max,
                        off.map(|o| o.to_string()).unwrap_or_else(|| "none".into()),
                        lag
                    );
                }
            }
            Ok(())
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Sends `count` messages, round-robin over the topic's writable queues.
pub async fn produce(a: ProduceArgs) -> Result<()> {
    let ns = connect(&a.namesrv).await?;
    // Unknown topics are created on first send from the TBW102 template, as RocketMQ producers do.
    let r = match route(&ns, &a.topic).await? {
        Some(r) => r,
        None => route(&ns, "TBW102").await?.ok_or_else(|| anyhow!("no route for {} and none for TBW102", a.topic))?,
    };
    let mut targets = Vec::new();
    for q in &r.queue_datas {
        if let Some(addr) = r.broker_datas.iter().find(|b| b.broker_name == q.broker_name).and_then(|b| b.master_addr()) {
            let c = connect(addr).await?;
            for qid in 0..q.write_queue_nums.clamp(1, 4) {
                targets.push((q.broker_name.clone(), c.clone(), qid));
            }
        }
    }
    if targets.is_empty() {
        bail!("no broker group with a leader serves {}", a.topic);
    }
    let mut ids = UniqIdGenerator::new(Ipv4Addr::LOCALHOST, std::process::id(), now_ms() as i32);
    let mut failures = 0u64;
    for i in 0..a.count {
        let (broker, c, qid) = &targets[(i as usize) % targets.len()];
        let body = a.body.clone().unwrap_or_else(|| format!("message {i}"));
        let mut props = String::new();
        let uniq = ids.next_id(now_ms());
        let mut list: Vec<(&str, &str)> = vec![(property::UNIQ_CLIENT_MESSAGE_ID_KEYIDX, &uniq), (property::WAIT_STORE_MSG_OK, "true")];
        if let Some(t) = &a.tag {
            list.push((property::TAGS, t));
        }
        if let Some(k) = &a.keys {
            list.push((property::KEYS, k));
        }
        encode_properties(list, &mut props)?;
        let h = SendMessageRequestHeader {
            producer_group: a.group.clone(),
            topic: a.topic.clone(),
            default_topic: "TBW102".into(),
            default_topic_queue_nums: 4,
            queue_id: *qid,
            sys_flag: 0,
            born_timestamp: now_ms(),
            flag: 0,
            properties: Some(props),
            ..Default::default()
        };
        let mut cmd = RemotingCommand::request(RequestCode::SEND_MESSAGE_V2, 0).with_body(body.into_bytes());
        h.write_ext_fields_v2(&mut cmd.ext_fields);
        let resp = call(c, cmd).await?;
        if resp.code == ResponseCode::SUCCESS.0 {
            let rh: SendMessageResponseHeader = resp.decode_header()?;
            println!("SEND_OK {broker} queue={} offset={} msgId={} uniqKey={uniq}", rh.queue_id, rh.queue_offset, rh.msg_id);
        } else {
            failures += 1;
            println!("FAILED code={} {}", resp.code, resp.remark.unwrap_or_default());
        }
    }
    if failures > 0 {
        bail!("{failures} of {} sends failed", a.count);
    }
    Ok(())
}

/// Pulls from every queue of the topic until `count` messages arrived, then commits the offsets.
pub async fn consume(a: ConsumeArgs) -> Result<()> {
    let ns = connect(&a.namesrv).await?;
    let r = route(&ns, &a.topic).await?.ok_or_else(|| anyhow!("topic {} has no route", a.topic))?;
    let mut queues = Vec::new();
    for q in &r.queue_datas {
        let Some(addr) = r.broker_datas.iter().find(|b| b.broker_name == q.broker_name).and_then(|b| b.master_addr()) else { continue };
        let c = connect(addr).await?;
        for qid in 0..q.read_queue_nums {
            let qh = QueryConsumerOffsetRequestHeader {
                consumer_group: a.group.clone(),
                topic: a.topic.clone(),
                queue_id: qid,
                set_zero_if_not_found: Some(true),
            };
            let resp = call(&c, RemotingCommand::request(RequestCode::QUERY_CONSUMER_OFFSET, 0).with_header(&qh)).await?;
            let start = if resp.code == ResponseCode::SUCCESS.0 { resp.decode_header::<OffsetResponseHeader>()?.offset } else { 0 };
            queues.push((q.broker_name.clone(), c.clone(), qid, start));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
    let mut got = 0u64;
    let mut next: BTreeMap<(String, i32), i64> = queues.iter().map(|(b, _, q, o)| ((b.clone(), *q), *o)).collect();
    while got < a.count && Instant::now() < deadline {
        let mut progressed = false;
        for (broker, c, qid, _) in &queues {
            let offset = next[&(broker.clone(), *qid)];
            let h = PullMessageRequestHeader {
                consumer_group: a.group.clone(),
                topic: a.topic.clone(),
                queue_id: *qid,
                queue_offset: offset,
                max_msg_nums: 32,
                sys_flag: 0,
                suspend_timeout_millis: 0,
                subscription: Some("*".into()),
                expression_type: Some("TAG".into()),
                ..Default::default()
            };
            let resp = call(c, RemotingCommand::request(RequestCode::PULL_MESSAGE, 0).with_header(&h)).await?;
            let rh: PullMessageResponseHeader = resp.decode_header()?;
            if resp.code == ResponseCode::SUCCESS.0 {
                for m in StoredMessages::new(&resp.body) {
                    let m = m?;
                    println!(
                        "{broker} queue={qid} offset={} tags={} keys={} body={}",
                        m.queue_offset,
                        m.tags().unwrap_or(""),
                        m.property(property::KEYS).unwrap_or(""),
                        String::from_utf8_lossy(m.body)
                    );
                    got += 1;
                    progressed = true;
                }
            }
            next.insert((broker.clone(), *qid), rh.next_begin_offset);
            if got >= a.count {
                break;
            }
        }
        if !progressed {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (broker, c, qid, _) in &queues {
        let h = UpdateConsumerOffsetRequestHeader {
            consumer_group: a.group.clone(),
            topic: a.topic.clone(),
            queue_id: *qid,
            commit_offset: next[&(broker.clone(), *qid)],
        };
        check(&call(c, RemotingCommand::request(RequestCode::UPDATE_CONSUMER_OFFSET, 0).with_header(&h)).await?, "commit offset")?;
    }
    println!("consumed {got} message(s)");
    if got < a.count {
        bail!("only {got} of {} messages within {} s", a.count, a.timeout_secs);
    }
    Ok(())
}
