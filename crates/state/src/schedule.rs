//! Delay levels and the delivery of staged messages: the replicated half of scheduled messages.
//!
//! A message sent with a delay level is stored once, at send, in the schedule topic
//! [`SCHEDULE_TOPIC`] queue `level − 1`, with its due time (the store clock at send plus the level's
//! delay) as the consume-queue unit's tag code. Within one queue every message has the same delay, so the
//! queue is in due order and one cursor per queue — the next undelivered offset — is the whole schedule
//! (RocketMQ's `delayOffset.json`, here replicated instead of copied every 10 s).
//!
//! The leader delivers: once a queue's head is due by its store clock it proposes a produce entry holding
//! a copy of the staged message for the real queue and a [`Delivery`] naming the staged offset. Applying it
//! indexes the copy only if the staged offset is the queue's cursor and the entry's stamped time has
//! reached the due time, then advances the cursor. A delivery re-proposed by a new leader, or one a deposed
//! leader got committed late, finds the cursor past it and indexes nothing: every staged message reaches
//! its real queue exactly once, never before its due time as stamped.
//!
//! The level table changes the meaning of stored messages, so it is replicated state
//! ([`crate::Command::SetDelayLevels`]), not local configuration.
//!
//! # Timers (arbitrary delivery times, up to 40 days)
//!
//! A message with a 5.x timer property is staged in [`TIMER_TOPIC`], whose queue k is a delay line of
//! `TIMER_TICK_MS << k` ms (16 ms … 49.7 days, [`TIMER_LEVELS`] queues). A unit's tag code is when it
//! becomes *eligible*: the stamp of the entry that wrote it plus its queue's delay. Stamps never decrease
//! along the log and the delay is fixed per queue, so every timer queue is in eligibility order and, as
//! for levels, one cursor per queue is the whole state. When a head is eligible the leader looks at the
//! message's due time T (its `TIMER_OUT_MS` property) and the remaining R = T − now: R ≤ 0 → a copy for
//! the real queue ([`Action::Copy`]); otherwise a *move* ([`Action::Move`]) to the longest queue whose
//! delay is ≤ R (the shortest when R < one tick): a new unit pointing at the same bytes — no body is
//! copied. R at least halves per hop, so a 40-day timer takes at most 29 hops; as R is recomputed from T
//! at each hop, hop latencies do not add up, and the delivery is late by one hop's latency at most (plus
//! under a tick when R ended below one). Pending timers live on disk in the queues' files: memory does not
//! grow with their number, and a restart reads none of them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{Action, Delivery, Source};
use crate::queues::QueueState;
use crate::unit::CqUnit;

/// The topic delayed messages are staged in (RocketMQ's `SCHEDULE_TOPIC_XXXX`); queue = level − 1.
pub const SCHEDULE_TOPIC: &str = "SCHEDULE_TOPIC_XXXX";

/// RocketMQ's default `messageDelayLevel`.
pub const DEFAULT_DELAY_LEVELS: &str = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h";

/// [`DEFAULT_DELAY_LEVELS`] in ms (a test keeps the two equal).
pub const DEFAULT_DELAY_LEVELS_MS: [u64; 18] = [
    1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000, 480_000, 540_000, 600_000, 1_200_000,
    1_800_000, 3_600_000, 7_200_000,
];

/// Most levels a table may have (RocketMQ has 18 by default; the schedule topic has one queue per level).
pub const DELAY_LEVELS_MAX: usize = 64;

/// Longest delay one level may have: 40 days, the longest delay raftmq takes.
pub const LEVEL_DELAY_MS_MAX: u64 = 40 * 24 * 3600 * 1000;

/// The topic timer messages are staged in (RocketMQ 5's `rmq_sys_wheel_timer`); queue k delays by
/// [`timer_level_delay_ms`]`(k)`.
pub const TIMER_TOPIC: &str = "rmq_sys_wheel_timer";

/// The shortest timer delay line, ms.
pub const TIMER_TICK_MS: i64 = 16;

/// Timer queues: delays 16 ms · 2^k for k < 29, the longest 2^28 · 16 ms ≈ 49.7 days.
pub const TIMER_LEVELS: u32 = 29;

/// The delay of timer queue `k` (ms).
pub fn timer_level_delay_ms(k: u32) -> i64 {
    TIMER_TICK_MS << k.min(TIMER_LEVELS - 1)
}

/// The timer queue for a remaining delay: the longest whose delay is ≤ `remaining_ms`, queue 0 below one
/// tick.
pub fn timer_level_for(remaining_ms: i64) -> u32 {
    if remaining_ms < TIMER_TICK_MS {
        return 0;
    }
    let ticks = (remaining_ms / TIMER_TICK_MS) as u64;
    (63 - ticks.leading_zeros()).min(TIMER_LEVELS - 1)
}

