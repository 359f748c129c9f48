//! Scheduled messages on the broker: staging delayed sends and send-back retries, and the leader's delivery
//! loop. The replicated half — level table, cursors, the exactly-once rule — is `raftmq_state::schedule`.
//!
//! A send with the `DELAY` property (level n ≥ 1, clamped to the table's last level as RocketMQ does) is
//! stored once, quorum-fsynced like every message, in [`SCHEDULE_TOPIC`] queue n − 1, with `REAL_TOPIC` and
//! `REAL_QID` added and its due time (store clock + the level's delay) as the unit's tag code. The leader's
//! [`delivery_loop`] watches the head of every level queue; when heads are due by the store clock it reads
//! the staged messages and proposes one entry holding their copies for the real queues (RocketMQ's re-put:
//! `DELAY` removed, `REAL_TOPIC`/`REAL_QID` kept, msgId/`UNIQ_KEY`, keys, tags, body and the other
//! properties unchanged, a new store timestamp) together with a delivery record per copy. The replicated
//! state indexes a copy only if its staged message is the level's next undelivered one and due at the
//! entry's stamped time, so a new leader re-proposing what an old one already delivered adds nothing.
//!
//! Leader-only and restartable: the loop holds no state of its own beyond what it reads from the applied
//! state, so after a failover the new leader continues from the replicated cursors within one election.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raftmq_raft::node::Role;
use raftmq_raft::types::{
    format_delay_levels, parse_delay_levels, Command, CommandResponse, Delivery, Message, QueueAppend, DELIVERY_BYTES,
    PRODUCE_HEADER_BYTES, SCHEDULE_TOPIC,
};
use raftmq_remoting::message::{
    decode_properties, encode_stored_message, get_property, properties_to_string, property, sys_flag, tags_code, MessageToStore,
};
use raftmq_remoting::{decode_stored_message, ResponseCode};
use tracing::{debug, info, warn};

use crate::broker::BrokerInner;
use crate::store::with_store_timestamp;
use crate::topics::PERM_READ_WRITE;

/// Longest the delivery loop sleeps between looks at the level heads: bounds the lateness of a message
/// staged while it slept (a shorter delay level than any pending one).
const POLL_MS_MAX: u64 = 50;

/// How a message is staged: its level (1-based, clamped) and that level's delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Staging {
    pub level: u32,
    pub delay_ms: u64,
}

impl Staging {
    /// The schedule queue of this level.
    pub fn queue_id(&self) -> u32 {
        self.level - 1
    }
}

/// The `DELAY` property of a properties block: `Ok(None)` when absent, zero or negative (no delay, as in
/// RocketMQ); a level that is not a number is an error naming it.
pub(crate) fn delay_level_of(properties: &str) -> Result<Option<i32>, String> {
    match get_property(properties, property::DELAY_TIME_LEVEL) {
        None => Ok(None),
        Some(v) => match v.trim().parse::<i32>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            Ok(_) => Ok(None),
            Err(_) => Err(format!("the DELAY property {v:?} is not a delay level (an integer)")),
        },
    }
}

/// The properties of the staged copy: the original ones with `REAL_TOPIC`, `REAL_QID` and the clamped
/// `DELAY` level set.
pub(crate) fn staged_properties(properties: &str, real_topic: &str, real_queue: u32, level: u32) -> Result<String, String> {
    let mut props = decode_properties(properties);
    props.insert(property::REAL_TOPIC.to_string(), real_topic.to_string());
    props.insert(property::REAL_QUEUE_ID.to_string(), real_queue.to_string());
    props.insert(property::DELAY_TIME_LEVEL.to_string(), level.to_string());
    properties_to_string(&props).map_err(|e| e.to_string())
}

impl BrokerInner {
    /// The staging of a message at delay `level` under the replicated level table.
    pub(crate) fn staging(&self, level: i32) -> Option<Staging> {
        let (level, delay_ms) = self.node.state().with_metadata(|m| m.state.schedule.delay_of(level))?;
        Some(Staging { level, delay_ms })
    }

    /// Makes the schedule topic exist with a queue per level (leader only).
    pub(crate) async fn ensure_schedule_topic(&self) -> Result<(), (ResponseCode, String)> {
        let levels = self.node.state().with_metadata(|m| m.state.schedule.level_count());
        match self.store.topic(SCHEDULE_TOPIC) {
            Some(t) if t.write_queues >= levels => Ok(()),
            _ => {
                let t = raftmq_raft::types::TopicConfig {
                    name: SCHEDULE_TOPIC.into(),
                    read_queues: levels,
                    write_queues: levels,
                    perm: PERM_READ_WRITE,
                };
                self.store.upsert_topic(t).await.map_err(|e| {
                    (ResponseCode::SERVICE_NOT_AVAILABLE, format!("could not create the schedule topic {SCHEDULE_TOPIC}: {e}; retry"))
                })
            }
        }
    }

