//! The raftmq nameserver: a stateless route registry speaking RocketMQ remoting. Brokers register with
//! every nameserver (REGISTER_BROKER 103) at start, every 30 s and at once on a Raft role change; the
//! Raft leader of each group registers as brokerId 0. Clients ask for topic routes (105) and cluster
//! information (106). Several nameservers may run; they share nothing.
//!
//! DELETE_TOPIC_IN_NAMESRV (216, header `topic`, optional `clusterName`) drops a topic's route.
//!
//! With a cluster secret ([`NameServer::start_secured`]), REGISTER_BROKER, UNREGISTER_BROKER and DELETE_TOPIC_IN_NAMESRV must be signed
//! with it ([`raftmq_remoting::cluster_auth::verify_request`], within ±120 s of this clock); anything else is
//! answered NO_PERMISSION (16) with the reason, and the route table is left as it was. Queries stay open, as in
//! RocketMQ. Refusals are logged at most once per [`REFUSAL_LOG_INTERVAL`].
//!
//! [`NameServer::serve_metrics`] serves `/metrics` and the web console ([`console`]) on one HTTP port; the
//! console asks the registered brokers for their status and figures, signing its control requests with the
//! cluster secret when there is one.

pub mod console;
pub mod metrics;
pub mod routes;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftmq_net::server::HandlerFuture;
use raftmq_net::{Conn, RemotingServer, RequestHandler, Response, ServerOptions};
use raftmq_remoting::body::{decode_json_body, encode_json_body, KvTable, RegisterBrokerBody};
use raftmq_remoting::cluster_auth::{verify_request, ClusterSecrets, RequestAuthError};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::header::{
    CommandHeader, DeleteTopicRequestHeader, GetRouteInfoRequestHeader, RegisterBrokerRequestHeader, RegisterBrokerResponseHeader,
    UnregisterBrokerRequestHeader,
};
use raftmq_remoting::{RequestCode, ResponseCode};
use serde::Serialize;
use tracing::{info, warn};

pub use routes::RouteTable;

/// How often expired brokers are looked for (RocketMQ: 5 s).
pub const SCAN_INTERVAL: Duration = Duration::from_secs(5);

/// Refused registrations are logged at most once per this interval (with the count not logged).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A running nameserver.
pub struct NameServer {
    routes: Arc<RouteTable>,
    server: RemotingServer,
    scanner: tokio::task::JoinHandle<()>,
    metrics: Arc<metrics::NamesrvMetrics>,
    /// The `/metrics` server, once [`NameServer::serve_metrics`] started it.
    metrics_server: Option<raftmq_metrics::server::MetricsServer>,
    /// The cluster secrets the console signs its control requests with.
    secrets: Option<ClusterSecrets>,
}

impl NameServer {
    /// Listens on `listen` and serves until dropped, with the default connection limits.
    pub async fn start(listen: &str) -> std::io::Result<NameServer> {
        Self::start_with(listen, ServerOptions::default()).await
    }

    /// Listens on `listen` with connection limits `opts` and serves until dropped.
    ///
    /// # Errors
    /// `InvalidInput` for limits that break a rule of [`ServerOptions::validate`]; bind errors.
    pub async fn start_with(listen: &str, opts: ServerOptions) -> std::io::Result<NameServer> {
        Self::start_secured(listen, opts, None).await
    }

