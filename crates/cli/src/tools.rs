//! `raftmq admin`, `produce` and `consume`: thin command-line front ends over `raftmq-client` (its `Admin`,
//! `Producer`, `TransactionProducer` and `PullConsumer`) for operators and quick manual use.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use raftmq_client::{
    Admin, ClientConfig, ClientError, Message, MessageExt, MessageQueue, MessageSelector, Producer, ProducerOptions, PullConsumer,
    PullStatus, ResetTo, SelectByHash, TransactionListener, TransactionProducer, TransactionProducerOptions, TxnState,
};

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
    /// Hand a group's leadership to another member (e.g. before maintenance of the leader's host).
    TransferLeader {
        /// Broker group (default: the only or first one).
        #[arg(long)]
        broker: Option<String>,
        /// The member to lead next: its node id (`2` or `n2`).
        #[arg(long)]
        to: String,
    },
    /// Scheduled messages: the delay-level table and, per level, pending messages and the next due time.
    Schedule {
        /// Broker group (default: the only or first one).
        #[arg(long)]
        broker: Option<String>,
    },
    /// Replace a group's replicated delay-level table (RocketMQ `messageDelayLevel` syntax, e.g.
    /// "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h").
    DelayLevels {
        /// Broker group (default: the only or first one).
        #[arg(long)]
        broker: Option<String>,
        /// The new table.
        levels: String,
    },
    /// Group membership: list, add a fresh node, replace a dead one, remove one.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Consumer groups: progress and lag (`group show G --topic T`; `group G --topic T` is the same),
    /// server-side offset resets (`group reset`), and subscription groups (`group list`, `describe`,
    /// `create`, `delete`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Group {
        #[command(subcommand)]
        cmd: Option<GroupCmd>,
        /// Consumer group (the form without `show`).
        #[arg(required = true)]
        group: Option<String>,
        /// Topic.
        #[arg(long, required = true)]
        topic: Option<String>,
    },
    /// Find messages by key, by client message id (UNIQ_KEY, with --topic) or by offsetMsgId; one line
    /// per message.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["id", "key"])))]
    Message {
        /// A message id: the client msgId (UNIQ_KEY; needs --topic) or the broker's offsetMsgId (32 or 56 hex
        /// characters: store host + commitlog offset). With --topic both are tried.
        #[arg(long)]
        id: Option<String>,
        /// A business key (one token of the KEYS property); needs --topic.
        #[arg(long)]
        key: Option<String>,
        /// Topic the message was stored under.
        #[arg(long)]
        topic: Option<String>,
        /// Only messages stored since: an RFC 3339 time or a duration ago (`30m`, `2h`, `3d`).
        #[arg(long, value_parser = parse_since)]
        since: Option<i64>,
        /// Print the body too (as text, escaped).
        #[arg(long)]
        body: bool,
    },
}

/// Consumer-group subcommands.
#[derive(Subcommand)]
pub enum GroupCmd {
    /// Every broker group's subscription groups (GET_ALL_SUBSCRIPTIONGROUP_CONFIG), with each group's topics,
    /// queues and lag there; `implicit` marks a group known from offsets or consumers but never created.
    List,
    /// A group's config and, per topic and queue, the broker offset, the group's offset and the lag
    /// (GET_CONSUME_STATS), on every broker group.
    Describe {
        /// Consumer group.
        #[arg(long)]
        group: String,
    },
    /// Create or change a subscription group on every broker group (RocketMQ's defaults for what is not
    /// given).
    Create {
        /// Consumer group.
        #[arg(long)]
        group: String,
        /// Only on this cluster's broker groups.
        #[arg(long)]
        cluster: Option<String>,
        /// Refuse the group's pulls (consumeEnable = false).
        #[arg(long)]
        disable_consume: bool,
        /// Deliveries of a failed message before it goes to the dead-letter topic (retryMaxTimes).
        #[arg(long, default_value_t = 16)]
        retry_max_times: i32,
        /// Not only broadcast-allowed (consumeBroadcastEnable = false).
        #[arg(long)]
        no_broadcast: bool,
    },
    /// Delete a subscription group on every broker group.
    Delete {
        /// Consumer group.
        #[arg(long)]
        group: String,
        /// Only on this cluster's broker groups.
        #[arg(long)]
        cluster: Option<String>,
        /// Also delete the group's committed offsets (cleanOffset).
        #[arg(long)]
        clean_offset: bool,
    },
    /// Progress and lag per queue of a topic.
    Show {
        /// Consumer group.
        group: String,
        /// Topic.
        #[arg(long)]
        topic: String,
    },
    /// Rewind (or skip) a group's offsets on a topic, on every broker group serving it. Running consumers
    /// follow at their next pull; prints each queue's old → new offset.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["to_time", "to_earliest", "to_latest"])))]
    Reset {
        /// Consumer group.
        #[arg(long)]
        group: String,
        /// Topic.
        #[arg(long)]
        topic: String,
        /// To the first message stored at or after TIME: RFC 3339 (`2026-05-01T12:00:00Z`) or ms since the epoch.
        #[arg(long, value_name = "TIME", value_parser = parse_time_ms)]
        to_time: Option<i64>,
        /// To the oldest retained message.
        #[arg(long)]
        to_earliest: bool,
        /// To the end of each queue (skip everything stored so far).
        #[arg(long)]
        to_latest: bool,
        /// Move only offsets that go back (RocketMQ's isForce = false).
        #[arg(long)]
        only_back: bool,
    },
}

/// A time as RFC 3339 or as ms since the epoch.
fn parse_time_ms(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return if ms >= 0 { Ok(ms) } else { Err(format!("{s}: a time in ms since the epoch is not negative")) };
    }
    let t = parse_rfc3339(s).map_err(|e| format!("{e} (or give ms since the epoch)"))?;
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).map_err(|e| e.to_string())
}

