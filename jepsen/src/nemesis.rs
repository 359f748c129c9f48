//! Nemeses and their schedule. Each family has targets (one node, the leader, a majority, all, a one-way
//! ring, a single link, clients cut from the leader ...). The schedule is Jepsen's: after a warm-up, wait a
//! random stagger, start a fault drawn from the enabled families (shuffled round-robin, so every family
//! appears), hold it, stop it; at the end heal everything. Every start and stop goes into the history as a
//! `nemesis` op, with the resolved targets, so plots and the availability report can shade fault windows.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use raftmq_client::{Admin, ClientConfig};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::clock::{self, SkewBounds};
use crate::cluster::{client_addr, namesrv_addr, Cluster, HOST_IP};
use crate::net;
use crate::workload::Recorder;

/// Fault families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// Network partitions (nftables grudges).
    Partition,
    /// kill -9 and restart.
    Kill,
    /// SIGSTOP / SIGCONT.
    Pause,
    /// Wall-clock bumps and strobes (libfaketime).
    Clock,
    /// Random packet loss (nft numgen).
    Loss,
    /// A slow link (netem when available, else tbf).
    Slow,
    /// Leader transfer through the admin request.
    Transfer,
    /// A graceful rolling restart of every node (SIGTERM, followers first, the leader last; each node back
    /// and caught up before the next): planned operations must fail no send. Not part of `all`.
    Restart,
}

impl FromStr for Family {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "partition" => Family::Partition,
            "kill" => Family::Kill,
            "pause" => Family::Pause,
            "clock" => Family::Clock,
            "loss" => Family::Loss,
            "slow" => Family::Slow,
            "transfer" => Family::Transfer,
            "restart" => Family::Restart,
            other => bail!("unknown nemesis {other:?} (partition, kill, pause, clock, loss, slow, transfer, restart, all, none)"),
        })
    }
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 7] =
        [Family::Partition, Family::Kill, Family::Pause, Family::Clock, Family::Loss, Family::Slow, Family::Transfer];

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Family::Partition => "partition",
            Family::Kill => "kill",
            Family::Pause => "pause",
            Family::Clock => "clock",
            Family::Loss => "loss",
            Family::Slow => "slow",
            Family::Transfer => "transfer",
            Family::Restart => "restart",
        }
    }

    /// Parses `partition,kill`, `all` or `none` (no faults: the workload alone).
    pub fn parse_list(s: &str) -> Result<Vec<Family>> {
        match s.trim() {
            "all" => return Ok(Family::ALL.to_vec()),
            "none" => return Ok(Vec::new()),
            _ => {}
        }
        let mut out: Vec<Family> = s.split(',').map(|p| p.trim().parse()).collect::<Result<_>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Schedule settings.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Enabled families.
    pub families: Vec<Family>,
    /// Mean wait between faults (Jepsen's stagger: uniform in [0, 2 × interval]).
    pub interval: Duration,
    /// How long a fault is held: uniform in this range.
    pub hold: (Duration, Duration),
    /// No faults before this.
    pub warmup: Duration,
    /// Faults end after this (from the start of the schedule).
    pub time_limit: Duration,
    /// Whether the kernel has netem (for `slow`).
    pub netem: bool,
}

/// The shared cluster handle the nemesis acts on.
pub type SharedCluster = Arc<Mutex<Cluster>>;

/// Raft status of every node that answers within a short deadline: id → (role, term).
pub async fn statuses(ids: &[u8]) -> BTreeMap<u8, (String, u64)> {
    let mut cfg = ClientConfig::new(&namesrv_addr()).with_instance_name(format!("jepsen-nemesis-{}", std::process::id()));
    cfg.request_timeout = Duration::from_millis(700);
    cfg.connect_timeout = Duration::from_millis(500);
    let mut out = BTreeMap::new();
    let Ok(admin) = Admin::start(cfg).await else { return out };
    for id in ids {
        if let Ok(s) = admin.node_status(&client_addr(*id)).await {
            out.insert(*id, (s["role"].as_str().unwrap_or("?").to_string(), s["term"].as_u64().unwrap_or(0)));
        }
    }
    admin.shutdown().await;
    out
}

/// The node that reports itself leader with the highest term.
pub async fn find_leader(ids: &[u8]) -> Option<u8> {
    statuses(ids).await.into_iter().filter(|(_, (role, _))| role == "Leader").max_by_key(|(_, (_, term))| *term).map(|(id, _)| id)
}

/// What a started fault needs to be stopped.
#[derive(Debug)]
enum Active {
    Partition,
    Killed(Vec<u8>),
    Paused(Vec<u8>),
    /// The nodes, and for a strobe its stop flag and task.
    Clock(Vec<u8>, Option<(Arc<AtomicBool>, tokio::task::JoinHandle<()>)>),
    Loss,
    Slow(u8),
    None,
}

