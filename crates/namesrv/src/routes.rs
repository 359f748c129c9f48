//! The route table: which broker groups exist, their members' client addresses (the Raft leader of each
//! group as brokerId 0), and which groups serve which topics. Filled by broker registrations; brokers
//! silent for longer than their registration timeout are dropped by [`RouteTable::expire`].
//!
//! brokerId 0 goes to the registration of the highest Raft term (header field `raftTerm`, sent by raftmq
//! brokers): while the current master's registration is alive, a brokerId-0 registration of a lower term —
//! a deposed leader that has not noticed yet (openraft 0.9 does not step a leader down when it loses its
//! quorum) — is refused and changes nothing, neither the address nor the group's topic table. Brokers that
//! send no term (other RocketMQ brokers) keep the old rule, last registration wins, among themselves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use raftmq_remoting::body::{BrokerData, ClusterInfo, QueueData, RegisterBrokerBody, TopicRouteData, MASTER_ID};
use raftmq_remoting::header::RegisterBrokerRequestHeader;

/// How long a broker stays routable without registering again (RocketMQ: 120 s).
pub const BROKER_EXPIRY_DEFAULT: Duration = Duration::from_secs(120);
/// Template topic producers fall back to.
const AUTO_CREATE_TOPIC: &str = "TBW102";
const RETRY_PREFIX: &str = "%RETRY%";
const PERM_READ_WRITE: i32 = 6;
const DEFAULT_QUEUE_NUMS: i32 = 4;

struct Live {
    broker_name: String,
    last_update: Instant,
    timeout: Duration,
}

/// The term a group's brokerId-0 address registered with.
struct MasterTerm {
    addr: String,
    term: Option<u64>,
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// A brokerId-0 registration from an older Raft term than the live master's.
    #[error(
        "stale master registration: {addr} claims brokerId 0 of {broker_name} in Raft term {term:?}, \
         but {master_addr} holds it in term {master_term} and is alive; register as a slave (brokerId = node id)"
    )]
    StaleMaster {
        /// Broker group.
        broker_name: String,
        /// The refused address.
        addr: String,
        /// The term it registered with (`None`: it sent none).
        term: Option<u64>,
        /// The current master's address.
        master_addr: String,
        /// The current master's term.
        master_term: u64,
    },
}

#[derive(Default)]
struct Tables {
    brokers: BTreeMap<String, BrokerData>,
    /// Per broker group: the term of its brokerId-0 registration (valid while `addr` still holds id 0).
    master_terms: HashMap<String, MasterTerm>,
    clusters: BTreeMap<String, BTreeSet<String>>,
    topics: BTreeMap<String, BTreeMap<String, QueueData>>,
    live: HashMap<String, Live>,
}

/// The nameserver's routing state. Thread-safe.
#[derive(Default)]
pub struct RouteTable {
    tables: RwLock<Tables>,
}

impl RouteTable {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a registration. Returns the group's current master address.
    ///
    /// # Errors
    /// [`RegisterError::StaleMaster`] for a brokerId-0 registration whose Raft term is lower than (or, with
    /// none, unknown against) the term of a live master at another address; nothing is changed then.
    pub fn register(&self, h: &RegisterBrokerRequestHeader, body: &RegisterBrokerBody) -> Result<Option<String>, RegisterError> {
        let now = Instant::now();
        let mut t = self.write();
        let term = h.raft_term.and_then(|v| u64::try_from(v).ok());
        if h.broker_id == MASTER_ID {
            if let Some((master_addr, master_term)) = t.live_master_term(&h.broker_name, now) {
                if master_addr != h.broker_addr && term.is_none_or(|v| v < master_term) {
                    return Err(RegisterError::StaleMaster {
                        broker_name: h.broker_name.clone(),
                        addr: h.broker_addr.clone(),
                        term,
                        master_addr,
                        master_term,
                    });
                }
            }
        }
        t.clusters.entry(h.cluster_name.clone()).or_default().insert(h.broker_name.clone());
        let b = t.brokers.entry(h.broker_name.clone()).or_insert_with(|| BrokerData {
            cluster: h.cluster_name.clone(),
            broker_name: h.broker_name.clone(),
            ..BrokerData::default()
        });
        b.cluster = h.cluster_name.clone();
        // One address holds one id: a follower that became leader (or the reverse) moves its address.
        b.broker_addrs.retain(|id, addr| *addr != h.broker_addr || *id == h.broker_id);
        b.broker_addrs.insert(h.broker_id, h.broker_addr.clone());
        let master = b.master_addr().map(String::from);
        if h.broker_id == MASTER_ID {
            t.master_terms.insert(h.broker_name.clone(), MasterTerm { addr: h.broker_addr.clone(), term });
            // The leader's topic table is authoritative for its group (topics are replicated by Raft).
            let table = &body.topic_config_serialize_wrapper.topic_config_table;
            for (topic, qs) in t.topics.iter_mut() {
                if !table.contains_key(topic) {
                    qs.remove(&h.broker_name);
                }
            }
            for (name, cfg) in table {
                t.topics.entry(name.clone()).or_default().insert(
                    h.broker_name.clone(),
                    QueueData {
                        broker_name: h.broker_name.clone(),
                        read_queue_nums: cfg.read_queue_nums,
                        write_queue_nums: cfg.write_queue_nums,
                        perm: cfg.perm,
                        topic_sys_flag: cfg.topic_sys_flag,
                    },
                );
            }
            // Topics no group serves any more disappear.
            t.topics.retain(|_, qs| !qs.is_empty());
        }
        let timeout =
            h.heartbeat_timeout_millis.filter(|ms| *ms > 0).map(|ms| Duration::from_millis(ms as u64)).unwrap_or(BROKER_EXPIRY_DEFAULT);
        t.live.insert(h.broker_addr.clone(), Live { broker_name: h.broker_name.clone(), last_update: now, timeout });
        Ok(master)
    }