/// Parses a RocketMQ `messageDelayLevel` string (`"1s 5s 1m 2h 1d"`: space-separated numbers with a unit
/// `ms`, `s`, `m`, `h` or `d`) into milliseconds per level.
///
/// # Errors
/// A remark naming the bad element, an empty table or one longer than [`DELAY_LEVELS_MAX`].
pub fn parse_delay_levels(s: &str) -> Result<Vec<u64>, String> {
    let out = s
        .split_whitespace()
        .map(|item| parse_duration_ms(item).map_err(|e| format!("delay level {e}")))
        .collect::<Result<Vec<u64>, String>>()?;
    validate_delay_levels(&out)?;
    Ok(out)
}

/// Parses one duration in `messageDelayLevel` syntax (`250ms`, `5s`, `2m`, `1h`, `40d`) into ms.
///
/// # Errors
/// A remark quoting the item: no unit, an unknown unit, no leading number, or an overflow.
pub fn parse_duration_ms(item: &str) -> Result<u64, String> {
    let split = item.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| format!("{item:?} has no unit (ms, s, m, h or d)"))?;
    let (num, unit) = item.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{item:?} does not start with a number"))?;
    let mul = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{item:?} has unknown unit {unit:?} (ms, s, m, h or d)")),
    };
    n.checked_mul(mul).ok_or_else(|| format!("{item:?} overflows"))
}

/// Checks a level table: 1 to [`DELAY_LEVELS_MAX`] levels, each at most [`LEVEL_DELAY_MS_MAX`].
///
/// # Errors
/// A remark saying what is wrong.
pub fn validate_delay_levels(levels: &[u64]) -> Result<(), String> {
    if levels.is_empty() {
        return Err("the delay-level table is empty".into());
    }
    if levels.len() > DELAY_LEVELS_MAX {
        return Err(format!("{} delay levels, above the limit of {DELAY_LEVELS_MAX}", levels.len()));
    }
    if let Some((i, d)) = levels.iter().enumerate().find(|(_, d)| **d > LEVEL_DELAY_MS_MAX) {
        return Err(format!("delay level {} is {d} ms, above the 40-day maximum of {LEVEL_DELAY_MS_MAX} ms", i + 1));
    }
    Ok(())
}