    /// Like [`NameServer::start_with`]; with `secrets`, broker registrations must be signed with the cluster
    /// secret (see the module docs), without, anyone may register.
    ///
    /// # Errors
    /// As [`NameServer::start_with`].
    pub async fn start_secured(listen: &str, opts: ServerOptions, secrets: Option<ClusterSecrets>) -> std::io::Result<NameServer> {
        let routes = Arc::new(RouteTable::default());
        let metrics = Arc::new(metrics::NamesrvMetrics::default());
        let handler = Handler {
            routes: Arc::clone(&routes),
            secrets: secrets.clone(),
            refusals: RefusalLog::default(),
            metrics: Arc::clone(&metrics),
        };
        let server = RemotingServer::bind(listen, Arc::new(handler), opts).await?;
        let r = Arc::clone(&routes);
        let scanner = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SCAN_INTERVAL);
            loop {
                tick.tick().await;
                for addr in r.expire() {
                    warn!(broker = %addr, "broker registration expired");
                }
            }
        });
        info!(addr = %server.local_addr(), "nameserver listening");
        Ok(NameServer { routes, server, scanner, metrics, metrics_server: None, secrets })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The route table.
    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.routes
    }

    /// Serves `GET /metrics` and the web console ([`console`]: `GET /`, `/api/…`) on `listen` (`host:port`)
    /// until the nameserver is dropped; returns the bound address.
    ///
    /// # Errors
    /// Bind errors.
    pub async fn serve_metrics(&mut self, listen: &str) -> std::io::Result<std::net::SocketAddr> {
        let source = metrics::NamesrvSource {
            metrics: Arc::clone(&self.metrics),
            server: Arc::clone(self.server.stats()),
            routes: Arc::clone(&self.routes),
        };
        let m = Arc::new(raftmq_metrics::export::Metrics::new([Arc::new(source) as Arc<dyn raftmq_metrics::export::Source>]));
        let console = Arc::new(console::Console::new(Arc::clone(&self.routes), self.secrets.clone()));
        let router = raftmq_metrics::server::router(m).merge(console::router(console));
        let server = raftmq_metrics::server::MetricsServer::start(listen, router).await?;
        let addr = server.local_addr();
        self.metrics_server = Some(server);
        Ok(addr)
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.scanner.abort();
        self.server.shutdown();
    }
}

struct Handler {
    routes: Arc<RouteTable>,
    /// `None`: registrations are not authenticated.
    secrets: Option<ClusterSecrets>,
    refusals: RefusalLog,
    metrics: Arc<metrics::NamesrvMetrics>,
}