    /// The schedule as the admin tools show it: the level table in force and, per level with messages
    /// staged, how many are pending and when the next is due (store-clock ms).
    pub(crate) fn schedule_status(&self) -> serde_json::Value {
        let (levels, cursors, queues) = self.node.state().with_metadata(|m| {
            (
                m.state.schedule.delay_levels(),
                m.state.schedule.cursors.clone(),
                m.state.queues.get(SCHEDULE_TOPIC).cloned().unwrap_or_default(),
            )
        });
        let mut pending = Vec::new();
        for (q, st) in &queues {
            let cursor = cursors.get(q).copied().unwrap_or(0);
            if st.next_offset <= cursor {
                continue;
            }
            let next_due = self.store.queue(SCHEDULE_TOPIC, *q).and_then(|cq| cq.get(cursor.max(cq.min_offset()))).map(|u| u.tags_code);
            pending.push(serde_json::json!({
                "level": q + 1,
                "delayMs": levels.get(*q as usize).copied(),
                "pending": st.next_offset - cursor,
                "nextDueMs": next_due,
            }));
        }
        serde_json::json!({ "delayLevels": format_delay_levels(&levels), "pending": pending })
    }

    /// Proposes this node's `messageDelayLevel` when the group has no table yet and it differs from the
    /// default; logs a differing configured table otherwise (the replicated one is in force).
    async fn seed_delay_levels(&self) {
        let Ok(configured) = parse_delay_levels(&self.cfg.message_delay_level) else { return };
        let replicated = self.node.state().with_metadata(|m| m.state.schedule.levels.clone());
        if replicated.is_empty() {
            let default = self.node.state().with_metadata(|m| m.state.schedule.delay_levels());
            if configured != default {
                match self.node.write(Command::SetDelayLevels(configured.clone())).await {
                    Ok(CommandResponse::Refused(why)) => warn!(why, "the group refused messageDelayLevel"),
                    Ok(_) => info!(levels = %format_delay_levels(&configured), "delay-level table set from messageDelayLevel"),
                    Err(e) => warn!(error = %e, "could not propose messageDelayLevel; retried at the next leadership"),
                }
            }
        } else if replicated != configured {
            warn!(
                replicated = %format_delay_levels(&replicated),
                configured = %self.cfg.message_delay_level,
                "messageDelayLevel differs from the group's replicated table, which stays in force (change it with `raftmq admin delay-levels set`)"
            );
        }
    }