/// `raftmq admin node` subcommands.
#[derive(Subcommand)]
pub enum NodeCmd {
    /// Members of a group: id, Raft and client address, voter or learner, matched log index and lag.
    List {
        /// Broker group (default: the only or first one).
        #[arg(long)]
        broker: Option<String>,
    },
    /// Add a fresh node (started with its own config, `bootstrap = false`, an empty store and a node id never
    /// used in the group): it joins as a learner, catches up (snapshot + log), then becomes a voter.
    Add {
        /// Broker group (default: the only or first one).
        #[arg(long)]
        broker: Option<String>,
        /// The new node's client address (host:port); the leader asks it for its id and Raft address.
        #[arg(long)]
        addr: String,
        /// Give up waiting for the catch-up after this many seconds (the node stays a learner).
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Replace a dead voter by a fresh node with a new id, in one joint change once the new node caught up.
    Replace {
        /// The voter to replace (`2` or `n2`).
        node: String,
        /// Broker group (default: the only or first one).
        #[arg(long)]
        broker: Option<String>,
        /// The new node's client address (host:port).
        #[arg(long)]
        addr: String,
        /// Give up waiting for the catch-up after this many seconds (the new node stays a learner).
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Wait until a member (e.g. one just restarted) holds and has applied everything the group had committed
    /// when the wait began; exits non-zero on timeout. `scripts/rolling-restart.sh` calls it between nodes.
    Wait {
        /// The member (`2` or `n2`).
        node: String,
        /// Broker group (default: the only or first one).
        #[arg(long)]
        broker: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Remove a member. Removing the leader moves leadership to another voter first.
    Remove {
        /// The member to remove (`2` or `n2`).
        node: String,
        /// Broker group (default: the only or first one).
        #[arg(long)]
        broker: Option<String>,
        /// Remove even below 3 voters, or when the remaining voters may not form a quorum.
        #[arg(long)]
        force: bool,
    },
}

/// A learner is asked to become a voter once it is at most this many log entries behind the leader (openraft's
/// `replication_lag_threshold` in raftmq's node config); the leader then waits for the rest.
const PROMOTE_LAG_MAX: u64 = 1000;
/// RocketMQ SYSTEM_BUSY: the learner has not caught up yet; keep waiting.
const CODE_SYSTEM_BUSY: i32 = 2;
/// RocketMQ SERVICE_NOT_AVAILABLE: the node asked is no longer the (ready) leader; ask again.
const CODE_SERVICE_NOT_AVAILABLE: i32 = 14;

fn parse_node(s: &str) -> Result<u64> {
    match s.trim().trim_start_matches('n').parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => bail!("{s:?} is not a node id (e.g. 2 or n2)"),
    }
}

/// The member `id` in a RAFTMQ_MEMBERS answer.
fn member_of(members: &serde_json::Value, id: u64) -> Option<&serde_json::Value> {
    members["members"].as_array()?.iter().find(|m| m["nodeId"].as_u64() == Some(id))
}

/// Waits until member `id` answers, the leader has replicated to it everything committed when the wait
/// began (its matched index), and it applied that much itself. Follows a change of leader. Returns the
/// group and when the wait began.
async fn wait_caught_up(admin: &Admin, broker: Option<&str>, id: u64, timeout: Duration) -> Result<(String, Instant)> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut goal: Option<u64> = None;
    let mut last_print = Instant::now();
    let mut seen = String::from("no answer yet");
    loop {
        if let Ok((group, leader)) = registered_leader(admin, broker).await {
            if goal.is_none() {
                goal = admin.node_status(&leader).await.ok().and_then(|s| s["commitIndex"].as_u64());
            }
            if let (Some(goal), Ok(m)) = (goal, admin.members(&leader).await) {
                let member = member_of(&m, id).ok_or_else(|| anyhow!("n{id} is not a member of {group}"))?;
                let matched = member["matched"].as_u64().unwrap_or(0);
                let applied = match member["clientAddr"].as_str() {
                    Some(addr) => admin.node_status(addr).await.ok().and_then(|s| s["appliedIndex"].as_u64()),
                    None => None,
                };
                seen = format!("matched {matched}, applied {}, goal {goal}", fmt_index(applied));
                if matched >= goal && applied.is_some_and(|a| a >= goal) {
                    return Ok((group, started));
                }
            }
        }
        if Instant::now() >= deadline {
            bail!("n{id} did not catch up within {timeout:?} ({seen})");
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            println!("n{id}: {seen}");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for learner `id` of `group` to catch up, printing its matched index against the leader's last index
/// once a second, then has the leader promote it (or swap it for `replaces`). Follows a change of leader.
async fn catch_up_and_promote(admin: &Admin, group: &str, id: u64, replaces: Option<u64>, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_print = Instant::now() - Duration::from_secs(1);
    let mut seen = (None, None);
    loop {
        let (_, leader) = registered_leader(admin, Some(group)).await?;
        match admin.members(&leader).await {
            Ok(m) => {
                let member = member_of(&m, id).ok_or_else(|| anyhow!("n{id} is no longer a member of {group}"))?;
                if member["role"] == "voter" {
                    return Ok(());
                }
                let (matched, last) = (member["matched"].as_u64(), m["lastLogIndex"].as_u64());
                seen = (matched, last);
                if last_print.elapsed() >= Duration::from_secs(1) {
                    let lag = last.unwrap_or(0).saturating_sub(matched.unwrap_or(0));
                    println!("n{id} catching up: matched {} of {} (lag {lag})", fmt_index(matched), fmt_index(last));
                    last_print = Instant::now();
                }
                let lag = matched.map(|x| last.unwrap_or(0).saturating_sub(x));
                if lag.is_some_and(|l| l <= PROMOTE_LAG_MAX) {
                    match admin.promote_node(&leader, id, replaces).await {
                        Ok(()) => return Ok(()),
                        Err(e) if e.response_code() == Some(CODE_SYSTEM_BUSY) => {}
                        Err(e) if e.response_code() == Some(CODE_SERVICE_NOT_AVAILABLE) => {}
                        Err(e) => return Err(anyhow!(e).context(format!("promote n{id}"))),
                    }
                }
            }
            // The leader moved or is electing: find the new one.
            Err(e) => eprintln!("members of {group} from {leader}: {e}"),
        }
        if Instant::now() >= deadline {
            bail!(
                "n{id} did not catch up within {} s (matched {} of {}); it stays a learner: run the same command again to keep \
                 waiting, or `raftmq admin node remove n{id}`",
                timeout.as_secs(),
                fmt_index(seen.0),
                fmt_index(seen.1)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fmt_index(i: Option<u64>) -> String {
    i.map(|i| i.to_string()).unwrap_or_else(|| "-".into())
}

async fn run_node(admin: &Admin, cmd: NodeCmd) -> Result<()> {
    match cmd {
        NodeCmd::List { broker } => {
            let (group, addr) = registered_leader(admin, broker.as_deref()).await?;
            let m = admin.members(&addr).await.with_context(|| format!("members of {group}"))?;
            println!(
                "{:<12} {:<6} {:<22} {:<22} {:<8} {:>10} {:>8}",
                "group", "node", "raft addr", "client addr", "role", "matched", "lag"
            );
            for x in m["members"].as_array().into_iter().flatten() {
                let leader = x["nodeId"] == m["leader"];
                println!(
                    "{:<12} {:<6} {:<22} {:<22} {:<8} {:>10} {:>8}",
                    group,
                    format!("n{}", x["nodeId"]),
                    x["raftAddr"].as_str().unwrap_or("?"),
                    x["clientAddr"].as_str().unwrap_or("-"),
                    if leader { "leader" } else { x["role"].as_str().unwrap_or("?") },
                    fmt_index(x["matched"].as_u64()),
                    fmt_index(x["lag"].as_u64())
                );
            }
            Ok(())
        }
        NodeCmd::Add { broker, addr, timeout_secs } => {
            let (group, leader) = registered_leader(admin, broker.as_deref()).await?;
            let added = admin.add_node(&leader, &addr).await.with_context(|| format!("add the node at {addr} to {group}"))?;
            let id = added["nodeId"].as_u64().ok_or_else(|| anyhow!("the leader did not name the new node"))?;
            println!("n{id} ({addr}, raft {}) is a learner of {group}", added["raftAddr"].as_str().unwrap_or("?"));
            catch_up_and_promote(admin, &group, id, None, Duration::from_secs(timeout_secs)).await?;
            println!("n{id} is a voter of {group}");
            Ok(())
        }
        NodeCmd::Replace { node, broker, addr, timeout_secs } => {
            let dead = parse_node(&node)?;
            let (group, leader) = registered_leader(admin, broker.as_deref()).await?;
            let m = admin.members(&leader).await.with_context(|| format!("members of {group}"))?;
            if member_of(&m, dead).is_none_or(|x| x["role"] != "voter") {
                bail!("n{dead} is not a voter of {group}");
            }
            let added = admin.add_node(&leader, &addr).await.with_context(|| format!("add the node at {addr} to {group}"))?;
            let id = added["nodeId"].as_u64().ok_or_else(|| anyhow!("the leader did not name the new node"))?;
            println!("n{id} ({addr}) is a learner of {group}, to replace n{dead}");
            catch_up_and_promote(admin, &group, id, Some(dead), Duration::from_secs(timeout_secs)).await?;
            println!("n{id} replaced n{dead} in {group}");
            Ok(())
        }
        NodeCmd::Wait { node, broker, timeout_secs } => {
            let id = parse_node(&node)?;
            let (group, started) = wait_caught_up(admin, broker.as_deref(), id, Duration::from_secs(timeout_secs)).await?;
            println!("n{id} of {group} caught up in {} ms", started.elapsed().as_millis());
            Ok(())
        }
        NodeCmd::Remove { node, broker, force } => {
            let id = parse_node(&node)?;
            let (group, leader) = registered_leader(admin, broker.as_deref()).await?;
            admin.remove_node(&leader, id, force).await.with_context(|| format!("remove n{id} from {group}"))?;
            println!("n{id} removed from {group}");
            Ok(())
        }
    }
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
    /// Delete a topic: on every broker group's leader (its config, queues and every group's offsets on it;
    /// replicated), then its route on every nameserver. Its messages stay in the commitlog until retention
    /// deletes their segments. System topics are refused.
    Delete {
        /// Topic name.
        #[arg(long)]
        topic: String,
        /// Only this cluster's broker groups.
        #[arg(long)]
        cluster: Option<String>,
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
    /// A user property `KEY=VALUE` (repeatable); `{i}` in the value is replaced by the message's number
    /// (0, 1, …), e.g. `--property n={i}`. SQL92 consumers (`raftmq consume --sql`) select on properties.
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    properties: Vec<(String, String)>,
    /// Producer group.
    #[arg(long, default_value = "raftmq_cli_producer")]
    group: String,
    /// Send every message to the queue chosen by this key's hash (ordered messages).
    #[arg(long)]
    order_key: Option<String>,
    /// Send the messages as batches of this size (one queue per batch, stored all or nothing).
    #[arg(long)]
    batch: Option<usize>,
    /// Deliver each message after this delay level's delay (RocketMQ `DELAY`; 1 = 1 s … 18 = 2 h with the
    /// default table, see `raftmq admin schedule`). Not with `--batch`.
    #[arg(long, conflicts_with_all = ["batch", "delay", "deliver_at"])]
    delay_level: Option<u32>,
    /// Deliver each message this long after the broker receives it (`1500ms`, `30s`, `10m`, `2h`, `40d`;
    /// RocketMQ 5 `TIMER_DELAY_MS`). Not with `--batch`.
    #[arg(long, conflicts_with_all = ["batch", "deliver_at"], value_parser = parse_delay)]
    delay: Option<std::time::Duration>,
    /// Deliver each message at this time (RFC 3339, e.g. `2026-12-24T18:00:00+01:00`; RocketMQ 5
    /// `TIMER_DELIVER_MS`). Not with `--batch`.
    #[arg(long, conflicts_with = "batch", value_parser = parse_rfc3339)]
    deliver_at: Option<std::time::SystemTime>,
    /// Send each message as a transaction: a half message, then this local outcome. `unknown` leaves it to
    /// the broker's check-back, which this command then answers with commit (it waits for it).
    #[arg(long, value_enum, conflicts_with_all = ["batch", "order_key", "delay_level", "delay", "deliver_at"])]
    transaction: Option<TxnMode>,
    /// With `--transaction unknown`: how long to wait for the broker's check-backs, in seconds (a raftmq
    /// broker checks back about `transactionTimeOut`, 6 s by default, after the half message; an Apache
    /// RocketMQ 4.x broker at its next check pass after that, every 60 s).
    #[arg(long, default_value_t = 90)]
    check_timeout_secs: u64,
}

/// The local outcome `raftmq produce --transaction` reports for each message.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum TxnMode {
    /// Commit: the message becomes visible.
    Commit,
    /// Roll back: the message is discarded.
    Rollback,
    /// Unknown: the broker checks back, and the answer is commit.
    Unknown,
}

impl TxnMode {
    fn state(self) -> TxnState {
        match self {
            TxnMode::Commit => TxnState::Commit,
            TxnMode::Rollback => TxnState::Rollback,
            TxnMode::Unknown => TxnState::Unknown,
        }
    }
}

/// A delay such as `1500ms`, `30s`, `10m`, `2h` or `40d` (the `messageDelayLevel` syntax).
fn parse_delay(s: &str) -> Result<std::time::Duration, String> {
    raftmq_state::schedule::parse_duration_ms(s).map(std::time::Duration::from_millis)
}

/// `--since`: an RFC 3339 time or a duration before now, as epoch ms.
fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    let ago = parse_delay(s).map_err(|e| format!("{s:?} is neither an RFC 3339 time nor a duration ({e})"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?;
    Ok(now.saturating_sub(ago).as_millis() as i64)
}

/// One line describing a found message (`raftmq admin message`).
fn message_line(m: &MessageExt, with_body: bool) -> String {
    let stored = chrono::DateTime::from_timestamp_millis(m.store_timestamp)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| m.store_timestamp.to_string());
    let props: Vec<String> = m.properties.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut line = format!(
        "topic={} broker={} queue={} queueOffset={} storeTime={} msgId={} offsetMsgId={} keys={} tags={} properties={{{}}}",
        m.topic,
        m.broker_name,
        m.queue_id,
        m.queue_offset,
        stored,
        m.msg_id,
        m.offset_msg_id,
        m.keys().join(","),
        m.tags().unwrap_or(""),
        props.join(";")
    );
    if with_body {
        line.push_str(&format!(" body={}", String::from_utf8_lossy(&m.body).escape_debug()));
    }
    line
}

/// An RFC 3339 timestamp.
fn parse_rfc3339(s: &str) -> Result<std::time::SystemTime, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?;
    let ms = u64::try_from(t.timestamp_millis()).map_err(|_| format!("{s:?} is before 1970"))?;
    Ok(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
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
    /// Tag expression (`*` or `TagA || TagB`).
    #[arg(long, default_value = "*")]
    expression: String,
    /// Select by a SQL92 expression over message properties and TAGS instead of a tag expression, e.g.
    /// `--sql "n > 5 AND TAGS IN ('a')"` (evaluated on the broker; needs `enablePropertyFilter`).
    #[arg(long, conflicts_with = "expression")]
    sql: Option<String>,
}

fn config(namesrv: &str) -> ClientConfig {
    crate::client_config(namesrv).with_instance_name(format!("raftmq-cli-{}", std::process::id()))
}

/// Runs an admin command.
pub async fn admin(namesrv: &str, cmd: AdminCmd) -> Result<()> {
    let admin = Admin::start(config(namesrv)).await?;
    let result = run_admin(&admin, cmd).await;
    admin.shutdown().await;
    result
}

/// How long admin commands wait for a group's leader to be registered: an election or a leader transfer
/// leaves the nameserver without a brokerId 0 for about a second, until the new leader has confirmed its
/// leadership with a quorum and registered.
const LEADER_REGISTRATION_WAIT: Duration = Duration::from_secs(10);

/// The group (`broker`, or the first registered) and the client address its leader registered, waiting
/// up to [`LEADER_REGISTRATION_WAIT`] while none is registered.
async fn registered_leader(admin: &Admin, broker: Option<&str>) -> Result<(String, String)> {
    let deadline = Instant::now() + LEADER_REGISTRATION_WAIT;
    loop {
        let info = admin.cluster_info().await.context("cluster info")?;
        let b = match broker {
            Some(n) => info.broker_addr_table.get(n).ok_or_else(|| anyhow!("no broker group {n}"))?,
            None => info.broker_addr_table.values().next().ok_or_else(|| anyhow!("no broker group registered"))?,
        };
        match b.master_addr() {
            Some(addr) => return Ok((b.broker_name.clone(), addr.to_string())),
            None if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            None => bail!("group {} has no leader registered (waited {LEADER_REGISTRATION_WAIT:?})", b.broker_name),
        }
    }
}

async fn run_admin(admin: &Admin, cmd: AdminCmd) -> Result<()> {
    match cmd {
        AdminCmd::Status => {
            let info = admin.cluster_info().await.context("cluster info")?;
            println!(
                "{:<12} {:<6} {:<22} {:<10} {:>6} {:>8} {:>10} {:>10} {:>10}",
                "group", "node", "address", "role", "ready", "term", "last", "commit", "applied"
            );
            for (name, b) in &info.broker_addr_table {
                for (id, addr) in &b.broker_addrs {
                    match admin.node_status(addr).await {
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
            println!();
            println!(
                "{:<12} {:<6} {:>10} {:>8} {:>14} {:>7} {:>5}  retention held by",
                "group", "node", "floor", "purges", "retained", "disk", "full"
            );
            for (name, b) in &info.broker_addr_table {
                for addr in b.broker_addrs.values() {
                    if let Ok(s) = admin.node_status(addr).await {
                        let r = &s["retention"];
                        println!(
                            "{:<12} {:<6} {:>10} {:>8} {:>14} {:>6.1}% {:>5}  {}",
                            name,
                            format!("n{}", s["nodeId"]),
                            r["floorIndex"].to_string(),
                            r["purges"].to_string(),
                            r["retainedBytes"].to_string(),
                            r["diskUsedRatio"].as_f64().unwrap_or(0.0) * 100.0,
                            r["diskFull"].to_string(),
                            r["heldBy"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            // Writes this member forwarded to the group's leader, and writes that waited for one (elections,
            // transfers): docs/protocol.md, Forwarding and the election wait.
            println!();
            println!(
                "{:<12} {:<6} {:>10} {:>8} {:>10} {:>8} {:>10} {:>8}",
                "group", "node", "forwarded", "refused", "unanswered", "waits", "waitedMs", "expired"
            );
            for (name, b) in &info.broker_addr_table {
                for addr in b.broker_addrs.values() {
                    if let Ok(s) = admin.node_status(addr).await {
                        let f = &s["forwarding"];
                        println!(
                            "{:<12} {:<6} {:>10} {:>8} {:>10} {:>8} {:>10} {:>8}",
                            name,
                            format!("n{}", s["nodeId"]),
                            f["forwarded"].as_u64().unwrap_or(0),
                            f["refused"].as_u64().unwrap_or(0),
                            f["unanswered"].as_u64().unwrap_or(0),
                            f["leaderWaits"].as_u64().unwrap_or(0),
                            f["leaderWaitedMs"].as_u64().unwrap_or(0),
                            f["leaderWaitsExpired"].as_u64().unwrap_or(0)
                        );
                    }
                }
            }
            Ok(())
        }
        AdminCmd::Leader { broker } => {
            let (_, addr) = registered_leader(admin, broker.as_deref()).await?;
            let s = admin.node_status(&addr).await?;
            if s["role"] != "Leader" {
                bail!("{addr} registered as leader but reports {}", s["role"]);
            }
            println!("n{}", s["nodeId"]);
            Ok(())
        }
        AdminCmd::Schedule { broker } => {
            let (group, addr) = registered_leader(admin, broker.as_deref()).await?;
            let s = admin.node_status(&addr).await?;
            let sched = &s["schedule"];
            println!("group {group}  store clock {} ms  delay levels: {}", s["clockMs"], sched["delayLevels"].as_str().unwrap_or("?"));
            println!("{:>6} {:>12} {:>10} {:>26}", "level", "delay", "pending", "next due");
            for p in sched["pending"].as_array().into_iter().flatten() {
                let due = p["nextDueMs"].as_i64().map(|ms| {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
                    format!("{ms} (in {} ms)", ms - now)
                });
                println!(
                    "{:>6} {:>12} {:>10} {:>26}",
                    p["level"].to_string(),
                    p["delayMs"].as_u64().map(|d| format!("{d} ms")).unwrap_or_default(),
                    p["pending"].to_string(),
                    due.unwrap_or_else(|| "-".into())
                );
            }
            println!("timers pending: {}", sched["timersPending"]);
            if let Some(lines) = sched["timerLines"].as_array().filter(|l| !l.is_empty()) {
                println!("{:>6} {:>14} {:>10} {:>26}", "line", "delay", "pending", "next eligible");
                for l in lines {
                    println!(
                        "{:>6} {:>14} {:>10} {:>26}",
                        l["line"].to_string(),
                        l["delayMs"].as_i64().map(|d| format!("{d} ms")).unwrap_or_default(),
                        l["pending"].to_string(),
                        l["nextEligibleMs"].to_string()
                    );
                }
            }
            Ok(())
        }
        AdminCmd::DelayLevels { broker, levels } => {
            let (group, addr) = registered_leader(admin, broker.as_deref()).await?;
            admin.set_delay_levels(&addr, &levels).await.with_context(|| format!("set the delay levels of {group}"))?;
            println!("{group}: {levels}");
            Ok(())
        }
        AdminCmd::TransferLeader { broker, to } => {
            let target: u64 = to.trim_start_matches('n').parse().with_context(|| format!("--to {to}: expected a node id like 2 or n2"))?;
            let (group, addr) = registered_leader(admin, broker.as_deref()).await?;
            admin.transfer_leader(&addr, target).await.with_context(|| format!("transfer leadership of {group} to n{target}"))?;
            println!("n{target}");
            Ok(())
        }
        AdminCmd::Node { cmd } => run_node(admin, cmd).await,
        AdminCmd::Topic { cmd: TopicCmd::Create { name, queues } } => {
            for group in admin.create_topic(&name, queues).await.context("create topic")? {
                println!("created {name} with {queues} queues on {group}");
            }
            Ok(())
        }
        AdminCmd::Topic { cmd: TopicCmd::List } => {
            for t in admin.topic_list().await? {
                println!("{t}");
            }
            Ok(())
        }
        AdminCmd::Topic { cmd: TopicCmd::Delete { topic, cluster } } => {
            let (groups, namesrvs) =
                admin.delete_topic(&topic, cluster.as_deref()).await.with_context(|| format!("delete topic {topic}"))?;
            for g in groups {
                println!("deleted {topic} on {g}");
            }
            for n in namesrvs {
                println!("deleted the route of {topic} on nameserver {n}");
            }
            Ok(())
        }
        AdminCmd::Group { cmd: Some(GroupCmd::List), .. } => {
            println!(
                "{:<12} {:<32} {:>8} {:>6} {:>8} {:>7} {:>7} {:>10}",
                "broker", "group", "consume", "retry", "implicit", "topics", "queues", "lag"
            );
            for (broker, w) in admin.all_subscription_groups().await? {
                for (name, g) in &w.subscription_group_table {
                    let stats = admin.consume_stats(&broker, name, None).await.ok();
                    let (topics, queues, lag) = stats.map_or((0, 0, 0), |s| {
                        let topics: BTreeSet<&str> = s.offset_table.keys().map(|q| q.topic.as_str()).collect();
                        let lag: i64 = s.offset_table.values().map(|o| (o.broker_offset - o.consumer_offset).max(0)).sum();
                        (topics.len(), s.offset_table.len(), lag)
                    });
                    println!(
                        "{:<12} {:<32} {:>8} {:>6} {:>8} {:>7} {:>7} {:>10}",
                        broker, name, g.consume_enable, g.retry_max_times, g.raftmq_implicit, topics, queues, lag
                    );
                }
            }
            Ok(())
        }
        AdminCmd::Group { cmd: Some(GroupCmd::Describe { group }), .. } => {
            for (broker, w) in admin.all_subscription_groups().await? {
                match w.subscription_group_table.get(&group) {
                    Some(g) => println!("{broker}: {}", serde_json::to_string(g)?),
                    None => println!("{broker}: group {group} has no config and no offsets or consumers here"),
                }
                let stats =
                    admin.consume_stats(&broker, &group, None).await.with_context(|| format!("consume stats of {group} on {broker}"))?;
                println!("{:<12} {:<32} {:>6} {:>12} {:>12} {:>10}", "broker", "topic", "queue", "broker max", "consumer", "lag");
                for (q, o) in &stats.offset_table {
                    println!(
                        "{:<12} {:<32} {:>6} {:>12} {:>12} {:>10}",
                        broker,
                        q.topic,
                        q.queue_id,
                        o.broker_offset,
                        o.consumer_offset,
                        (o.broker_offset - o.consumer_offset).max(0)
                    );
                }
            }
            Ok(())
        }
        AdminCmd::Group { cmd: Some(GroupCmd::Create { group, cluster, disable_consume, retry_max_times, no_broadcast }), .. } => {
            let mut c = raftmq_client::SubscriptionGroupConfig::new(group.clone());
            c.consume_enable = !disable_consume;
            c.retry_max_times = retry_max_times;
            c.consume_broadcast_enable = !no_broadcast;
            for b in admin.create_subscription_group(&c, cluster.as_deref()).await.with_context(|| format!("create group {group}"))? {
                println!("stored subscription group {group} on {b}");
            }
            Ok(())
        }
        AdminCmd::Group { cmd: Some(GroupCmd::Delete { group, cluster, clean_offset }), .. } => {
            for b in admin
                .delete_subscription_group(&group, clean_offset, cluster.as_deref())
                .await
                .with_context(|| format!("delete group {group}"))?
            {
                println!("deleted subscription group {group} on {b}{}", if clean_offset { " with its offsets" } else { "" });
            }
            Ok(())
        }
        AdminCmd::Topic { cmd: TopicCmd::Route { name } } => {
            let r = admin.topic_route(&name).await?.ok_or_else(|| anyhow!("topic {name} has no route"))?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        AdminCmd::Group { cmd: Some(GroupCmd::Reset { group, topic, to_time, to_earliest, to_latest: _, only_back }), .. } => {
            let to = match (to_time, to_earliest) {
                (Some(ms), _) => ResetTo::Time(ms),
                (None, true) => ResetTo::Earliest,
                (None, false) => ResetTo::Latest,
            };
            let before: BTreeMap<MessageQueue, Option<i64>> =
                admin.group_progress(&group, &topic).await?.into_iter().map(|p| (p.queue, p.consumer_offset)).collect();
            let moved =
                admin.reset_offset(&group, &topic, to, !only_back).await.with_context(|| format!("reset group {group} on {topic}"))?;
            println!("{:<12} {:>6} {:>12}    {:<12}", "group", "queue", "old", "new");
            for (q, new) in &moved {
                let old = before.get(q).copied().flatten().map(|o| o.to_string()).unwrap_or_else(|| "none".into());
                println!("{:<12} {:>6} {:>12} -> {:<12}", q.broker_name, q.queue_id, old, new);
            }
            if moved.is_empty() {
                println!("no offset moved");
            }
            Ok(())
        }
        AdminCmd::Group { cmd: Some(GroupCmd::Show { group, topic }), .. }
        | AdminCmd::Group { cmd: None, group: Some(group), topic: Some(topic) } => {
            println!("{:<12} {:>6} {:>12} {:>12} {:>10}", "group", "queue", "broker max", "consumer", "lag");
            for p in admin.group_progress(&group, &topic).await? {
                println!(
                    "{:<12} {:>6} {:>12} {:>12} {:>10}",
                    p.queue.broker_name,
                    p.queue.queue_id,
                    p.broker_offset,
                    p.consumer_offset.map(|o| o.to_string()).unwrap_or_else(|| "none".into()),
                    p.lag().map(|l| l.to_string()).unwrap_or_else(|| "-".into())
                );
            }
            // Messages retention deleted before this group consumed them (replicated, per broker group).
            let info = admin.cluster_info().await.context("cluster info")?;
            for (name, b) in &info.broker_addr_table {
                let Some(addr) = b.broker_addrs.get(&0) else { continue };
                if let Ok(s) = admin.node_status(addr).await {
                    let lost = s["retention"]["lost"][&group][&topic].as_u64().unwrap_or(0);
                    println!("{name}: {lost} messages of {topic} lost to retention before {group} consumed them");
                }
            }
            Ok(())
        }
        AdminCmd::Message { id, key, topic, since, body } => {
            let begin = since.unwrap_or(0);
            let found: Vec<MessageExt> = match (id, key) {
                (_, Some(key)) => {
                    let topic = topic.ok_or_else(|| anyhow!("--key needs --topic: keys are indexed per topic"))?;
                    admin.query_message_by_key(&topic, &key, raftmq_client::admin::QUERY_MESSAGES_MAX, begin, i64::MAX).await?
                }
                (Some(id), None) => {
                    let mut found = Vec::new();
                    if let Some(t) = &topic {
                        found = admin.query_message_by_uniq_key(t, &id).await?;
                        found.retain(|m| m.store_timestamp >= begin);
                    }
                    if found.is_empty() {
                        match admin.view_message(&id).await {
                            Ok(m) => {
                                if m.store_timestamp >= begin && topic.as_ref().is_none_or(|t| *t == m.topic) {
                                    found.push(m);
                                }
                            }
                            Err(ClientError::InvalidMessage(e)) if topic.is_none() => {
                                bail!("{id:?} is not an offsetMsgId ({e}); a client msgId (UNIQ_KEY) needs --topic")
                            }
                            Err(e) if topic.is_none() => return Err(e.into()),
                            // With --topic the id was a msgId first; an offsetMsgId reading of it that fails
                            // means it names no message either way.
                            Err(_) => {}
                        }
                    }
                    found
                }
                (None, None) => bail!("give --id or --key"),
            };
            if found.is_empty() {
                bail!("no message found");
            }
            for m in &found {
                println!("{}", message_line(m, body));
            }
            Ok(())
        }
        AdminCmd::Group { .. } => bail!("usage: raftmq admin group show GROUP --topic T, or group reset --group G --topic T --to-…"),
    }
}

/// The message number `i` of `raftmq produce` as the arguments describe it.
fn cli_message(a: &ProduceArgs, i: u64) -> Message {
    let body = a.body.clone().unwrap_or_else(|| format!("message {i}"));
    let mut m = Message::new(a.topic.clone(), body);
    if let Some(t) = &a.tag {
        m = m.with_tags(t.clone());
    }
    if let Some(k) = &a.keys {
        m = m.with_keys(k.split(' '));
    }
    for (k, v) in &a.properties {
        m = m.with_property(k.clone(), v.replace("{i}", &i.to_string()));
    }
    m
}

/// `KEY=VALUE` of `--property`.
fn parse_property(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE with a non-empty KEY")),
    }
}

/// Sends `count` messages (round-robin over the queues, or by `--order-key`, or in `--batch`es, or as
/// transactions).
pub async fn produce(a: ProduceArgs) -> Result<()> {
    if let Some(mode) = a.transaction {
        return produce_transactional(&a, mode).await;
    }
    let producer = Producer::start(config(&a.namesrv), ProducerOptions::new(a.group.clone())).await?;
    let message = |i: u64| {
        let mut m = cli_message(&a, i);
        if let Some(level) = a.delay_level {
            m = m.with_delay_level(level);
        }
        if let Some(d) = a.delay {
            m = m.with_delay(d);
        }
        if let Some(at) = a.deliver_at {
            m = m.with_delivery_time(at);
        }
        m
    };
    let mut failures = 0u64;
    let mut report = |r: raftmq_client::Result<raftmq_client::SendResult>| match r {
        Ok(r) => println!("{} {} queue={} offset={} msgId={}", r.status, r.queue.broker_name, r.queue.queue_id, r.queue_offset, r.msg_id),
        Err(e) => {
            failures += 1;
            println!("FAILED {e}");
        }
    };
    match a.batch {
        Some(n) if n > 0 => {
            let all: Vec<Message> = (0..a.count).map(message).collect();
            for chunk in all.chunks(n) {
                report(producer.send_batch(chunk.to_vec()).await);
            }
        }
        _ => {
            for i in 0..a.count {
                let r = match &a.order_key {
                    Some(k) => producer.send_with_selector(message(i), &SelectByHash, k.as_str()).await,
                    None => producer.send(message(i)).await,
                };
                report(r);
            }
        }
    }
    producer.shutdown().await;
    if failures > 0 {
        bail!("{failures} send(s) failed");
    }
    Ok(())
}

/// The CLI's local transactions: each reports the `--transaction` outcome. A check-back is answered for the
/// transactions this run sent (commit in `unknown` mode, else the outcome given) and `unknown` for any
/// other of the group's (an earlier run's): this process cannot know what became of those.
struct CliTransactions {
    mode: TxnMode,
    /// Transaction ids (UNIQ_KEY) this run sent, recorded when their local transaction ran.
    sent: Mutex<BTreeSet<String>>,
    /// Ids of this run whose check-back was answered, with the answer.
    checked: Mutex<BTreeMap<String, TxnState>>,
    /// Check-backs answered so far, this run's and others'.
    checks: AtomicU64,
}

impl TransactionListener for CliTransactions {
    type Arg = ();

    fn execute_local(&self, msg: &Message, _: &()) -> TxnState {
        if let Some(id) = msg.msg_id() {
            self.sent.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string());
        }
        self.mode.state()
    }

    fn check_local(&self, msg: &MessageExt) -> TxnState {
        let ours = self.sent.lock().unwrap_or_else(|e| e.into_inner()).contains(&msg.msg_id);
        let answer = match (ours, self.mode) {
            (false, _) => {
                println!("check-back for transactionId={} (not sent by this run): answering unknown", msg.msg_id);
                TxnState::Unknown
            }
            (true, TxnMode::Unknown) => TxnState::Commit,
            (true, mode) => mode.state(),
        };
        if ours {
            self.checked.lock().unwrap_or_else(|e| e.into_inner()).insert(msg.msg_id.clone(), answer);
        }
        self.checks.fetch_add(1, Ordering::SeqCst);
        answer
    }
}

/// `raftmq produce --transaction`: each message as a half message, then the given local outcome; with
/// `unknown`, waits until the broker checked back on every one and the answers (commit) were sent.
async fn produce_transactional(a: &ProduceArgs, mode: TxnMode) -> Result<()> {
    let listener = CliTransactions { mode, sent: Mutex::default(), checked: Mutex::default(), checks: AtomicU64::new(0) };
    let opts = TransactionProducerOptions::new(a.group.clone());
    let producer = TransactionProducer::start(config(&a.namesrv), opts, listener).await?;
    let result = send_transactions(&producer, a, mode).await;
    producer.shutdown().await;
    result
}

async fn send_transactions(producer: &TransactionProducer<CliTransactions>, a: &ProduceArgs, mode: TxnMode) -> Result<()> {
    let mut failures = 0u64;
    let mut pending = BTreeSet::new();
    for i in 0..a.count {
        match producer.send_in_transaction(cli_message(a, i), &()).await {
            Ok(r) => {
                println!("{r}{}", if r.end_sent { "" } else { " (END_TRANSACTION not sent; the broker will check back)" });
                if r.local_state == TxnState::Unknown || !r.end_sent {
                    pending.insert(r.transaction_id);
                }
            }
            Err(e) => {
                failures += 1;
                println!("FAILED {e}");
            }
        }
    }
    if !pending.is_empty() {
        wait_for_check_backs(producer, &pending, Duration::from_secs(a.check_timeout_secs)).await?;
    }
    if failures > 0 {
        bail!("{failures} transaction(s) failed");
    }
    if mode == TxnMode::Unknown {
        println!("all {} transaction(s) committed through the broker's check-back", pending.len());
    }
    Ok(())
}

/// Waits until every transaction in `pending` was checked back and the answer handed to the connection,
/// printing each answer and a progress line every 5 s.
async fn wait_for_check_backs(
    producer: &TransactionProducer<CliTransactions>,
    pending: &BTreeSet<String>,
    timeout: Duration,
) -> Result<()> {
    const PROGRESS_EVERY: Duration = Duration::from_secs(5);
    println!(
        "waiting up to {} s for the broker to check back on {} transaction(s) (its transactionTimeOut after the half message)",
        timeout.as_secs(),
        pending.len()
    );
    let start = Instant::now();
    let mut last_progress = start;
    let mut reported = BTreeSet::new();
    loop {
        let l = producer.listener();
        let checked: BTreeMap<String, TxnState> = l.checked.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // An answer counts once the worker handed every check_local result so far to the connection.
        let all_sent = producer.check_counts().answered >= l.checks.load(Ordering::SeqCst);
        if all_sent {
            for (id, answer) in checked.iter().filter(|(id, _)| pending.contains(*id)) {
                if reported.insert(id.clone()) {
                    println!("check-back for transactionId={id} answered {answer} after {:.1} s", start.elapsed().as_secs_f64());
                }
            }
            if reported.len() == pending.len() {
                return Ok(());
            }
        }
        if start.elapsed() >= timeout {
            let missing: Vec<&String> = pending.iter().filter(|id| !reported.contains(*id)).collect();
            bail!("no check-back within {} s for {} transaction(s): {missing:?}", timeout.as_secs(), missing.len());
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            println!(
                "waiting for check-backs: {}/{} answered ({} s of {} s)",
                reported.len(),
                pending.len(),
                start.elapsed().as_secs(),
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pulls from every queue of the topic from the group's committed offsets (0 for a new group) until `count`
/// messages arrived, printing them, then commits the offsets reached.
pub async fn consume(a: ConsumeArgs) -> Result<()> {
    let consumer = PullConsumer::start(config(&a.namesrv), a.group.clone()).await?;
    let result = pull_until(&consumer, &a).await;
    consumer.shutdown().await;
    result
}

async fn pull_until(consumer: &PullConsumer, a: &ConsumeArgs) -> Result<()> {
    let queues = consumer.fetch_subscribe_queues(&a.topic).await.with_context(|| format!("queues of {}", a.topic))?;
    let mut next: BTreeMap<MessageQueue, i64> = BTreeMap::new();
    for q in &queues {
        next.insert(q.clone(), consumer.fetch_consume_offset(q).await?.unwrap_or(0));
    }
    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
    let mut got = 0u64;
    while got < a.count && Instant::now() < deadline {
        let mut progressed = false;
        for q in &queues {
            let selector = match &a.sql {
                Some(sql) => MessageSelector::sql(sql.clone()),
                None => MessageSelector::tag(a.expression.clone()),
            };
            let r = consumer.pull(q, selector, next[q], 32).await.with_context(|| format!("pull {q:?}"))?;
            if r.status == PullStatus::Found {
                for m in &r.messages {
                    println!(
                        "{} queue={} offset={} tags={} keys={} body={}",
                        q.broker_name,
                        q.queue_id,
                        m.queue_offset,
                        m.tags().unwrap_or(""),
                        m.keys().join(" "),
                        String::from_utf8_lossy(&m.body)
                    );
                    got += 1;
                    progressed = true;
                    if got >= a.count {
                        next.insert(q.clone(), m.queue_offset + 1);
                        break;
                    }
                }
            }
            if got >= a.count {
                break;
            }
            next.insert(q.clone(), r.next_begin_offset);
        }
        if !progressed {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (q, offset) in &next {
        consumer.update_consume_offset(q, *offset).await.context("commit offset")?;
    }
    println!("consumed {got} message(s)");
    if got < a.count {
        bail!("only {got} of {} messages within {} s", a.count, a.timeout_secs);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_and_times_parse_with_their_units() {
        assert_eq!(parse_delay("1500ms").unwrap(), std::time::Duration::from_millis(1500));
        assert_eq!(parse_delay("40d").unwrap(), std::time::Duration::from_secs(40 * 86_400));
        assert!(parse_delay("30").unwrap_err().contains("unit"));
        assert!(parse_delay("3w").unwrap_err().contains("unknown unit"));
        let t = parse_rfc3339("2026-12-24T18:00:00+01:00").unwrap();
        assert_eq!(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(), 1_798_131_600_000);
        assert!(parse_rfc3339("tomorrow").unwrap_err().contains("RFC 3339"));
        assert_eq!(parse_property("n=5=6").unwrap(), ("n".to_string(), "5=6".to_string()));
        assert_eq!(parse_property("n=").unwrap(), ("n".to_string(), String::new()));
        assert!(parse_property("=5").is_err() && parse_property("n").is_err());
    }

    #[derive(clap::Parser)]
    struct Produce {
        #[command(flatten)]
        a: ProduceArgs,
    }

    #[test]
    fn transactions_take_an_outcome_and_exclude_batches_orders_and_schedules() {
        use clap::Parser;
        let p = Produce::try_parse_from(["produce", "--topic", "T", "--transaction", "unknown"]).expect("parses");
        assert_eq!((p.a.transaction, p.a.check_timeout_secs), (Some(TxnMode::Unknown), 90));
        let p = Produce::try_parse_from(["produce", "--topic", "T", "--transaction", "rollback", "--check-timeout-secs", "5"]).unwrap();
        assert_eq!((p.a.transaction, p.a.check_timeout_secs), (Some(TxnMode::Rollback), 5));
        assert!(Produce::try_parse_from(["produce", "--topic", "T", "--transaction", "maybe"]).is_err());
        for extra in [["--batch", "2"], ["--order-key", "k"], ["--delay-level", "3"], ["--delay", "5s"]] {
            let args = ["produce", "--topic", "T", "--transaction", "commit", extra[0], extra[1]];
            assert!(Produce::try_parse_from(args).is_err(), "{extra:?} with --transaction");
        }
    }

    fn checked(id: &str) -> MessageExt {
        let host: std::net::SocketAddr = "127.0.0.1:10911".parse().unwrap();
        MessageExt {
            topic: "T".into(),
            broker_name: "broker-a".into(),
            queue_id: 0,
            queue_offset: 0,
            commit_log_offset: 0,
            msg_id: id.into(),
            offset_msg_id: String::new(),
            flag: 0,
            sys_flag: 0,
            born_timestamp: 0,
            born_host: host,
            store_timestamp: 0,
            store_host: host,
            reconsume_times: 0,
            store_size: 0,
            properties: BTreeMap::new(),
            body: Default::default(),
        }
    }

    #[test]
    fn the_cli_commits_its_own_unknown_transactions_on_check_back_and_no_one_elses() {
        for (mode, local, on_check) in [
            (TxnMode::Unknown, TxnState::Unknown, TxnState::Commit),
            (TxnMode::Commit, TxnState::Commit, TxnState::Commit),
            (TxnMode::Rollback, TxnState::Rollback, TxnState::Rollback),
        ] {
            let l = CliTransactions { mode, sent: Mutex::default(), checked: Mutex::default(), checks: AtomicU64::new(0) };
            let mut m = Message::new("T", "x");
            m = m.with_property("UNIQ_KEY", "MINE");
            assert_eq!(l.execute_local(&m, &()), local);
            assert_eq!(l.check_local(&checked("MINE")), on_check, "{mode:?}");
            assert_eq!(l.check_local(&checked("AN-EARLIER-RUNS")), TxnState::Unknown, "{mode:?}");
            assert_eq!(l.checked.lock().unwrap().clone(), BTreeMap::from([("MINE".to_string(), on_check)]));
            assert_eq!(l.checks.load(Ordering::SeqCst), 2);
        }
    }
}
