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
use raftmq_raft::types::{
    format_delay_levels, parse_delay_levels, timer_level_delay_ms, timer_level_for, Action, Command, CommandResponse, Delivery, Message,
    Produce, QueueAppend, Source, DELIVERY_BYTES, PRODUCE_HEADER_BYTES, SCHEDULE_TOPIC, TIMER_LEVELS, TIMER_TOPIC,
};
use raftmq_remoting::message::{
    decode_properties, encode_stored_message, get_property, iter_properties, properties_to_string, property, sys_flag, tags_code,
    MessageToStore,
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

/// The scheduling properties of one message, read in one pass over its properties block (a plain send
/// pays that one scan; the last occurrence of a key wins, as in `get_property`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ScheduleProps<'a> {
    delay: Option<&'a str>,
    timer_out: bool,
    delay_sec: Option<&'a str>,
    delay_ms: Option<&'a str>,
    deliver_ms: Option<&'a str>,
}

impl<'a> ScheduleProps<'a> {
    /// Reads `properties`.
    pub(crate) fn of(properties: &'a str) -> ScheduleProps<'a> {
        let mut p = ScheduleProps::default();
        for (k, v) in iter_properties(properties) {
            match k {
                property::DELAY_TIME_LEVEL => p.delay = Some(v),
                property::TIMER_OUT_MS => p.timer_out = true,
                property::TIMER_DELAY_SEC => p.delay_sec = Some(v),
                property::TIMER_DELAY_MS => p.delay_ms = Some(v),
                property::TIMER_DELIVER_MS => p.deliver_ms = Some(v),
                _ => {}
            }
        }
        p
    }

    /// The `DELAY` level: `Ok(None)` when absent, zero or negative (no delay, as in RocketMQ).
    ///
    /// # Errors
    /// A level that is not a number, named in the remark.
    pub(crate) fn delay_level(&self) -> Result<Option<i32>, String> {
        match self.delay {
            None => Ok(None),
            Some(v) => match v.trim().parse::<i32>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                Ok(_) => Ok(None),
                Err(_) => Err(format!("the DELAY property {v:?} is not a delay level (an integer)")),
            },
        }
    }

    /// Whether a timer is asked for (a timer property on a message not already timed).
    pub(crate) fn has_timer(&self) -> bool {
        !self.timer_out && (self.delay_sec.is_some() || self.delay_ms.is_some() || self.deliver_ms.is_some())
    }

    /// The timer asked for, checked as RocketMQ 5 does (`TIMER_DELAY_SEC` first, then `TIMER_DELAY_MS`,
    /// then `TIMER_DELIVER_MS`; a message carrying `TIMER_OUT_MS` was already timed and is not timed
    /// again). `now_ms` gives the broker's receipt time; it is called only when a timer is asked for.
    ///
    /// # Errors
    /// The remark for 13 MESSAGE_ILLEGAL naming the property and why: not a number, a negative delay, a
    /// delay above `max_delay_ms`, or a delivery time more than `past_tolerance_ms` in the past.
    pub(crate) fn timer_due(
        &self,
        now_ms: impl FnOnce() -> i64,
        max_delay_ms: i64,
        past_tolerance_ms: i64,
    ) -> Result<Option<TimerDue>, String> {
        if !self.has_timer() {
            return Ok(None);
        }
        let parse = |name: &str, v: Option<&str>| -> Result<Option<i64>, String> {
            match v {
                None => Ok(None),
                Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| format!("the {name} property {v:?} is not a number")),
            }
        };
        let now_ms = now_ms();
        let (name, due) = if let Some(sec) = parse(property::TIMER_DELAY_SEC, self.delay_sec)? {
            if sec < 0 {
                return Err(format!("the {} property {sec} is a negative delay", property::TIMER_DELAY_SEC));
            }
            (property::TIMER_DELAY_SEC, now_ms.saturating_add(sec.saturating_mul(1000)))
        } else if let Some(ms) = parse(property::TIMER_DELAY_MS, self.delay_ms)? {
            if ms < 0 {
                return Err(format!("the {} property {ms} is a negative delay", property::TIMER_DELAY_MS));
            }
            (property::TIMER_DELAY_MS, now_ms.saturating_add(ms))
        } else if let Some(at) = parse(property::TIMER_DELIVER_MS, self.deliver_ms)? {
            (property::TIMER_DELIVER_MS, at)
        } else {
            return Ok(None);
        };
        if due.saturating_sub(now_ms) > max_delay_ms {
            return Err(format!(
                "timer message illegal: {name} asks for a delivery {} ms from now, above the max delay of {max_delay_ms} ms (timerMaxDelaySec)",
                due.saturating_sub(now_ms)
            ));
        }
        if due < now_ms.saturating_sub(past_tolerance_ms) {
            return Err(format!(
                "timer message illegal: {name} asks for a delivery {} ms in the past, more than the {past_tolerance_ms} ms tolerated (timerPastToleranceMs)",
                now_ms - due
            ));
        }
        Ok(Some(if due <= now_ms { TimerDue::Now } else { TimerDue::At(due) }))
    }
}