/// Formats a table back in `messageDelayLevel` syntax, with the largest unit that divides each delay.
pub fn format_delay_levels(levels: &[u64]) -> String {
    levels
        .iter()
        .map(|&ms| match ms {
            0 => "0s".to_string(),
            ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
            ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
            ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
            ms => format!("{ms}ms"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The replicated schedule: the level table and, per schedule queue, the next undelivered offset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Delay of each level in ms (level n is element n − 1); empty until set, meaning RocketMQ's default.
    pub levels: Vec<u64>,
    /// Next undelivered offset per schedule queue; absent = 0.
    pub cursors: BTreeMap<u32, u64>,
    /// Next untaken offset per timer queue; absent = 0.
    pub timer_cursors: BTreeMap<u32, u64>,
}

/// A timer unit an entry moves (see [`Action::Move`]): written at the end of `queue` of [`TIMER_TOPIC`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MoveTo {
    pub queue: u32,
    pub unit: CqUnit,
}

impl Schedule {
    /// The level table in force.
    pub fn delay_levels(&self) -> Vec<u64> {
        self.levels_in_force().to_vec()
    }

    /// The level table in force, borrowed.
    fn levels_in_force(&self) -> &[u64] {
        if self.levels.is_empty() {
            &DEFAULT_DELAY_LEVELS_MS
        } else {
            &self.levels
        }
    }

    /// Number of levels in force.
    pub fn level_count(&self) -> u32 {
        self.levels_in_force().len() as u32
    }

    /// The delay of `level` in ms, clamped to the last level as RocketMQ does; `None` for level ≤ 0.
    pub fn delay_of(&self, level: i32) -> Option<(u32, u64)> {
        if level <= 0 {
            return None;
        }
        let levels = self.levels_in_force();
        let level = (level as u32).min(levels.len() as u32);
        let delay = *levels.get((level as usize).checked_sub(1)?)?;
        Some((level, delay))
    }

    /// The next undelivered offset of schedule queue `q`.
    pub fn cursor(&self, q: u32) -> u64 {
        self.cursors.get(&q).copied().unwrap_or(0)
    }

    /// The next untaken offset of timer queue `q`.
    pub fn timer_cursor(&self, q: u32) -> u64 {
        self.timer_cursors.get(&q).copied().unwrap_or(0)
    }

    /// Applies a table change.
    ///
    /// # Errors
    /// The remark of [`validate_delay_levels`]; the table is left unchanged.
    pub(crate) fn set_levels(&mut self, levels: &[u64]) -> Result<(), String> {
        validate_delay_levels(levels)?;
        self.levels = levels.to_vec();
        Ok(())
    }

    /// Decides the deliveries of one entry stamped `now_ms`: a delivery is taken when it names the next
    /// untaken offset of its staging queue, that offset holds a staged message (below the queue's next
    /// offset) and the entry's time has reached its `due_ms`; a move must also name an existing timer
    /// queue, a copy a message the entry will index (`copy_indexable(part, index)`). Advances the cursors past the taken ones and returns the (part, index) of the copies not to
    /// index (all the others') and the units taken moves write, in order.
    pub(crate) fn accept(
        &mut self,
        deliveries: &[Delivery],
        now_ms: i64,
        staged: Option<&BTreeMap<u32, QueueState>>,
        timers: Option<&BTreeMap<u32, QueueState>>,
        copy_indexable: impl Fn(u32, u32) -> bool,
    ) -> (BTreeSet<(u32, u32)>, Vec<MoveTo>) {
        let mut refused = BTreeSet::new();
        let mut moves = Vec::new();
        // Units a move of this entry adds to a timer queue are not takeable in the same entry.
        for d in deliveries {
            let (cursors, queues) = match d.source {
                Source::Level => (&mut self.cursors, staged),
                Source::Timer => (&mut self.timer_cursors, timers),
            };
            let cursor = cursors.get(&d.schedule_queue).copied().unwrap_or(0);
            let stored = queues.and_then(|qs| qs.get(&d.schedule_queue)).map_or(0, |s| s.next_offset);
            // A copy whose part would be rejected (no such topic or queue) must not take the message: the
            // cursor would pass it and nothing would be indexed — a lost message.
            let move_ok = match d.action {
                Action::Move { to_queue, .. } => to_queue < TIMER_LEVELS && timers.is_some_and(|t| t.contains_key(&to_queue)),
                Action::Copy { part, index } => copy_indexable(part, index),
            };
            let taken = d.staged_offset == cursor && cursor < stored && d.due_ms <= now_ms && move_ok;
            if taken {
                cursors.insert(d.schedule_queue, cursor + 1);
            }
            match d.action {
                Action::Copy { part, index } if !taken => {
                    refused.insert((part, index));
                }
                Action::Move { to_queue, eligible_ms, phys_offset, size } if taken => {
                    moves.push(MoveTo { queue: to_queue, unit: CqUnit { phys_offset, size, tags_code: eligible_ms } });
                }
                _ => {}
            }
        }
        (refused, moves)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocketmq_default_table_has_eighteen_levels_from_1s_to_2h() {
        let t = parse_delay_levels(DEFAULT_DELAY_LEVELS).unwrap();
        assert_eq!(t, DEFAULT_DELAY_LEVELS_MS);
        assert_eq!((t[0], t[2], t[17]), (1000, 10_000, 7_200_000));
        assert_eq!(format_delay_levels(&t), DEFAULT_DELAY_LEVELS);
    }

    #[test]
    fn bad_tables_are_named() {
        assert!(parse_delay_levels("").unwrap_err().contains("empty"));
        assert!(parse_delay_levels("1s 5x").unwrap_err().contains("\"5x\""));
        assert!(parse_delay_levels("10").unwrap_err().contains("no unit"));
        assert!(parse_delay_levels("41d").unwrap_err().contains("40-day"));
        assert_eq!(parse_delay_levels("40d 250ms").unwrap(), vec![LEVEL_DELAY_MS_MAX, 250]);
        let too_many = vec!["1s"; DELAY_LEVELS_MAX + 1].join(" ");
        assert!(parse_delay_levels(&too_many).unwrap_err().contains("limit"));
        assert_eq!(parse_delay_levels(&vec!["1s"; DELAY_LEVELS_MAX].join(" ")).unwrap().len(), DELAY_LEVELS_MAX);
    }

    #[test]
    fn levels_clamp_to_the_last_and_non_positive_means_no_delay() {
        let s = Schedule::default();
        assert_eq!(s.delay_of(0), None);
        assert_eq!(s.delay_of(-1), None);
        assert_eq!(s.delay_of(3), Some((3, 10_000)));
        assert_eq!(s.delay_of(99), Some((18, 7_200_000)));
    }

    #[test]
    fn timer_levels_cover_ticks_to_forty_days_and_each_hop_at_least_halves_the_rest() {
        assert_eq!(timer_level_for(-5), 0);
        assert_eq!(timer_level_for(15), 0);
        assert_eq!(timer_level_for(16), 0);
        assert_eq!(timer_level_for(31), 0);
        assert_eq!(timer_level_for(32), 1);
        assert_eq!(timer_level_delay_ms(TIMER_LEVELS - 1), 16 << 28);
        let forty_days = LEVEL_DELAY_MS_MAX as i64;
        assert!(timer_level_delay_ms(TIMER_LEVELS - 1) > forty_days, "the longest line holds 40 days");
        assert_eq!(timer_level_for(forty_days), 27, "2^27 ticks ≤ 40 days < 2^28 ticks");
        assert_eq!(timer_level_for(i64::MAX), TIMER_LEVELS - 1);
        // Hop count for every slot boundary and its neighbours up to 40 days: at most 29 hops, and every
        // hop's delay is ≤ the remaining time (never early) and > half of it (progress).
        let mut probes = vec![1, 15, 16, 17, forty_days - 1, forty_days, forty_days + 1];
        for k in 0..TIMER_LEVELS {
            let d = timer_level_delay_ms(k);
            probes.extend([d - 1, d, d + 1, 2 * d - 1]);
        }
        for r0 in probes.into_iter().filter(|r| (1..=forty_days + 1).contains(r)) {
            let (mut r, mut hops) = (r0, 0);
            while r >= TIMER_TICK_MS {
                let d = timer_level_delay_ms(timer_level_for(r));
                assert!(d <= r && 2 * d > r, "remaining {r}: hop of {d}");
                r -= d;
                hops += 1;
            }
            assert!(hops <= 29, "{r0} ms took {hops} hops");
        }
    }

    #[test]
    fn a_timer_move_is_taken_once_and_writes_a_unit_for_the_same_bytes() {
        let mut s = Schedule::default();
        let timers: BTreeMap<u32, QueueState> =
            (0..TIMER_LEVELS).map(|k| (k, QueueState { next_offset: if k == 5 { 1 } else { 0 }, min_offset: 0 })).collect();
        let mv = |to| Delivery {
            source: Source::Timer,
            schedule_queue: 5,
            staged_offset: 0,
            due_ms: 50,
            action: Action::Move { to_queue: to, eligible_ms: 80, phys_offset: 4096, size: 300 },
        };
        // To a queue that does not exist: refused, cursor stays.
        assert!(s.accept(&[mv(TIMER_LEVELS)], 60, None, Some(&timers), |_, _| true).1.is_empty());
        assert_eq!(s.timer_cursor(5), 0);
        let (refused, moves) = s.accept(&[mv(1), mv(1)], 60, None, Some(&timers), |_, _| true);
        assert!(refused.is_empty());
        assert_eq!(
            moves,
            vec![MoveTo { queue: 1, unit: CqUnit { phys_offset: 4096, size: 300, tags_code: 80 } }],
            "the repeat is not taken"
        );
        assert_eq!(s.timer_cursor(5), 1);
    }

    #[test]
    fn a_delivery_counts_once_in_order_and_never_early() {
        let mut s = Schedule::default();
        let staged: BTreeMap<u32, QueueState> = [(2, QueueState { next_offset: 3, min_offset: 0 })].into();
        let d = |off, due, index| Delivery {
            source: Source::Level,
            schedule_queue: 2,
            staged_offset: off,
            due_ms: due,
            action: Action::Copy { part: 0, index },
        };
        let refused = |s: &mut Schedule, ds: &[Delivery], now| s.accept(ds, now, Some(&staged), None, |_, _| true).0;
        // Not due yet at 99.
        assert_eq!(refused(&mut s, &[d(0, 100, 0)], 99), [(0, 0)].into());
        assert_eq!(s.cursor(2), 0);
        // Out of order (1 before 0) is refused; 0 then 1 in one entry is taken.
        assert_eq!(refused(&mut s, &[d(1, 100, 0)], 100), [(0, 0)].into());
        assert!(refused(&mut s, &[d(0, 100, 0), d(1, 100, 1)], 100).is_empty());
        assert_eq!(s.cursor(2), 2);
        // A repeat of an earlier delivery (a new leader's re-proposal) is refused.
        assert_eq!(refused(&mut s, &[d(1, 100, 0)], 200), [(0, 0)].into());
        // Nothing past what was staged.
        assert!(refused(&mut s, &[d(2, 100, 0)], 200).is_empty());
        assert_eq!(refused(&mut s, &[d(3, 100, 0)], 200), [(0, 0)].into());
        assert_eq!(s.cursor(2), 3);
    }
}