fn pick(rng: &mut ChaCha8Rng, ids: &[u8], n: usize) -> Vec<u8> {
    let mut v = ids.to_vec();
    v.shuffle(rng);
    v.truncate(n.max(1));
    v.sort();
    v
}

async fn target_nodes(rng: &mut ChaCha8Rng, spec: &str, ids: &[u8]) -> (Vec<u8>, Option<u8>) {
    let leader = find_leader(ids).await;
    let nodes = match spec {
        "leader" => leader.map(|l| vec![l]).unwrap_or_else(|| pick(rng, ids, 1)),
        "majority" => pick(rng, ids, ids.len() / 2 + 1),
        "all" => ids.to_vec(),
        _ => pick(rng, ids, 1),
    };
    (nodes, leader)
}

/// Starts one fault of `family`; records it; returns what stopping it needs. Clock offsets are noted in
/// `skew` before they are applied.
async fn start(
    family: Family,
    rng: &mut ChaCha8Rng,
    cluster: &SharedCluster,
    rec: &Recorder,
    cfg: &ScheduleConfig,
    skew: &mut SkewBounds,
) -> Result<Active> {
    let ids = cluster.lock().await.ids();
    match family {
        Family::Partition => {
            let spec = *["one", "leader", "ring", "link", "client-leader"].choose(rng).unwrap_or(&"one");
            let leader = find_leader(&ids).await;
            // grudge: node → sources it drops.
            let mut grudge: BTreeMap<u8, Vec<String>> = BTreeMap::new();
            match spec {
                "one" | "leader" => {
                    let victim = if spec == "leader" { leader.unwrap_or(ids[0]) } else { pick(rng, &ids, 1)[0] };
                    let others: Vec<u8> = ids.iter().copied().filter(|i| *i != victim).collect();
                    grudge.insert(victim, net::ips(&others));
                    for o in &others {
                        grudge.entry(*o).or_default().extend(net::ips(&[victim]));
                    }
                }
                "ring" => {
                    // One-way ring: node i drops packets from node i+1.
                    for (i, id) in ids.iter().enumerate() {
                        let next = ids[(i + 1) % ids.len()];
                        grudge.insert(*id, net::ips(&[next]));
                    }
                }
                "link" => {
                    let pair = pick(rng, &ids, 2);
                    grudge.insert(pair[0], net::ips(&[pair[1]]));
                    grudge.insert(pair[1], net::ips(&[pair[0]]));
                }
                _ => {
                    // client-leader: the leader drops the clients (and the nameserver), not its peers.
                    let l = leader.unwrap_or(ids[0]);
                    grudge.insert(l, vec![HOST_IP.to_string()]);
                }
            }
            for (node, srcs) in &grudge {
                net::drop_from(*node, srcs)?;
            }
            rec.nemesis("start-partition", json!({"spec": spec, "leader": leader, "grudge": grudge}));
            Ok(Active::Partition)
        }
        Family::Kill => {
            let spec = *["one", "leader", "majority", "all"].choose(rng).unwrap_or(&"one");
            let (nodes, leader) = target_nodes(rng, spec, &ids).await;
            let mut c = cluster.lock().await;
            for n in &nodes {
                c.kill(*n);
            }
            rec.nemesis("kill", json!({"spec": spec, "leader": leader, "nodes": nodes}));
            Ok(Active::Killed(nodes))
        }
        Family::Pause => {
            let spec = *["one", "leader", "majority", "all"].choose(rng).unwrap_or(&"one");
            let (nodes, leader) = target_nodes(rng, spec, &ids).await;
            let c = cluster.lock().await;
            for n in &nodes {
                c.pause(*n);
            }
            rec.nemesis("pause", json!({"spec": spec, "leader": leader, "nodes": nodes}));
            Ok(Active::Paused(nodes))
        }
        Family::Clock => {
            let n = rng.gen_range(1..=ids.len());
            let nodes = pick(rng, &ids, n);
            if rng.gen_bool(0.5) {
                let mut offsets = BTreeMap::new();
                for id in &nodes {
                    let ms = clock::bump_ms(rng);
                    skew.note(ms);
                    offsets.insert(*id, ms);
                }
                // Recorded before it takes effect, so the history's window covers every moment a clock was off
                // (the scheduled checks widen their early allowance inside it).
                rec.nemesis("bump-clock", json!({"offsets-ms": offsets}));
                for (id, ms) in &offsets {
                    clock::set_offset(*id, *ms)?;
                }
                Ok(Active::Clock(nodes, None))
            } else {
                let (delta, period) = clock::strobe_params(rng);
                skew.note(delta);
                let stop = Arc::new(AtomicBool::new(false));
                let (s, targets) = (Arc::clone(&stop), nodes.clone());
                rec.nemesis("strobe-clock", json!({"nodes": nodes, "delta-ms": delta, "period-us": period.as_micros() as u64}));
                let task = tokio::spawn(async move {
                    let mut on = false;
                    while !s.load(Ordering::Acquire) {
                        on = !on;
                        for id in &targets {
                            let _ = clock::set_offset(*id, if on { delta } else { 0 });
                        }
                        tokio::time::sleep(period).await;
                    }
                });
                Ok(Active::Clock(nodes, Some((stop, task))))
            }
        }
        Family::Loss => {
            let victim = pick(rng, &ids, 1)[0];
            let percent = *[20u8, 50, 80].choose(rng).unwrap_or(&50);
            let others: Vec<u8> = ids.iter().copied().filter(|i| *i != victim).collect();
            net::lose_from(victim, &net::ips(&others), percent)?;
            rec.nemesis("start-loss", json!({"node": victim, "percent": percent}));
            Ok(Active::Loss)
        }
        Family::Slow => {
            let victim = pick(rng, &ids, 1)[0];
            let how = net::slow(victim, cfg.netem)?;
            rec.nemesis("start-slow", json!({"node": victim, "qdisc": how}));
            Ok(Active::Slow(victim))
        }
        Family::Restart => {
            let leader = find_leader(&ids).await;
            let mut order: Vec<u8> = ids.iter().copied().filter(|i| Some(*i) != leader).collect();
            order.extend(leader);
            rec.nemesis("start-rolling-restart", json!({"leader": leader, "order": order}));
            let mut steps = Vec::new();
            for n in order {
                steps.push(restart_gracefully(cluster, &ids, n).await?);
            }
            rec.nemesis("rolling-restart", json!({"leader": leader, "steps": steps}));
            Ok(Active::None)
        }
        Family::Transfer => {
            let Some(leader) = find_leader(&ids).await else {
                rec.nemesis("transfer-leader", json!({"error": "no leader to transfer from"}));
                return Ok(Active::None);
            };
            let target = *ids.iter().filter(|i| **i != leader).collect::<Vec<_>>().choose(rng).copied().unwrap_or(&leader);
            let mut ccfg = ClientConfig::new(&namesrv_addr()).with_instance_name(format!("jepsen-transfer-{}", std::process::id()));
            ccfg.request_timeout = Duration::from_secs(3);
            let result = match Admin::start(ccfg).await {
                Ok(admin) => {
                    let r = admin.transfer_leader(&client_addr(leader), target as u64).await.map_err(|e| e.to_string());
                    admin.shutdown().await;
                    r
                }
                Err(e) => Err(e.to_string()),
            };
            rec.nemesis("transfer-leader", json!({"from": leader, "to": target, "result": result.err().unwrap_or_else(|| "ok".into())}));
            Ok(Active::None)
        }
    }
}