/// The properties of a staged copy: the original ones with `REAL_TOPIC`, `REAL_QID` and `mark` set — the
/// clamped `DELAY` level for a delay level, `TIMER_OUT_MS` (the due time) for a timer.
pub(crate) fn staged_properties(properties: &str, real_topic: &str, real_queue: u32, mark: (&str, String)) -> Result<String, String> {
    let mut props = decode_properties(properties);
    props.insert(property::REAL_TOPIC.to_string(), real_topic.to_string());
    props.insert(property::REAL_QUEUE_ID.to_string(), real_queue.to_string());
    props.insert(mark.0.to_string(), mark.1);
    properties_to_string(&props).map_err(|e| e.to_string())
}

/// When a message with 5.x timer properties is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerDue {
    /// Due now or in the tolerated past: stored in its topic at once.
    Now,
    /// Due at this store-clock time (ms): staged in the timer queues.
    At(i64),
}

/// One message a delivery pass takes out of its staging queue.
enum Taken {
    /// Due: its copy for the real queue.
    Copy(Delivery, QueueAppend),
    /// A timer not due yet: moves to the timer queue for the time left at the entry's stamp.
    Move { source_queue: u32, offset: u64, eligible: i64, due: i64, phys_offset: u64, size: u32 },
}

impl BrokerInner {
    /// Makes the timer topic exist with its delay lines (leader only).
    pub(crate) async fn ensure_timer_topic(&self) -> Result<(), (ResponseCode, String)> {
        self.ensure_staging_topic(TIMER_TOPIC, TIMER_LEVELS).await
    }

    /// Makes a staging topic exist with at least `queues` queues (leader only): a system topic, so not
    /// subject to `topicsMax` or auto-create, and grown when the level table grows.
    pub(crate) async fn ensure_staging_topic(&self, name: &str, queues: u32) -> Result<(), (ResponseCode, String)> {
        if self.store.topic(name).is_some_and(|t| t.write_queues >= queues) {
            return Ok(());
        }
        let t = raftmq_raft::types::TopicConfig { name: name.into(), read_queues: queues, write_queues: queues, perm: PERM_READ_WRITE };
        self.store
            .upsert_topic(t)
            .await
            .map_err(|e| (ResponseCode::SERVICE_NOT_AVAILABLE, format!("could not create the staging topic {name}: {e}; retry")))
    }

    /// Timer messages pending (staged, not delivered).
    pub(crate) fn timers_pending(&self) -> u64 {
        self.node.state().with_metadata(|m| m.state.timers_pending())
    }

    /// The staging of a message at delay `level` under the replicated level table.
    pub(crate) fn staging(&self, level: i32) -> Option<Staging> {
        let (level, delay_ms) = self.node.state().with_metadata(|m| m.state.schedule.delay_of(level))?;
        Some(Staging { level, delay_ms })
    }

    /// Makes the schedule topic exist with a queue per level (leader only).
    pub(crate) async fn ensure_schedule_topic(&self) -> Result<(), (ResponseCode, String)> {
        let levels = self.node.state().with_metadata(|m| m.state.schedule.level_count());
        self.ensure_staging_topic(SCHEDULE_TOPIC, levels).await
    }

