//! The raftmq nameserver: a stateless route registry speaking RocketMQ remoting. Brokers register with
//! every nameserver (REGISTER_BROKER 103) at start, every 30 s and at once on a Raft role change; the
//! Raft leader of each group registers as brokerId 0. Clients ask for topic routes (105) and cluster
//! information (106). Several nameservers may run; they share nothing.

pub mod routes;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use raftmq_net::server::HandlerFuture;
use raftmq_net::{Conn, RemotingServer, RequestHandler, Response, ServerOptions};
use raftmq_remoting::body::{decode_json_body, encode_json_body, KvTable, RegisterBrokerBody};
use raftmq_remoting::frame::RemotingCommand;
use raftmq_remoting::header::{
    CommandHeader, GetRouteInfoRequestHeader, RegisterBrokerRequestHeader, RegisterBrokerResponseHeader, UnregisterBrokerRequestHeader,
};
use raftmq_remoting::{RequestCode, ResponseCode};
use serde::Serialize;
use tracing::{info, warn};

pub use routes::RouteTable;

/// How often expired brokers are looked for (RocketMQ: 5 s).
pub const SCAN_INTERVAL: Duration = Duration::from_secs(5);

/// A running nameserver.
pub struct NameServer {
    routes: Arc<RouteTable>,
    server: RemotingServer,
    scanner: tokio::task::JoinHandle<()>,
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
        let routes = Arc::new(RouteTable::default());
        let server = RemotingServer::bind(listen, Arc::new(Handler { routes: Arc::clone(&routes) }), opts).await?;
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
        Ok(NameServer { routes, server, scanner })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The route table.
    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.routes
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
    fn handle_now(&self, req: &RemotingCommand) -> Option<Response> {
        let code = req.request_code();
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
    fn handle(&self, _conn: Conn, req: RemotingCommand) -> HandlerFuture {
        let resp = self.handle_now(&req);
        let fut: Pin<Box<dyn Future<Output = Option<Response>> + Send>> = Box::pin(async move { resp });
        fut
    }
}