    /// Removes one broker address (UNREGISTER_BROKER or expiry).
    pub fn unregister(&self, broker_name: &str, broker_addr: &str) {
        let mut t = self.write();
        remove_addr(&mut t, broker_name, broker_addr);
    }

    /// Drops brokers that did not register within their timeout; returns the addresses dropped.
    pub fn expire(&self) -> Vec<String> {
        let now = Instant::now();
        let mut t = self.write();
        let dead: Vec<(String, String)> = t
            .live
            .iter()
            .filter(|(_, l)| now.duration_since(l.last_update) > l.timeout)
            .map(|(a, l)| (a.clone(), l.broker_name.clone()))
            .collect();
        for (addr, name) in &dead {
            remove_addr(&mut t, name, addr);
        }
        dead.into_iter().map(|(a, _)| a).collect()
    }

    /// The route of `topic`. Unknown `%RETRY%<group>` and `TBW102` topics are served by every broker group
    /// (clients subscribe to their retry topic and fall back to TBW102's route automatically).
    pub fn route(&self, topic: &str) -> Option<TopicRouteData> {
        let t = self.read();
        let queue_datas: Vec<QueueData> = match t.topics.get(topic) {
            Some(qs) => {
                qs.values().filter(|q| t.brokers.get(&q.broker_name).is_some_and(|b| !b.broker_addrs.is_empty())).cloned().collect()
            }
            None if topic.starts_with(RETRY_PREFIX) || topic == AUTO_CREATE_TOPIC => {
                let nums = if topic == AUTO_CREATE_TOPIC { DEFAULT_QUEUE_NUMS } else { 1 };
                t.brokers
                    .values()
                    .filter(|b| !b.broker_addrs.is_empty())
                    .map(|b| QueueData {
                        broker_name: b.broker_name.clone(),
                        read_queue_nums: nums,
                        write_queue_nums: nums,
                        perm: PERM_READ_WRITE,
                        topic_sys_flag: 0,
                    })
                    .collect()
            }
            None => return None,
        };
        if queue_datas.is_empty() {
            return None;
        }
        let broker_datas = queue_datas.iter().filter_map(|q| t.brokers.get(&q.broker_name).cloned()).collect();
        Some(TopicRouteData { queue_datas, broker_datas, ..TopicRouteData::default() })
    }

    /// Clusters and broker groups (GET_BROKER_CLUSTER_INFO).
    pub fn cluster_info(&self) -> ClusterInfo {
        let t = self.read();
        ClusterInfo { broker_addr_table: t.brokers.clone(), cluster_addr_table: t.clusters.clone() }
    }

    /// DELETE_TOPIC_IN_NAMESRV: forgets `topic`'s route — of every broker group, or with `cluster` only of
    /// that cluster's groups. Returns the groups it was removed from. A leader that still lists the topic
    /// brings it back with its next registration (delete it in the brokers first, 215).
    pub fn delete_topic(&self, topic: &str, cluster: Option<&str>) -> Vec<String> {
        let mut t = self.write();
        let in_cluster: Option<BTreeSet<String>> = cluster.map(|c| t.clusters.get(c).cloned().unwrap_or_default());
        let mut removed = Vec::new();
        if let Some(qs) = t.topics.get_mut(topic) {
            qs.retain(|broker, _| {
                let hit = in_cluster.as_ref().is_none_or(|names| names.contains(broker));
                if hit {
                    removed.push(broker.clone());
                }
                !hit
            });
            if qs.is_empty() {
                t.topics.remove(topic);
            }
        }
        removed
    }