    /// The schedule as the admin tools show it: the level table in force and, per level with messages
    /// staged, how many are pending and when the next is due (store-clock ms).
    pub(crate) fn schedule_status(&self) -> serde_json::Value {
        let (levels, ranges) = self.node.state().with_metadata(|m| (m.state.schedule.delay_levels(), m.state.undelivered()));
        let (mut pending, mut timers, mut timers_pending) = (Vec::new(), Vec::new(), 0);
        for r in ranges {
            // A level's head tag code is its next due time; a timer line's, its next eligible time.
            let head = self.store.queue(r.topic, r.queue).and_then(|cq| cq.get(r.from.max(cq.min_offset()))).map(|u| u.tags_code);
            if r.topic == TIMER_TOPIC {
                timers_pending += r.to - r.from;
                timers.push(serde_json::json!({
                    "line": r.queue, "delayMs": timer_level_delay_ms(r.queue), "pending": r.to - r.from, "nextEligibleMs": head,
                }));
            } else {
                pending.push(serde_json::json!({
                    "level": r.queue + 1, "delayMs": levels.get(r.queue as usize).copied(), "pending": r.to - r.from, "nextDueMs": head,
                }));
            }
        }
        serde_json::json!({
            "delayLevels": format_delay_levels(&levels),
            "pending": pending,
            "timersPending": timers_pending,
            "timerLines": timers,
        })
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

    /// One pass over the heads of the level and timer queues: takes what is due (copies) or eligible
    /// (timer moves), at most `scheduleDeliverBatchMax` messages and one entry's bytes. Returns how many
    /// were taken and, when none was, how long until the earliest head is due or eligible.
    async fn deliver_due(&self) -> Result<(usize, Option<u64>), String> {
        // Chaos-checker builds only: a deliberately broken schedule that delivers early.
        let early = if cfg!(feature = "unsafe-ack-before-quorum") { self.cfg.unsafe_schedule_early_ms as i64 } else { 0 };
        let now = crate::store::wall_ms().max(self.store.replicated_now_ms()) + early;
        let (levels, cursors, timer_cursors) = self
            .node
            .state()
            .with_metadata(|m| (m.state.schedule.level_count(), m.state.schedule.cursors.clone(), m.state.schedule.timer_cursors.clone()));
        let budget = self.cfg.entry_bytes_max.saturating_sub(PRODUCE_HEADER_BYTES);
        let mut bytes = 0usize;
        let mut taken: Vec<Taken> = Vec::new();
        let mut next_due: Option<i64> = None;
        let mut topics_needed: BTreeMap<String, u32> = BTreeMap::new();
        let queues = (0..levels).map(|q| (Source::Level, q)).chain((0..TIMER_LEVELS).map(|q| (Source::Timer, q)));
        'queues: for (source, q) in queues {
            let (topic, cursor) = match source {
                Source::Level => (SCHEDULE_TOPIC, cursors.get(&q).copied().unwrap_or(0)),
                Source::Timer => (TIMER_TOPIC, timer_cursors.get(&q).copied().unwrap_or(0)),
            };
            let Some(cq) = self.store.queue(topic, q) else { continue };
            let mut offset = cursor.max(cq.min_offset());
            while offset < cq.max_offset() {
                if taken.len() >= self.cfg.schedule_deliver_batch_max {
                    break 'queues;
                }
                let Some(unit) = cq.get(offset) else { break };
                // Levels: the tag code is the due time; timers: when the unit is eligible for its next hop.
                if unit.tags_code > now {
                    next_due = Some(next_due.map_or(unit.tags_code, |d| d.min(unit.tags_code)));
                    break;
                }
                let raw = self
                    .node
                    .commitlog()
                    .read_at(unit.phys_offset, unit.size as usize)
                    .ok_or_else(|| format!("staged message {topic}/{q}@{offset} (commitlog {}) unreadable", unit.phys_offset))?;
                let timer_due = match source {
                    Source::Level => None,
                    Source::Timer => Some(timer_out_of(&raw).map_err(|e| format!("staged timer {topic}/{q}@{offset}: {e}"))?),
                };
                let item = match timer_due {
                    Some(due) if due > now => Taken::Move {
                        source_queue: q,
                        offset,
                        eligible: unit.tags_code,
                        due,
                        phys_offset: unit.phys_offset,
                        size: unit.size,
                    },
                    _ => {
                        let copy = self.delivery_copy(&raw, source).map_err(|e| format!("staged message {topic}/{q}@{offset}: {e}"))?;
                        topics_needed
                            .entry(copy.topic.clone())
                            .and_modify(|n| *n = (*n).max(copy.queue_id + 1))
                            .or_insert(copy.queue_id + 1);
                        let d = Delivery {
                            source,
                            schedule_queue: q,
                            staged_offset: offset,
                            due_ms: timer_due.unwrap_or(unit.tags_code),
                            action: Action::Copy { part: 0, index: 0 },
                        };
                        Taken::Copy(d, copy)
                    }
                };
                let len = DELIVERY_BYTES
                    + match &item {
                        Taken::Copy(_, copy) => copy.encoded_len(),
                        Taken::Move { .. } => 0,
                    };
                if bytes + len > budget {
                    break 'queues;
                }
                bytes += len;
                taken.push(item);
                offset += 1;
            }
        }
        if taken.is_empty() {
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
        for item in taken.iter_mut() {
            if let Taken::Copy(_, copy) = item {
                if let Some(t) = self.store.topic(&copy.topic) {
                    copy.queue_id %= t.write_queues.max(1);
                }
            }
        }
        let n = taken.len();
        let results = self
            .store
            .put_stamped(move |ts| {
                let mut parts = Vec::with_capacity(taken.len());
                let mut deliveries = Vec::with_capacity(taken.len());
                for item in taken {
                    match item {
                        Taken::Copy(mut d, mut part) => {
                            for m in &mut part.messages {
                                m.data = with_store_timestamp(std::mem::take(&mut m.data), ts);
                            }
                            if early > 0 {
                                // The broken schedule lies to the state's never-early check.
                                d.due_ms = d.due_ms.min(ts);
                            }
                            d.action = Action::Copy { part: parts.len() as u32, index: 0 };
                            parts.push(part);
                            deliveries.push(d);
                        }
                        Taken::Move { source_queue, offset, eligible, due, phys_offset, size } => {
                            let eligible = if early > 0 { eligible.min(ts) } else { eligible };
                            let due = due - early;
                            // The time left at this entry's stamp picks the line; eligibility follows from
                            // the stamp, so every line stays in eligibility order.
                            let to_queue = timer_level_for(due - ts);
                            let eligible_ms = ts.saturating_add(timer_level_delay_ms(to_queue));
                            deliveries.push(Delivery {
                                source: Source::Timer,
                                schedule_queue: source_queue,
                                staged_offset: offset,
                                due_ms: eligible,
                                action: Action::Move { to_queue, eligible_ms, phys_offset, size },
                            });
                        }
                    }
                }
                Produce { queues: parts, deliveries, ..Produce::default() }
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
        debug!(taken = n, indexed, "scheduled messages delivered or moved");
        // Every proposed delivery normally advances a cursor. If none did, the state refused them all (for
        // example a real topic with no write queue): report it instead of proposing the same entry again at
        // once, which would fill the log.
        let advanced =
            self.node.state().with_metadata(|m| m.state.schedule.cursors != cursors || m.state.schedule.timer_cursors != timer_cursors);
        if !advanced {
            return Err(format!("the group refused all {n} deliveries proposed (no cursor moved); retrying after a pause"));
        }
        Ok((n, None))
    }

    /// The copy of a staged message for its real queue, in the stored layout (store timestamp set when
    /// it is stamped). A level's copy keeps `REAL_TOPIC`/`REAL_QID` (RocketMQ 4.x); a timer's drops them
    /// and keeps `TIMER_OUT_MS` (RocketMQ 5).
    fn delivery_copy(&self, raw: &[u8], source: Source) -> Result<QueueAppend, String> {
        let m = decode_stored_message(raw).map_err(|e| e.to_string())?;
        let mut props = decode_properties(m.properties);
        let real_topic = props.get(property::REAL_TOPIC).cloned().ok_or("no REAL_TOPIC property")?;
        let real_queue: u32 = props.get(property::REAL_QUEUE_ID).and_then(|q| q.parse().ok()).ok_or("no REAL_QID property")?;
        props.remove(property::DELAY_TIME_LEVEL);
        if source == Source::Timer {
            props.remove(property::REAL_TOPIC);
            props.remove(property::REAL_QUEUE_ID);
        }
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

/// The due time (`TIMER_OUT_MS`) of a staged timer message.
fn timer_out_of(raw: &[u8]) -> Result<i64, String> {
    let m = decode_stored_message(raw).map_err(|e| e.to_string())?;
    let v = get_property(m.properties, property::TIMER_OUT_MS).ok_or("no TIMER_OUT_MS property")?;
    v.parse().map_err(|_| format!("TIMER_OUT_MS {v:?} is not a number"))
}

/// The leader's delivery loop: runs for the broker's lifetime, active while this node is the ready leader.
pub(crate) async fn delivery_loop(inner: Arc<BrokerInner>) {
    let mut leader = crate::broker::LeaderWatch::new(&inner);
    while let Some(new_term) = leader.leading().await {
        if new_term {
            inner.seed_delay_levels().await;
        }
        match inner.deliver_due().await {
            Ok((n, _)) if n > 0 => continue,
            Ok((_, wait)) => leader.pause(Duration::from_millis(wait.unwrap_or(POLL_MS_MAX).clamp(1, POLL_MS_MAX))).await,
            Err(why) => {
                warn!(why, "scheduled delivery failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