    /// One pass over the level heads: delivers what is due, at most `scheduleDeliverBatchMax` messages and
    /// one entry's bytes. Returns how many were delivered and, when none was due, how long until the
    /// earliest head is.
    async fn deliver_due(&self) -> Result<(usize, Option<u64>), String> {
        let now = crate::store::wall_ms().max(self.store.replicated_now_ms());
        let (levels, cursors) = self.node.state().with_metadata(|m| (m.state.schedule.level_count(), m.state.schedule.cursors.clone()));
        let budget = self.cfg.entry_bytes_max.saturating_sub(PRODUCE_HEADER_BYTES);
        let mut bytes = 0usize;
        let mut items: Vec<(Delivery, QueueAppend)> = Vec::new();
        let mut next_due: Option<i64> = None;
        let mut topics_needed: BTreeMap<String, u32> = BTreeMap::new();
        'levels: for q in 0..levels {
            let Some(cq) = self.store.queue(SCHEDULE_TOPIC, q) else { continue };
            let mut offset = cursors.get(&q).copied().unwrap_or(0).max(cq.min_offset());
            while offset < cq.max_offset() {
                if items.len() >= self.cfg.schedule_deliver_batch_max {
                    break 'levels;
                }
                let Some(unit) = cq.get(offset) else { break };
                if unit.tags_code > now {
                    next_due = Some(next_due.map_or(unit.tags_code, |d| d.min(unit.tags_code)));
                    break;
                }
                let raw =
                    self.node.commitlog().read_at(unit.phys_offset, unit.size as usize).ok_or_else(|| {
                        format!("staged message {SCHEDULE_TOPIC}/{q}@{offset} (commitlog {}) unreadable", unit.phys_offset)
                    })?;
                let copy = self.delivery_copy(&raw).map_err(|e| format!("staged message {SCHEDULE_TOPIC}/{q}@{offset}: {e}"))?;
                let len = copy.encoded_len() + DELIVERY_BYTES;
                if bytes + len > budget {
                    break 'levels;
                }
                bytes += len;
                topics_needed.entry(copy.topic.clone()).and_modify(|n| *n = (*n).max(copy.queue_id + 1)).or_insert(copy.queue_id + 1);
                let d = Delivery { schedule_queue: q, staged_offset: offset, due_ms: unit.tags_code, part: items.len() as u32, index: 0 };
                items.push((d, copy));
                offset += 1;
            }
        }
        if items.is_empty() {
            return Ok((0, next_due.map(|d| (d - now).max(0) as u64)));
        }
        // A real topic deleted or never created (a retry topic is created at send-back) is created now, as
        // the auto-create rule would on a send; a queue id past a shrunk topic maps onto its queues.
        for (topic, queues) in &topics_needed {
            if self.store.topic(topic).is_none() {
                let want = (*queues).max(self.cfg.default_topic_queue_nums.max(1));
                self.ensure_topic(topic, want).await.map_err(|(_, why)| why)?;
            }
        }
        for (_, copy) in items.iter_mut() {
            if let Some(t) = self.store.topic(&copy.topic) {
                if copy.queue_id >= t.write_queues.max(1) {
                    copy.queue_id %= t.write_queues.max(1);
                }
            }
        }
        let n = items.len();
        let results = self
            .store
            .put_stamped(move |ts| {
                let mut parts = Vec::with_capacity(items.len());
                let mut deliveries = Vec::with_capacity(items.len());
                for (d, mut part) in items {
                    for m in &mut part.messages {
                        m.data = with_store_timestamp(std::mem::take(&mut m.data), ts);
                    }
                    parts.push(part);
                    deliveries.push(d);
                }
                (parts, deliveries)
            })
            .await
            .map_err(|e| e.to_string())?;
        let indexed: usize = results
            .iter()
            .map(|r| match r {
                raftmq_raft::types::QueueAppendResult::Stored(p) => p.len(),
                raftmq_raft::types::QueueAppendResult::Rejected(_) => 0,
            })
            .sum();
        debug!(proposed = n, indexed, "scheduled messages delivered");
        Ok((n, None))
    }

    /// The copy of a staged message for its real queue, in the stored layout (store timestamp set when
    /// it is stamped).
    fn delivery_copy(&self, raw: &[u8]) -> Result<QueueAppend, String> {
        let m = decode_stored_message(raw).map_err(|e| e.to_string())?;
        let mut props = decode_properties(m.properties);
        let real_topic = props.get(property::REAL_TOPIC).cloned().ok_or("no REAL_TOPIC property")?;
        let real_queue: u32 = props.get(property::REAL_QUEUE_ID).and_then(|q| q.parse().ok()).ok_or("no REAL_QID property")?;
        props.remove(property::DELAY_TIME_LEVEL);
        let properties = properties_to_string(&props).map_err(|e| e.to_string())?;
        let v4 = |a: SocketAddr| match a {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(a) => std::net::SocketAddrV4::new(a.ip().to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED), a.port()),
        };
        let copy = MessageToStore {
            topic: &real_topic,
            queue_id: real_queue as i32,
            flag: m.flag,
            queue_offset: 0,
            physical_offset: 0,
            sys_flag: m.sys_flag & !(sys_flag::BORNHOST_V6 | sys_flag::STOREHOST_V6),
            born_timestamp: m.born_timestamp,
            born_host: v4(m.born_host),
            store_timestamp: 0,
            store_host: v4(m.store_host),
            reconsume_times: m.reconsume_times,
            prepared_transaction_offset: 0,
            body: m.body,
            properties: &properties,
        };
        let mut out = Vec::with_capacity(raw.len());
        encode_stored_message(&copy, &mut out).map_err(|e| e.to_string())?;
        Ok(QueueAppend {
            topic: real_topic.clone(),
            queue_id: real_queue,
            messages: vec![Message {
                tags_code: tags_code(get_property(&properties, property::TAGS)),
                data: Bytes::from(out),
                phys_offset: None,
            }],
        })
    }
}

/// The leader's delivery loop: runs for the broker's lifetime, active while this node is the ready leader.
pub(crate) async fn delivery_loop(inner: Arc<BrokerInner>) {
    let mut role = inner.node.role();
    let mut seeded_term = 0;
    loop {
        let (leading, term) = {
            let r = role.borrow_and_update();
            (r.role == Role::Leader && r.ready, r.term)
        };
        if !leading {
            if role.changed().await.is_err() {
                return;
            }
            continue;
        }
        if seeded_term != term {
            seeded_term = term;
            inner.seed_delay_levels().await;
        }
        match inner.deliver_due().await {
            Ok((n, _)) if n > 0 => continue,
            Ok((_, wait)) => {
                let ms = wait.unwrap_or(POLL_MS_MAX).clamp(1, POLL_MS_MAX);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = role.changed() => {}
                }
            }
            Err(why) => {
                warn!(why, "scheduled delivery failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