    /// Every topic some live group serves.
    pub fn topics(&self) -> Vec<String> {
        self.read().topics.keys().cloned().collect()
    }
}

impl Tables {
    /// The address and term of `broker_name`'s brokerId-0 registration, when it carried a term, still holds
    /// id 0 and has not outlived its timeout.
    fn live_master_term(&self, broker_name: &str, now: Instant) -> Option<(String, u64)> {
        let m = self.master_terms.get(broker_name)?;
        let term = m.term?;
        let holds = self.brokers.get(broker_name).and_then(|b| b.master_addr()) == Some(m.addr.as_str());
        let alive = self.live.get(&m.addr).is_some_and(|l| now.duration_since(l.last_update) <= l.timeout);
        (holds && alive).then(|| (m.addr.clone(), term))
    }
}

fn remove_addr(t: &mut Tables, broker_name: &str, broker_addr: &str) {
    t.live.remove(broker_addr);
    let mut gone = false;
    if let Some(b) = t.brokers.get_mut(broker_name) {
        b.broker_addrs.retain(|_, a| a != broker_addr);
        gone = b.broker_addrs.is_empty();
    }
    if gone {
        t.brokers.remove(broker_name);
        t.master_terms.remove(broker_name);
        for names in t.clusters.values_mut() {
            names.remove(broker_name);
        }
        t.clusters.retain(|_, n| !n.is_empty());
        for qs in t.topics.values_mut() {
            qs.remove(broker_name);
        }
        t.topics.retain(|_, qs| !qs.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_remoting::body::TopicConfig;

    fn header(addr: &str, id: i64) -> RegisterBrokerRequestHeader {
        RegisterBrokerRequestHeader {
            broker_name: "broker-a".into(),
            broker_addr: addr.into(),
            cluster_name: "DefaultCluster".into(),
            ha_server_addr: String::new(),
            broker_id: id,
            ..Default::default()
        }
    }

    fn body(topics: &[&str]) -> RegisterBrokerBody {
        let mut b = RegisterBrokerBody::default();
        for t in topics {
            b.topic_config_serialize_wrapper.topic_config_table.insert(
                t.to_string(),
                TopicConfig { topic_name: t.to_string(), read_queue_nums: 4, write_queue_nums: 4, perm: 6, ..Default::default() },
            );
        }
        b
    }

    #[test]
    fn leader_is_broker_id_zero_and_moves_with_leadership() {
        let r = RouteTable::default();
        r.register(&header("127.0.0.1:10911", 0), &body(&["T"])).unwrap();
        r.register(&header("127.0.0.1:10921", 2), &body(&["T"])).unwrap();
        let route = r.route("T").unwrap();
        assert_eq!(route.broker_datas[0].master_addr(), Some("127.0.0.1:10911"));
        // Node 2 wins an election and re-registers at once as id 0; the old leader later as its own id.
        assert_eq!(r.register(&header("127.0.0.1:10921", 0), &body(&["T"])).unwrap().as_deref(), Some("127.0.0.1:10921"));
        let addrs = &r.route("T").unwrap().broker_datas[0].broker_addrs;
        assert_eq!(addrs.get(&0).map(String::as_str), Some("127.0.0.1:10921"));
        assert_eq!(addrs.len(), 1, "node 2's follower entry moved to id 0");
        r.register(&header("127.0.0.1:10911", 1), &body(&["T"])).unwrap();
        assert_eq!(r.route("T").unwrap().broker_datas[0].broker_addrs.len(), 2);
    }

    fn termed(addr: &str, id: i64, term: i64) -> RegisterBrokerRequestHeader {
        RegisterBrokerRequestHeader { raft_term: Some(term), ..header(addr, id) }
    }

    #[test]
    fn a_lower_term_master_registration_does_not_replace_a_live_higher_term_one() {
        let r = RouteTable::default();
        let (old, new) = ("127.0.0.1:10911", "127.0.0.1:10921");
        r.register(&termed(old, 0, 3), &body(&["T"])).unwrap();
        // Node 2 wins term 4 and registers at once; the route moves to it.
        r.register(&termed(new, 0, 4), &body(&["T", "U"])).unwrap();
        // The deposed term-3 leader's periodic registration must neither take brokerId 0 back nor replace
        // the group's topic table.
        let e = r.register(&termed(old, 0, 3), &body(&["T"])).unwrap_err();
        assert!(matches!(&e, RegisterError::StaleMaster { term: Some(3), master_term: 4, .. }), "{e}");
        assert!(e.to_string().contains(new), "the remark names the live master: {e}");
        let route = r.route("U").expect("the term-4 topic table still stands");
        assert_eq!(route.broker_datas[0].master_addr(), Some(new));
        // No term at all cannot beat a known term either.
        assert!(r.register(&header(old, 0), &body(&["T"])).is_err());
        // As a slave it is welcome; an equal or higher term may take over.
        r.register(&termed(old, 1, 3), &body(&["T"])).unwrap();
        assert_eq!(r.route("T").unwrap().broker_datas[0].broker_addrs.len(), 2);
        r.register(&termed(old, 0, 5), &body(&["T"])).unwrap();
        assert_eq!(r.route("T").unwrap().broker_datas[0].master_addr(), Some(old));
    }

    #[test]
    fn a_lower_term_master_may_take_over_once_the_higher_one_expired() {
        let r = RouteTable::default();
        let mut h = termed("127.0.0.1:10921", 0, 9);
        h.heartbeat_timeout_millis = Some(1);
        r.register(&h, &body(&["T"])).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        // Expired but not yet swept: the claim is no longer alive, so a group restarted from scratch (terms
        // begin again) is routable at once.
        r.register(&termed("127.0.0.1:10911", 0, 1), &body(&["T"])).unwrap();
        assert_eq!(r.route("T").unwrap().broker_datas[0].master_addr(), Some("127.0.0.1:10911"));
        // Brokers without terms keep last-registration-wins among themselves.
        let r = RouteTable::default();
        r.register(&header("127.0.0.1:10911", 0), &body(&["T"])).unwrap();
        r.register(&header("127.0.0.1:10921", 0), &body(&["T"])).unwrap();
        assert_eq!(r.route("T").unwrap().broker_datas[0].master_addr(), Some("127.0.0.1:10921"));
    }

    #[test]
    fn unknown_topics_have_no_route_but_retry_and_template_topics_do() {
        let r = RouteTable::default();
        assert!(r.route("T").is_none());
        r.register(&header("127.0.0.1:10911", 0), &body(&["T"])).unwrap();
        assert!(r.route("Other").is_none());
        let retry = r.route("%RETRY%g").unwrap();
        assert_eq!(retry.queue_datas[0].read_queue_nums, 1);
        assert_eq!(r.route("TBW102").unwrap().queue_datas[0].write_queue_nums, 4);
        // The leader's table is authoritative: a topic it no longer lists disappears.
        r.register(&header("127.0.0.1:10911", 0), &body(&["U"])).unwrap();
        assert!(r.route("T").is_none());
        assert!(r.route("U").is_some());
    }

    #[test]
    fn a_deleted_topic_loses_its_route_of_every_group_or_of_one_cluster() {
        let r = RouteTable::default();
        r.register(&header("10.0.0.1:10911", 0), &body(&["T", "U"])).unwrap();
        let mut other = header("10.0.0.9:10911", 0);
        other.broker_name = "broker-b".into();
        other.cluster_name = "c2".into();
        r.register(&other, &body(&["T"])).unwrap();
        assert_eq!(r.route("T").map(|x| x.queue_datas.len()), Some(2));
        // Only cluster c2's group loses it.
        assert_eq!(r.delete_topic("T", Some("c2")), vec!["broker-b".to_string()]);
        assert_eq!(r.route("T").map(|x| x.queue_datas.iter().map(|q| q.broker_name.clone()).collect::<Vec<_>>()), Some(vec![h_name()]));
        assert_eq!(r.delete_topic("T", Some("no-such-cluster")), Vec::<String>::new());
        assert_eq!(r.delete_topic("T", None).len(), 1);
        assert!(r.route("T").is_none() && !r.topics().contains(&"T".to_string()));
        assert!(r.route("U").is_some(), "other topics keep their routes");
        assert!(r.delete_topic("T", None).is_empty(), "deleting again is a no-op");
    }

    fn h_name() -> String {
        header("x", 0).broker_name
    }

    #[test]
    fn expiry_and_unregister_remove_brokers() {
        let r = RouteTable::default();
        let mut h = header("127.0.0.1:10911", 0);
        h.heartbeat_timeout_millis = Some(1);
        r.register(&h, &body(&["T"])).unwrap();
        r.register(&header("127.0.0.1:10921", 2), &body(&["T"])).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(r.expire(), vec!["127.0.0.1:10911".to_string()]);
        assert_eq!(r.route("T").unwrap().broker_datas[0].master_addr(), None, "no leader registered now");
        r.unregister("broker-a", "127.0.0.1:10921");
        assert!(r.route("T").is_none());
        assert!(r.cluster_info().cluster_addr_table.is_empty());
    }
}
