//! Settings shared by every producer and consumer of one client instance (RocketMQ's `ClientConfig`).

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::Duration;

pub use raftmq_remoting::acl::Credentials;

/// Client instance settings. Producers and consumers with the same nameservers and instance name share one
/// instance (one connection per broker, one heartbeat and route-refresh task).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Nameserver addresses (`host:port`); the client fails over between them in order.
    pub namesrv_addrs: Vec<String>,
    /// Instance name; the client id is `ip@instance_name`. Defaults to the process id.
    pub instance_name: String,
    /// The IP reported in the client id and born-host field; detected when `None`.
    pub client_ip: Option<Ipv4Addr>,
    /// Deadline of one request to a nameserver or broker (sends use the producer's own budget).
    pub request_timeout: Duration,
    /// Deadline of a TCP connect.
    pub connect_timeout: Duration,
    /// How often routes are refreshed from the nameserver (RocketMQ's `pollNameServerInterval`, 30 s).
    pub poll_name_server_interval: Duration,
    /// How often every broker gets a heartbeat (`heartbeatBrokerInterval`, 30 s).
    pub heartbeat_broker_interval: Duration,
    /// ACL account: when set, every request (to brokers and nameservers) is signed as RocketMQ's
    /// `AclClientRPCHook` signs it. `Debug` never shows the secret.
    pub credentials: Option<Credentials>,
    /// TLS for every connection, to nameservers and brokers (RocketMQ's `tls.enable` with
    /// `tls.client.trustCertPath`); plain when `None`. Build it with [`raftmq_net::ClientTls::load`].
    pub tls: Option<raftmq_net::ClientTls>,
    /// The cluster secret (an operator's copy of the brokers' `clusterSecretFile`): raftmq's own control
    /// requests (node status, leader transfer, delay levels, membership) are signed with it instead of the ACL
    /// account. `Debug` never shows it.
    pub cluster_secrets: Option<raftmq_remoting::cluster_auth::ClusterSecrets>,
}

impl ClientConfig {
    /// Settings for the nameservers in `namesrv`, which may list several addresses separated by `;` (as
    /// RocketMQ's `namesrvAddr`) or `,`.
    pub fn new(namesrv: &str) -> ClientConfig {
        ClientConfig {
            namesrv_addrs: namesrv.split([';', ',']).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            instance_name: std::process::id().to_string(),
            client_ip: None,
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            poll_name_server_interval: Duration::from_secs(30),
            heartbeat_broker_interval: Duration::from_secs(30),
            credentials: None,
            tls: None,
            cluster_secrets: None,
        }
    }

    /// Signs every request with `credentials` (RocketMQ plain ACL).
    pub fn with_credentials(mut self, credentials: Credentials) -> ClientConfig {
        self.credentials = Some(credentials);
        self
    }

    /// Sets the instance name.
    pub fn with_instance_name(mut self, name: impl Into<String>) -> ClientConfig {
        self.instance_name = name.into();
        self
    }

    /// Connects over TLS with `tls`.
    pub fn with_tls(mut self, tls: raftmq_net::ClientTls) -> ClientConfig {
        self.tls = Some(tls);
        self
    }

    /// The IP this client reports: the configured one, else the local address of a route towards the first
    /// nameserver (no packet is sent), else 127.0.0.1.
    pub fn resolve_client_ip(&self) -> Ipv4Addr {
        if let Some(ip) = self.client_ip {
            return ip;
        }
        let probe = || -> Option<Ipv4Addr> {
            let s = UdpSocket::bind("0.0.0.0:0").ok()?;
            s.connect(self.namesrv_addrs.first()?).ok()?;
            match s.local_addr().ok()?.ip() {
                IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
                _ => None,
            }
        };
        probe().unwrap_or(Ipv4Addr::LOCALHOST)
    }

    /// `ip@instance_name`, as RocketMQ builds client ids.
    pub fn client_id(&self) -> String {
        format!("{}@{}", self.resolve_client_ip(), self.instance_name)
    }
}