/// Longest a node may take to leave and stop after SIGTERM (hand-off, route, drain, shutdown) before it is killed.
const RESTART_STOP_MAX: Duration = Duration::from_secs(90);
/// Longest a restarted node may take to catch up before the rolling restart is reported as failed.
const RESTART_CATCH_UP_MAX: Duration = Duration::from_secs(60);

/// One step of a rolling restart: SIGTERM node `n`, wait for its exit, start it, and wait until it has applied
/// what the group had committed when it stopped. Returns the step's figures for the history.
async fn restart_gracefully(cluster: &SharedCluster, ids: &[u8], n: u8) -> Result<Value> {
    let commit_goal = {
        let mut cfg = ClientConfig::new(&namesrv_addr()).with_instance_name(format!("jepsen-restart-{}", std::process::id()));
        cfg.request_timeout = Duration::from_secs(2);
        let admin = Admin::start(cfg).await?;
        let mut goal = 0;
        for id in ids {
            if let Ok(s) = admin.node_status(&client_addr(*id)).await {
                goal = goal.max(s["commitIndex"].as_u64().unwrap_or(0));
            }
        }
        admin.shutdown().await;
        goal
    };
    let started = std::time::Instant::now();
    let child = cluster.lock().await.terminate(n);
    let exit = match child {
        Some(mut c) => tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + RESTART_STOP_MAX;
            loop {
                if let Ok(Some(st)) = c.try_wait() {
                    return st.code().map(|c| c.to_string()).unwrap_or_else(|| "signal".into());
                }
                if std::time::Instant::now() >= deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    return "killed after the stop limit".into();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .unwrap_or_else(|e| e.to_string()),
        None => "was not running".into(),
    };
    let stop_ms = started.elapsed().as_millis() as u64;
    cluster.lock().await.start_node(n)?;
    let back = std::time::Instant::now();
    let caught_up = crate::cluster::wait_until(RESTART_CATCH_UP_MAX, || async move {
        let mut cfg = ClientConfig::new(&namesrv_addr()).with_instance_name(format!("jepsen-restart-{}", std::process::id()));
        cfg.request_timeout = Duration::from_millis(700);
        cfg.connect_timeout = Duration::from_millis(500);
        let Ok(admin) = Admin::start(cfg).await else { return false };
        let applied = admin.node_status(&client_addr(n)).await.ok().and_then(|s| s["appliedIndex"].as_u64());
        admin.shutdown().await;
        applied.is_some_and(|a| a >= commit_goal)
    })
    .await;
    if !caught_up {
        bail!("node {n} did not catch up to index {commit_goal} within {RESTART_CATCH_UP_MAX:?} after its restart");
    }
    Ok(json!({"node": n, "exit": exit, "stop_ms": stop_ms, "catch_up_ms": back.elapsed().as_millis() as u64}))
}

/// Stops a fault; records it.
async fn stop(active: Active, cluster: &SharedCluster, rec: &Recorder) {
    match active {
        Active::Partition => {
            for id in cluster.lock().await.ids() {
                let _ = net::heal(id);
            }
            rec.nemesis("stop-partition", Value::Null);
        }
        Active::Killed(nodes) => {
            let mut c = cluster.lock().await;
            for n in &nodes {
                let _ = c.start_node(*n);
            }
            rec.nemesis("start", json!({"nodes": nodes}));
        }
        Active::Paused(nodes) => {
            let c = cluster.lock().await;
            for n in &nodes {
                c.resume(*n);
            }
            rec.nemesis("resume", json!({"nodes": nodes}));
        }
        Active::Clock(nodes, strobe) => {
            if let Some((s, task)) = strobe {
                // Wait for the strobe task to end (it sleeps at most one period, ~1 s) so that no offset is
                // written after the reset below: `reset-clock` must close the fault's window.
                s.store(true, Ordering::Release);
                let _ = task.await;
            }
            for n in &nodes {
                let _ = clock::set_offset(*n, 0);
            }
            rec.nemesis("reset-clock", json!({"nodes": nodes}));
        }
        Active::Loss => {
            for id in cluster.lock().await.ids() {
                let _ = net::heal(id);
            }
            rec.nemesis("stop-loss", Value::Null);
        }
        Active::Slow(n) => {
            net::unslow(n);
            rec.nemesis("stop-slow", json!({"node": n}));
        }
        Active::None => {}
    }
}

/// Undoes every possible fault: network rules, qdiscs, paused and dead nodes, clocks.
pub async fn heal_all(cluster: &SharedCluster, rec: &Recorder) {
    let mut c = cluster.lock().await;
    for id in c.ids() {
        let _ = net::heal(id);
        net::unslow(id);
        let _ = clock::set_offset(id, 0);
        c.resume(id);
        if !c.is_up(id) {
            let _ = c.start_node(id);
        }
    }
    rec.nemesis("heal", Value::Null);
}

/// Runs the schedule until `time_limit`, then heals everything. Returns the clock offsets it injected.
pub async fn run(cfg: ScheduleConfig, rng: &mut ChaCha8Rng, cluster: SharedCluster, rec: Recorder) -> SkewBounds {
    let mut skew = SkewBounds::default();
    let end = tokio::time::Instant::now() + cfg.time_limit;
    tokio::time::sleep(cfg.warmup.min(cfg.time_limit)).await;
    let mut deck: Vec<Family> = Vec::new();
    while !cfg.families.is_empty() {
        let wait = Duration::from_secs_f64(rng.gen_range(0.0..2.0 * cfg.interval.as_secs_f64()));
        if tokio::time::Instant::now() + wait >= end {
            break;
        }
        tokio::time::sleep(wait).await;
        if deck.is_empty() {
            deck = cfg.families.clone();
            deck.shuffle(rng);
        }
        let family = deck.pop().unwrap_or(Family::Partition);
        let active = match start(family, rng, &cluster, &rec, &cfg, &mut skew).await {
            Ok(a) => a,
            Err(e) => {
                if family == Family::Clock {
                    // Some node's clock may have moved without the offset being recorded.
                    skew.unknown = true;
                }
                rec.nemesis(&format!("{}-failed", family.name()), json!({"error": e.to_string()}));
                Active::None
            }
        };
        let hold = Duration::from_secs_f64(rng.gen_range(cfg.hold.0.as_secs_f64()..=cfg.hold.1.as_secs_f64()));
        let hold_end = (tokio::time::Instant::now() + hold).min(end);
        tokio::time::sleep_until(hold_end).await;
        stop(active, &cluster, &rec).await;
        if tokio::time::Instant::now() >= end {
            break;
        }
    }
    tokio::time::sleep_until(end).await;
    heal_all(&cluster, &rec).await;
    skew
}