/// Rate limit of the refusal log: one line per [`REFUSAL_LOG_INTERVAL`].
#[derive(Default)]
struct RefusalLog {
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RefusalLog {
    /// `Some(suppressed)` when a line may be logged at `now_ms`.
    fn allow(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms < next
            || self
                .next_ms
                .compare_exchange(next, now_ms + REFUSAL_LOG_INTERVAL.as_millis() as u64, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TopicList {
    topic_list: Vec<String>,
}

fn error(req: &RemotingCommand, code: ResponseCode, remark: String) -> Option<Response> {
    Some(RemotingCommand::response_to(req, code, Some(remark)).into())
}

impl Handler {
    /// `Err(why)` (the remark) when a secret is configured and `req` is not signed with it.
    fn authenticate(&self, req: &RemotingCommand, peer: &str) -> Result<(), RequestAuthError> {
        let Some(secrets) = &self.secrets else { return Ok(()) };
        let now = now_ms();
        match verify_request(secrets, req.code, &req.ext_fields, &req.body, now) {
            Ok(_) => Ok(()),
            Err(e) => {
                let broker = req.ext_fields.get("brokerAddr").map(String::as_str).unwrap_or("?");
                let id = req.ext_fields.get("brokerId").map(String::as_str).unwrap_or("?");
                if let Some(suppressed) = self.refusals.allow(now) {
                    warn!(%peer, code = req.code, broker, broker_id = id, error = %e, suppressed, "broker registration refused");
                }
                Err(e)
            }
        }
    }

    fn handle_now(&self, req: &RemotingCommand, peer: &str) -> Option<Response> {
        let code = req.request_code();
        if matches!(code, RequestCode::REGISTER_BROKER | RequestCode::UNREGISTER_BROKER) {
            if let Err(e) = self.authenticate(req, peer) {
                return error(req, ResponseCode::NO_PERMISSION, format!("registration refused: {e}"));
            }
        }
        // Deleting a route is as destructive as a forged registration: with a secret it must be signed too.
        if code == RequestCode::DELETE_TOPIC_IN_NAMESRV {
            if let Err(e) = self.authenticate(req, peer) {
                return error(req, ResponseCode::NO_PERMISSION, format!("topic deletion refused: {e}"));
            }
        }
        match code {
            RequestCode::GET_ROUTEINFO_BY_TOPIC => {
                let h = match GetRouteInfoRequestHeader::from_ext_fields(&req.ext_fields) {
                    Ok(h) => h,
                    Err(e) => return error(req, ResponseCode::SYSTEM_ERROR, e.to_string()),
                };
                match self.routes.route(&h.topic) {
                    Some(route) => match encode_json_body(&route) {
                        Ok(body) => Some(RemotingCommand::success_to(req).with_body(body).into()),
                        Err(e) => error(req, ResponseCode::SYSTEM_ERROR, e.to_string()),
                    },
                    None => {
                        error(req, ResponseCode::TOPIC_NOT_EXIST, format!("No topic route info in name server for the topic: {}", h.topic))
                    }
                }
            }
            RequestCode::REGISTER_BROKER => {
                let h = match RegisterBrokerRequestHeader::from_ext_fields(&req.ext_fields) {
                    Ok(h) => h,
                    Err(e) => return error(req, ResponseCode::SYSTEM_ERROR, e.to_string()),
                };
                if h.compressed {
                    return error(
                        req,
                        ResponseCode::SYSTEM_ERROR,
                        "compressed registration bodies are not supported; register with compressed=false".into(),
                    );
                }
                let body: RegisterBrokerBody = if req.body.is_empty() {
                    RegisterBrokerBody::default()
                } else {
                    match decode_json_body("RegisterBrokerBody", &req.body) {
                        Ok(b) => b,
                        Err(e) => return error(req, ResponseCode::SYSTEM_ERROR, e.to_string()),
                    }
                };
                let master = match self.routes.register(&h, &body) {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(broker = %h.broker_addr, error = %e, "registration refused");
                        return error(req, ResponseCode::SYSTEM_ERROR, e.to_string());
                    }
                };
                let resp = RegisterBrokerResponseHeader { ha_server_addr: None, master_addr: master };
                let kv = encode_json_body(&KvTable::default()).unwrap_or_default();
                Some(RemotingCommand::success_to(req).with_header(&resp).with_body(kv).into())
            }
            RequestCode::UNREGISTER_BROKER => match UnregisterBrokerRequestHeader::from_ext_fields(&req.ext_fields) {
                Ok(h) => {
                    self.routes.unregister(&h.broker_name, &h.broker_addr);
                    Some(RemotingCommand::success_to(req).into())
                }
                Err(e) => error(req, ResponseCode::SYSTEM_ERROR, e.to_string()),
            },
            RequestCode::DELETE_TOPIC_IN_NAMESRV => match DeleteTopicRequestHeader::from_ext_fields(&req.ext_fields) {
                Ok(h) => {
                    let removed = self.routes.delete_topic(&h.topic, h.cluster_name.as_deref());
                    tracing::info!(topic = %h.topic, cluster = ?h.cluster_name, groups = ?removed, "topic route deleted");
                    Some(RemotingCommand::success_to(req).into())
                }
                Err(e) => error(req, ResponseCode::SYSTEM_ERROR, e.to_string()),
            },
            RequestCode::GET_BROKER_CLUSTER_INFO => match encode_json_body(&self.routes.cluster_info()) {
                Ok(body) => Some(RemotingCommand::success_to(req).with_body(body).into()),
                Err(e) => error(req, ResponseCode::SYSTEM_ERROR, e.to_string()),
            },
            RequestCode::GET_ALL_TOPIC_LIST_FROM_NAMESERVER => match encode_json_body(&TopicList { topic_list: self.routes.topics() }) {
                Ok(body) => Some(RemotingCommand::success_to(req).with_body(body).into()),
                Err(e) => error(req, ResponseCode::SYSTEM_ERROR, e.to_string()),
            },
            other => error(
                req,
                ResponseCode::REQUEST_CODE_NOT_SUPPORTED,
                format!("request code {} is not supported by the raftmq nameserver", other.0),
            ),
        }
    }
}

impl RequestHandler for Handler {
    fn handle(&self, conn: Conn, req: RemotingCommand) -> HandlerFuture {
        let (started, _in_flight) = (std::time::Instant::now(), self.metrics.in_flight());
        let resp = self.handle_now(&req, &conn.peer().to_string());
        self.metrics.served(req.code, resp.as_ref().map(|r| r.cmd.code), started);
        let fut: Pin<Box<dyn Future<Output = Option<Response>> + Send>> = Box::pin(async move { resp });
        fut
    }
}

#[cfg(test)]
mod tests {
    use raftmq_remoting::body::TopicConfig;
    use raftmq_remoting::cluster_auth::{sign_request, AUTH_FIELD, REQUEST_CLOCK_SKEW_MS_MAX};

    use super::*;

    const SECRET: &str = "namesrv-test-cluster-secret-0123";

    fn handler(secret: Option<&str>) -> Handler {
        Handler {
            routes: Arc::new(RouteTable::default()),
            secrets: secret.map(|s| ClusterSecrets::parse(s).unwrap()),
            refusals: RefusalLog::default(),
            metrics: Arc::default(),
        }
    }

    fn registration(addr: &str, id: i64) -> RemotingCommand {
        let h = RegisterBrokerRequestHeader {
            broker_name: "broker-a".into(),
            broker_addr: addr.into(),
            cluster_name: "DefaultCluster".into(),
            ha_server_addr: String::new(),
            broker_id: id,
            ..Default::default()
        };
        let mut body = RegisterBrokerBody::default();
        body.topic_config_serialize_wrapper.topic_config_table.insert(
            "T".into(),
            TopicConfig { topic_name: "T".into(), read_queue_nums: 4, write_queue_nums: 4, perm: 6, ..Default::default() },
        );
        RemotingCommand::request(RequestCode::REGISTER_BROKER, 1).with_header(&h).with_body(encode_json_body(&body).unwrap())
    }

    fn signed(mut cmd: RemotingCommand, secret: &str, at_ms: u64) -> RemotingCommand {
        sign_request(&ClusterSecrets::parse(secret).unwrap(), cmd.code, &mut cmd.ext_fields, &cmd.body, at_ms);
        cmd
    }

    fn code_and_remark(r: Option<Response>) -> (i32, String) {
        let r = r.expect("a response");
        (r.cmd.code, r.cmd.remark.unwrap_or_default())
    }

    fn master_of(h: &Handler) -> Option<String> {
        h.routes.route("T").and_then(|r| r.broker_datas.first().and_then(|b| b.broker_addrs.get(&0).cloned()))
    }

    #[test]
    fn with_a_secret_only_signed_fresh_registrations_change_routes() {
        let h = handler(Some(SECRET));
        let peer = "10.0.0.9:5555";
        // The real leader, signed.
        let (code, _) = code_and_remark(h.handle_now(&signed(registration("10.0.0.1:10911", 0), SECRET, now_ms()), peer));
        assert_eq!(code, ResponseCode::SUCCESS.0);
        assert_eq!(master_of(&h).as_deref(), Some("10.0.0.1:10911"));
        // A spoofed master: unsigned, wrong secret, stale, tampered after signing.
        let unsigned = registration("10.6.6.6:10911", 0);
        let wrong = signed(registration("10.6.6.6:10911", 0), "another-secret-entirely-0123456", now_ms());
        let stale = signed(registration("10.6.6.6:10911", 0), SECRET, now_ms() - REQUEST_CLOCK_SKEW_MS_MAX - 5_000);
        let mut tampered = signed(registration("10.0.0.1:10911", 0), SECRET, now_ms());
        tampered.ext_fields.insert("brokerAddr".into(), "10.6.6.6:10911".into());
        let mut tampered_body = signed(registration("10.0.0.1:10911", 0), SECRET, now_ms());
        tampered_body.body = bytes::Bytes::from_static(b"{}");
        for (cmd, why) in [
            (unsigned, "not signed"),
            (wrong, "does not match"),
            (stale, "ms away"),
            (tampered, "does not match"),
            (tampered_body, "does not match"),
        ] {
            let (code, remark) = code_and_remark(h.handle_now(&cmd, peer));
            assert_eq!(code, ResponseCode::NO_PERMISSION.0, "{remark}");
            assert!(remark.starts_with("registration refused") && remark.contains(why), "{remark}");
            assert!(!remark.contains(SECRET));
        }
        assert_eq!(master_of(&h).as_deref(), Some("10.0.0.1:10911"), "the route still names the real leader");
        // Unregistering needs the secret too; queries stay open.
        let mut unreg = RemotingCommand::request(RequestCode::UNREGISTER_BROKER, 2);
        unreg.ext_fields.insert("brokerName".into(), "broker-a".into());
        unreg.ext_fields.insert("brokerAddr".into(), "10.0.0.1:10911".into());
        unreg.ext_fields.insert("clusterName".into(), "DefaultCluster".into());
        unreg.ext_fields.insert("brokerId".into(), "0".into());
        assert_eq!(code_and_remark(h.handle_now(&unreg, peer)).0, ResponseCode::NO_PERMISSION.0);
        assert_eq!(master_of(&h).as_deref(), Some("10.0.0.1:10911"));
        let mut q = RemotingCommand::request(RequestCode::GET_ROUTEINFO_BY_TOPIC, 3);
        q.ext_fields.insert("topic".into(), "T".into());
        assert_eq!(code_and_remark(h.handle_now(&q, peer)).0, ResponseCode::SUCCESS.0);
        let unreg = signed(unreg, SECRET, now_ms());
        assert!(unreg.ext_fields.contains_key(AUTH_FIELD));
        assert_eq!(code_and_remark(h.handle_now(&unreg, peer)).0, ResponseCode::SUCCESS.0);
        assert_eq!(master_of(&h), None);
    }

    fn delete_topic(cluster: Option<&str>) -> RemotingCommand {
        let mut d = RemotingCommand::request(RequestCode::DELETE_TOPIC_IN_NAMESRV, 4);
        d.ext_fields.insert("topic".into(), "T".into());
        if let Some(c) = cluster {
            d.ext_fields.insert("clusterName".into(), c.into());
        }
        d
    }

    #[test]
    fn with_a_secret_only_a_signed_delete_removes_a_route() {
        let h = handler(Some(SECRET));
        let peer = "10.0.0.9:5555";
        h.handle_now(&signed(registration("10.0.0.1:10911", 0), SECRET, now_ms()), peer);
        let (code, remark) = code_and_remark(h.handle_now(&delete_topic(None), peer));
        assert_eq!(code, ResponseCode::NO_PERMISSION.0, "{remark}");
        assert!(remark.starts_with("topic deletion refused") && remark.contains("not signed"), "{remark}");
        assert!(h.routes.route("T").is_some(), "an unsigned delete changes nothing");
        let wrong = signed(delete_topic(None), "another-secret-entirely-0123456", now_ms());
        assert_eq!(code_and_remark(h.handle_now(&wrong, peer)).0, ResponseCode::NO_PERMISSION.0);
        assert_eq!(code_and_remark(h.handle_now(&signed(delete_topic(None), SECRET, now_ms()), peer)).0, ResponseCode::SUCCESS.0);
        assert!(h.routes.route("T").is_none());
    }

    #[test]
    fn without_a_secret_a_delete_of_another_cluster_keeps_the_route() {
        let h = handler(None);
        h.handle_now(&registration("10.0.0.1:10911", 0), "p");
        assert_eq!(code_and_remark(h.handle_now(&delete_topic(Some("OtherCluster")), "p")).0, ResponseCode::SUCCESS.0);
        assert!(h.routes.route("T").is_some());
        assert_eq!(code_and_remark(h.handle_now(&delete_topic(Some("DefaultCluster")), "p")).0, ResponseCode::SUCCESS.0);
        assert!(h.routes.route("T").is_none());
        let (code, remark) = code_and_remark(h.handle_now(&RemotingCommand::request(RequestCode::DELETE_TOPIC_IN_NAMESRV, 5), "p"));
        assert_eq!(code, ResponseCode::SYSTEM_ERROR.0);
        assert!(remark.contains("topic"), "{remark}");
    }

    #[test]
    fn without_a_secret_registrations_stay_open() {
        let h = handler(None);
        let (code, _) = code_and_remark(h.handle_now(&registration("10.0.0.1:10911", 0), "10.0.0.9:1"));
        assert_eq!(code, ResponseCode::SUCCESS.0);
        assert_eq!(master_of(&h).as_deref(), Some("10.0.0.1:10911"));
    }

    #[test]
    fn the_refusal_log_is_rate_limited() {
        let l = RefusalLog::default();
        assert_eq!(l.allow(1_000), Some(0));
        assert_eq!(l.allow(1_001), None);
        assert_eq!(l.allow(1_000 + REFUSAL_LOG_INTERVAL.as_millis() as u64 - 1), None);
        assert_eq!(l.allow(1_000 + REFUSAL_LOG_INTERVAL.as_millis() as u64), Some(2));
    }
}
