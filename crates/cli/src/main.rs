//! The `raftmq` binary: one executable for every role and for quick manual use.
//!
//! `raftmq namesrv`, `raftmq broker --config FILE`, `raftmq admin …` (cluster status, leader, topics),
//! `raftmq produce`, `raftmq consume` and `raftmq bench produce|consume|e2e`. Logic lives in the library crates; this file parses arguments,
//! sets up logging and runs.
//!
//! TLS: the client subcommands (admin, produce, consume, bench) connect over TLS with the global `--tls`
//! and `--tls-ca-file` (`RAFTMQ_TLS`, `RAFTMQ_TLS_CA_FILE`); `raftmq namesrv --tls-server-mode …` serves TLS;
//! brokers take the `tls*` keys of their TOML file.

mod bench;
mod benchkit;
mod tools;

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

// mimalloc unless built with `--features system-alloc` (glibc malloc, for heap profilers such as heaptrack
// that interpose malloc; docs/benchmarks.md, "Overload").
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "raftmq", version, about = "Raft-replicated, RocketMQ-compatible message broker")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    auth: Auth,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

/// ACL credentials of the client commands (admin, produce, consume, bench): every request they send is
/// signed with them (RocketMQ plain ACL); `namesrv` and `broker` ignore them. The environment values are
/// never shown in `--help`.
#[derive(clap::Args)]
struct Auth {
    /// ACL access key (account) to sign client requests with; needs --secret-key.
    #[arg(long, global = true, env = "RAFTMQ_ACCESS_KEY", hide_env_values = true)]
    access_key: Option<String>,
    /// ACL secret key of --access-key.
    #[arg(long, global = true, env = "RAFTMQ_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
}

/// The credentials client commands sign with, set once in `main`.
static CREDENTIALS: OnceLock<Option<raftmq_client::Credentials>> = OnceLock::new();

/// The ACL credentials given on the command line or in the environment, if any.
pub(crate) fn credentials() -> Option<raftmq_client::Credentials> {
    CREDENTIALS.get().cloned().flatten()
}

impl Auth {
    fn credentials(self) -> Result<Option<raftmq_client::Credentials>> {
        match (self.access_key, self.secret_key) {
            (Some(ak), Some(sk)) => Ok(Some(raftmq_client::Credentials::new(ak, sk))),
            (None, None) => Ok(None),
            (Some(_), None) => anyhow::bail!("--access-key needs --secret-key (or RAFTMQ_SECRET_KEY)"),
            (None, Some(_)) => anyhow::bail!("--secret-key needs --access-key (or RAFTMQ_ACCESS_KEY)"),
        }
    }
}

/// TLS of the client subcommands' connections (to nameservers and brokers).
#[derive(clap::Args)]
struct ClientTlsArgs {
    /// Connect over TLS (RocketMQ `tls.enable`); needs `--tls-ca-file`.
    #[arg(long, global = true, env = "RAFTMQ_TLS")]
    tls: bool,
    /// PEM CA certificates that sign the servers' certificates (`tls.client.trustCertPath`).
    #[arg(long, global = true, env = "RAFTMQ_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,
    /// Name checked against the server certificates (default: the host of each address).
    #[arg(long, global = true, env = "RAFTMQ_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    /// Client certificate chain, for servers that require one (`tls.client.certPath`).
    #[arg(long, global = true, env = "RAFTMQ_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (`tls.client.keyPath`).
    #[arg(long, global = true, env = "RAFTMQ_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
}

impl ClientTlsArgs {
    fn load(&self) -> Result<Option<raftmq_net::ClientTls>> {
        if !self.tls {
            return Ok(None);
        }
        let Some(ca) = &self.tls_ca_file else {
            anyhow::bail!("--tls needs --tls-ca-file (the CA certificates that sign the servers' certificates)")
        };
        let opts = raftmq_net::ClientTlsOptions {
            trust_cert_path: Some(ca.clone()),
            server_name: self.tls_server_name.clone(),
            cert_path: self.tls_cert_file.clone(),
            key_path: self.tls_key_file.clone(),
        };
        Ok(Some(raftmq_net::ClientTls::load(&opts).context("TLS client settings")?))
    }
}

/// The cluster secret client subcommands sign raftmq's control requests with, from the file named by
/// `RAFTMQ_CLUSTER_SECRET_FILE` (the variable the nodes read too), set once before they run.
static CLUSTER_SECRETS: OnceLock<Option<raftmq_remoting::cluster_auth::ClusterSecrets>> = OnceLock::new();

/// Reads the cluster secret file for the client subcommands; none when `file` is `None`.
fn client_cluster_secrets(file: Option<&std::path::Path>) -> Result<Option<raftmq_remoting::cluster_auth::ClusterSecrets>> {
    let Some(file) = file else { return Ok(None) };
    let text = std::fs::read_to_string(file).with_context(|| format!("RAFTMQ_CLUSTER_SECRET_FILE {}", file.display()))?;
    raftmq_remoting::cluster_auth::ClusterSecrets::parse(&text)
        .map(Some)
        .map_err(|why| anyhow::anyhow!("RAFTMQ_CLUSTER_SECRET_FILE {}: {why}", file.display()))
}

/// The client subcommands' TLS, set once from the command line before they run.
static CLIENT_TLS: OnceLock<Option<raftmq_net::ClientTls>> = OnceLock::new();

/// Client settings for `namesrv` with the command line's TLS and ACL credentials.
pub(crate) fn client_config(namesrv: &str) -> raftmq_client::ClientConfig {
    let mut c = raftmq_client::ClientConfig::new(namesrv);
    c.tls = CLIENT_TLS.get().cloned().flatten();
    c.credentials = credentials();
    c.cluster_secrets = CLUSTER_SECRETS.get().cloned().flatten();
    c
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a nameserver.
    Namesrv {
        /// Address to listen on.
        #[arg(long, env = "RAFTMQ_NAMESRV_LISTEN", default_value = "0.0.0.0:9876")]
        listen: String,
        /// Log file (default: stderr).
        #[arg(long, env = "RAFTMQ_LOG_FILE")]
        log_file: Option<PathBuf>,
        #[command(flatten)]
        limits: NamesrvLimits,
        /// File holding the cluster secret (one per line, the signing one first; mode 0600): broker
        /// registrations must then be signed with it. The secret itself may instead be given in the
        /// environment variable RAFTMQ_CLUSTER_SECRET (never on the command line). Neither: registrations are
        /// unauthenticated.
        #[arg(long, env = "RAFTMQ_CLUSTER_SECRET_FILE")]
        cluster_secret_file: Option<PathBuf>,
        #[command(flatten)]
        tls: NamesrvTls,
        /// Serve Prometheus metrics at http://ADDR/metrics and the web console at http://ADDR/ (e.g.
        /// 127.0.0.1:9877); absent or empty: off.
        #[arg(long, env = "RAFTMQ_NAMESRV_METRICS_LISTEN")]
        metrics_listen: Option<String>,
    },
    /// Run a broker node.
    Broker {
        /// TOML configuration of this node.
        #[arg(long, env = "RAFTMQ_BROKER_CONFIG")]
        config: PathBuf,
        /// Overrides `storePathRootDir`.
        #[arg(long, env = "RAFTMQ_STORE_DIR")]
        store_dir: Option<PathBuf>,
        /// Overrides `namesrvAddr` (`;`-separated).
        #[arg(long, env = "RAFTMQ_NAMESRV_ADDR")]
        namesrv: Option<String>,
        /// Turns ACL on with this ACL file (sets `aclEnable = true` and `aclFile`).
        #[arg(long, env = "RAFTMQ_ACL_FILE")]
        acl_file: Option<PathBuf>,
        /// Log file (default: stderr).
        #[arg(long, env = "RAFTMQ_LOG_FILE")]
        log_file: Option<PathBuf>,
        /// Overrides `clusterSecretFile` (and `clusterSecret`).
        #[arg(long, env = "RAFTMQ_CLUSTER_SECRET_FILE")]
        cluster_secret_file: Option<PathBuf>,
    },
    /// Inspect and administer a cluster.
    Admin {
        /// Nameserver address.
        #[arg(long, env = "RAFTMQ_NAMESRV_ADDR", default_value = "127.0.0.1:9876")]
        namesrv: String,
        #[command(subcommand)]
        cmd: tools::AdminCmd,
    },
    /// Send test messages.
    Produce(tools::ProduceArgs),
    /// Consume messages and commit offsets.
    Consume(tools::ConsumeArgs),
    /// Benchmarks: produce, consume, end-to-end latency.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
}

/// The nameserver's connection limits (the broker's are keys of its TOML file).
#[derive(clap::Args)]
struct NamesrvLimits {
    /// Connections served at once; one more is accepted and closed at once.
    #[arg(long, env = "RAFTMQ_NAMESRV_CONNECTIONS_MAX", default_value_t = raftmq_net::server::CONNECTIONS_MAX_DEFAULT)]
    connections_max: usize,
    /// Requests of one connection in flight; past it that connection is not read.
    #[arg(long, env = "RAFTMQ_NAMESRV_CONN_INFLIGHT_REQUESTS_MAX", default_value_t = raftmq_net::server::CONN_INFLIGHT_REQUESTS_MAX_DEFAULT)]
    conn_inflight_requests_max: usize,
    /// Request bytes of one connection in flight (at least 16 MiB); past it that connection is not read.
    #[arg(long, env = "RAFTMQ_NAMESRV_CONN_INFLIGHT_BYTES_MAX", default_value_t = raftmq_net::server::CONN_INFLIGHT_BYTES_MAX_DEFAULT)]
    conn_inflight_bytes_max: usize,
    /// Request bytes of all connections in flight; past it reading pauses.
    #[arg(long, env = "RAFTMQ_NAMESRV_SERVER_INFLIGHT_BYTES_MAX", default_value_t = raftmq_net::server::SERVER_INFLIGHT_BYTES_MAX_DEFAULT)]
    server_inflight_bytes_max: usize,
    /// A connection idle this long (no frame, nothing in flight) is closed, ms.
    #[arg(long, env = "RAFTMQ_NAMESRV_CONN_IDLE_MS_MAX", default_value_t = raftmq_net::server::CONN_IDLE_MS_MAX_DEFAULT)]
    conn_idle_ms_max: u64,
}

/// The nameserver's TLS (the broker's are keys of its TOML file), RocketMQ's `tls.server.*` settings.
#[derive(clap::Args)]
struct NamesrvTls {
    /// `disabled` (plain only), `permissive` (TLS and plain on one port) or `enforcing` (TLS only).
    #[arg(long, env = "RAFTMQ_NAMESRV_TLS_SERVER_MODE", default_value = "disabled", value_parser = parse_tls_mode)]
    tls_server_mode: raftmq_net::TlsMode,
    /// PEM certificate chain, leaf first (`tls.server.certPath`).
    #[arg(long, env = "RAFTMQ_NAMESRV_TLS_SERVER_CERT_PATH")]
    tls_server_cert_path: Option<PathBuf>,
    /// PEM private key (`tls.server.keyPath`).
    #[arg(long, env = "RAFTMQ_NAMESRV_TLS_SERVER_KEY_PATH")]
    tls_server_key_path: Option<PathBuf>,
    /// PEM CA certificates that sign client certificates (`tls.server.trustCertPath`).
    #[arg(long, env = "RAFTMQ_NAMESRV_TLS_SERVER_TRUST_CERT_PATH")]
    tls_server_trust_cert_path: Option<PathBuf>,
    /// Clients must present a certificate signed by the trust file (`tls.server.need.client.auth`).
    #[arg(long, env = "RAFTMQ_NAMESRV_TLS_SERVER_NEED_CLIENT_AUTH")]
    tls_server_need_client_auth: bool,
    /// A TLS handshake not finished within this is abandoned, ms.
    #[arg(long, env = "RAFTMQ_NAMESRV_TLS_HANDSHAKE_TIMEOUT_MS", default_value_t = raftmq_net::tls::TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT)]
    tls_handshake_timeout_ms: u64,
    /// TLS handshakes running at once; a connection past it is closed at once.
    #[arg(long, env = "RAFTMQ_NAMESRV_TLS_HANDSHAKES_INFLIGHT_MAX", default_value_t = raftmq_net::tls::TLS_HANDSHAKES_INFLIGHT_MAX_DEFAULT)]
    tls_handshakes_inflight_max: usize,
    /// Largest certificate, key or trust file read, bytes.
    #[arg(long, env = "RAFTMQ_NAMESRV_TLS_CERT_FILE_BYTES_MAX", default_value_t = raftmq_net::tls::TLS_CERT_FILE_BYTES_MAX_DEFAULT)]
    tls_cert_file_bytes_max: u64,
    /// How often the certificate files are re-read for changes, ms (0: never).
    #[arg(long, env = "RAFTMQ_NAMESRV_TLS_RELOAD_INTERVAL_MS", default_value_t = raftmq_net::tls::TLS_RELOAD_INTERVAL_MS_DEFAULT)]
    tls_reload_interval_ms: u64,
}

fn parse_tls_mode(s: &str) -> Result<raftmq_net::TlsMode, String> {
    s.parse().map_err(|e: raftmq_net::TlsError| e.to_string())
}

impl NamesrvTls {
    fn options(&self) -> raftmq_net::ServerTlsOptions {
        raftmq_net::ServerTlsOptions {
            mode: self.tls_server_mode,
            cert_path: self.tls_server_cert_path.clone(),
            key_path: self.tls_server_key_path.clone(),
            trust_cert_path: self.tls_server_trust_cert_path.clone(),
            need_client_auth: self.tls_server_need_client_auth,
            handshake_timeout_ms: self.tls_handshake_timeout_ms,
            handshakes_inflight_max: self.tls_handshakes_inflight_max,
            cert_file_bytes_max: self.tls_cert_file_bytes_max,
            reload_interval_ms: self.tls_reload_interval_ms,
        }
    }
}

impl NamesrvLimits {
    fn options(&self) -> raftmq_net::ServerOptions {
        raftmq_net::ServerOptions {
            connections_max: self.connections_max,
            conn_inflight_requests_max: self.conn_inflight_requests_max,
            conn_inflight_bytes_max: self.conn_inflight_bytes_max,
            server_inflight_bytes_max: self.server_inflight_bytes_max,
            conn_idle_ms_max: self.conn_idle_ms_max,
            ..raftmq_net::ServerOptions::default()
        }
    }
}

fn init_logging(file: Option<&PathBuf>) -> Result<()> {
    let filter = EnvFilter::try_from_env("RAFTMQ_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    match file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            }
            let f =
                std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("open log {}", path.display()))?;
            builder.with_writer(std::sync::Mutex::new(f)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// The signal that asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopSignal {
    /// SIGTERM (systemd, `scripts/rolling-restart.sh`): a broker leaves the group gracefully first.
    Term,
    /// SIGINT (Ctrl-C, `scripts/cluster.sh down`): stop at once, cleanly.
    Int,
}

async fn stop_signal() -> StopSignal {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => StopSignal::Int,
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => StopSignal::Term,
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

/// Ends the process after a storage failure with [`raftmq_broker::exit_status`] (65 for damaged data, which a
/// restart cannot cure; 74 otherwise) and one error line naming the operation, the file and the OS error.
fn exit_store_failed(f: &raftmq_broker::StoreFailure, phase: &str) -> ! {
    let code = raftmq_broker::exit_status(f);
    tracing::error!(
        phase,
        op = %f.op,
        path = %f.path.display(),
        errno = f.errno.unwrap_or(0),
        kind = ?f.kind,
        disk_full = f.is_disk_full(),
        corrupt = f.is_corrupt(),
        exit_code = code,
        "store failed, exiting: {f}"
    );
    eprintln!("raftmq broker: store failed: {f}; exiting with status {code}");
    std::process::exit(code)
}

/// The nameserver's cluster secrets from `--cluster-secret-file` or `RAFTMQ_CLUSTER_SECRET` (not both); logs
/// whether registrations are authenticated.
fn namesrv_secrets(file: Option<&std::path::Path>, env: Option<String>) -> Result<Option<raftmq_remoting::cluster_auth::ClusterSecrets>> {
    let text = match (file, env) {
        (Some(_), Some(_)) => anyhow::bail!("give --cluster-secret-file or RAFTMQ_CLUSTER_SECRET, not both"),
        (None, None) => {
            tracing::warn!(
                "no cluster secret (--cluster-secret-file): broker registrations are unauthenticated; anyone who can \
                 reach this port can register a fake master (see docs/security.md)"
            );
            return Ok(None);
        }
        (Some(path), None) => {
            if let Some(w) = raftmq_broker::config::secret_file_mode_warning(path) {
                tracing::warn!("{w}");
            }
            std::fs::read_to_string(path).with_context(|| format!("read the cluster secret file {}", path.display()))?
        }
        (None, Some(text)) => text,
    };
    let secrets = raftmq_remoting::cluster_auth::ClusterSecrets::parse(&text).map_err(|why| anyhow::anyhow!("cluster secret: {why}"))?;
    tracing::info!(secrets = secrets.len(), "broker registrations must be signed with the cluster secret");
    Ok(Some(secrets))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Server roles ignore the credentials (a broker's ACL is its aclFile) and the client TLS flags (servers take
    // their TLS from their own flags and keys): a shell that exports RAFTMQ_ACCESS_KEY or RAFTMQ_TLS for its client
    // commands can still start nodes.
    if !matches!(cli.cmd, Cmd::Namesrv { .. } | Cmd::Broker { .. }) {
        let _ = CREDENTIALS.set(cli.auth.credentials()?);
        let _ = CLIENT_TLS.set(cli.tls.load()?);
        let _ = CLUSTER_SECRETS.set(client_cluster_secrets(std::env::var_os("RAFTMQ_CLUSTER_SECRET_FILE").map(PathBuf::from).as_deref())?);
    }
    match cli.cmd {
        Cmd::Namesrv { listen, log_file, limits, cluster_secret_file, tls, metrics_listen } => {
            init_logging(log_file.as_ref())?;
            let opts = raftmq_net::ServerOptions { tls: tls.options(), ..limits.options() };
            opts.validate().context("connection limits and TLS settings")?;
            let secrets = namesrv_secrets(cluster_secret_file.as_deref(), std::env::var("RAFTMQ_CLUSTER_SECRET").ok())?;
            let mut ns =
                raftmq_namesrv::NameServer::start_secured(&listen, opts, secrets).await.with_context(|| format!("listen on {listen}"))?;
            if let Some(m) = metrics_listen.as_deref().filter(|m| !m.is_empty()) {
                ns.serve_metrics(m).await.with_context(|| format!("metrics listen on {m}"))?;
            }
            shutdown_signal().await;
            tracing::info!("nameserver stopping");
            Ok(())
        }
        Cmd::Broker { config, store_dir, namesrv, acl_file, log_file, cluster_secret_file } => {
            init_logging(log_file.as_ref())?;
            let text = std::fs::read_to_string(&config).with_context(|| format!("read {}", config.display()))?;
            let mut cfg = raftmq_broker::config::BrokerConfig::from_toml(&text).with_context(|| format!("parse {}", config.display()))?;
            if let Some(d) = store_dir {
                cfg.store_path_root_dir = d;
            }
            if let Some(n) = namesrv {
                cfg.namesrv_addr = n;
            }
            if let Some(f) = cluster_secret_file {
                cfg.cluster_secret_file = Some(f);
                cfg.cluster_secret = None;
            }
            if let Some(f) = acl_file {
                cfg.acl_enable = true;
                cfg.acl_file = Some(f);
            }
            let broker = match raftmq_broker::Broker::start(cfg).await {
                Ok(b) => b,
                Err(raftmq_broker::BrokerError::Node(raftmq_broker::NodeError::Store(f))) => exit_store_failed(&f, "start"),
                Err(e) => return Err(e.into()),
            };
            tokio::select! {
                sig = stop_signal() => {
                    if sig == StopSignal::Term {
                        // Hand leadership over, move the route, drain stale-route clients (leave.rs). The signal
                        // handler stays installed, so a second signal ends this part early.
                        tracing::info!("SIGTERM: leaving the group before stopping (a second SIGTERM or a SIGINT stops at once)");
                        tokio::select! {
                            _ = broker.leave() => {}
                            _ = stop_signal() => tracing::warn!("second stop signal: stopping without finishing the hand-off and drain"),
                        }
                    }
                    tracing::info!("broker stopping");
                    if tokio::time::timeout(raftmq_broker::SHUTDOWN_MAX, broker.shutdown()).await.is_err() {
                        // Safe like a kill -9: acknowledged entries are on a quorum's disks, recovery runs at start.
                        tracing::warn!(max = ?raftmq_broker::SHUTDOWN_MAX, "shutdown did not finish in time; exiting anyway");
                    }
                    tracing::info!("broker stopped");
                    Ok(())
                }
                f = broker.failed() => {
                    // Stop answering clients and release what can be released, but never hang: the store is
                    // broken and a supervisor restarts the process.
                    let _ = tokio::time::timeout(raftmq_broker::SHUTDOWN_AFTER_FAILURE_MAX, broker.shutdown()).await;
                    exit_store_failed(&f, "run")
                }
            }
        }
        Cmd::Admin { namesrv, cmd } => tools::admin(&namesrv, cmd).await,
        Cmd::Produce(a) => tools::produce(a).await,
        Cmd::Consume(a) => tools::consume(a).await,
        Cmd::Bench { cmd } => bench::run(cmd).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed_and_the_nameserver_takes_its_limits() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["raftmq", "namesrv", "--connections-max", "5", "--conn-idle-ms-max", "1000"]).expect("parses");
        let Cmd::Namesrv { limits, tls, .. } = cli.cmd else { panic!("namesrv") };
        let opts = limits.options();
        assert_eq!((opts.connections_max, opts.conn_idle_ms_max), (5, 1000));
        assert_eq!(opts.conn_inflight_bytes_max, raftmq_net::server::CONN_INFLIGHT_BYTES_MAX_DEFAULT);
        opts.validate().expect("valid");
        assert_eq!(tls.options(), raftmq_net::ServerTlsOptions::default());
    }

    #[test]
    fn the_nameserver_takes_its_tls_settings_and_clients_take_global_tls_flags() {
        let cli = Cli::try_parse_from([
            "raftmq",
            "namesrv",
            "--tls-server-mode",
            "enforcing",
            "--tls-server-cert-path",
            "/s.pem",
            "--tls-server-key-path",
            "/s.key",
            "--tls-handshakes-inflight-max",
            "7",
        ])
        .expect("parses");
        let Cmd::Namesrv { tls, .. } = cli.cmd else { panic!("namesrv") };
        let t = tls.options();
        assert_eq!(
            (t.mode, t.cert_path.clone(), t.handshakes_inflight_max),
            (raftmq_net::TlsMode::Enforcing, Some(PathBuf::from("/s.pem")), 7)
        );
        t.validate().expect("valid");
        assert!(Cli::try_parse_from(["raftmq", "namesrv", "--tls-server-mode", "strict"]).is_err());
        // Global: accepted after the subcommand too.
        let cli = Cli::try_parse_from(["raftmq", "admin", "status", "--tls", "--tls-ca-file", "/ca.pem"]).expect("parses");
        assert!(cli.tls.tls);
        let err = cli.tls.load().unwrap_err();
        assert!(format!("{err:#}").contains("/ca.pem"), "a missing CA file is named: {err:#}");
        let cli = Cli::try_parse_from(["raftmq", "admin", "status", "--tls"]).expect("parses");
        assert!(cli.tls.load().unwrap_err().to_string().contains("--tls-ca-file"));
        let cli = Cli::try_parse_from(["raftmq", "admin", "status"]).expect("parses");
        assert!(cli.tls.load().expect("plain").is_none());
    }

    #[test]
    fn the_nameserver_secret_comes_from_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "namesrv-file-secret-0123456789\n").unwrap();
        assert_eq!(namesrv_secrets(Some(&file), None).unwrap().map(|s| s.len()), Some(1));
        assert_eq!(namesrv_secrets(None, Some("env-secret-0123456789,old-secret-0123456789".into())).unwrap().map(|s| s.len()), Some(2));
        assert!(namesrv_secrets(None, None).unwrap().is_none());
        assert!(namesrv_secrets(Some(&file), Some("env-secret-0123456789".into())).unwrap_err().to_string().contains("not both"));
        let e = namesrv_secrets(None, Some("tiny".into())).unwrap_err().to_string();
        assert!(e.contains("4 bytes") && !e.contains("tiny"), "{e}");
        let cli = Cli::try_parse_from(["raftmq", "namesrv", "--cluster-secret-file", "/etc/raftmq/cluster-secret"]).expect("parses");
        let Cmd::Namesrv { cluster_secret_file, .. } = cli.cmd else { panic!("namesrv") };
        assert_eq!(cluster_secret_file.as_deref(), Some(std::path::Path::new("/etc/raftmq/cluster-secret")));
    }

    #[test]
    fn every_client_command_takes_the_credentials_flags() {
        for args in [
            &["raftmq", "admin", "--access-key", "RocketMQ", "--secret-key", "12345678", "status"][..],
            &["raftmq", "produce", "--topic", "t", "--access-key", "RocketMQ", "--secret-key", "12345678"],
            &["raftmq", "consume", "--topic", "t", "--group", "g", "--access-key", "RocketMQ", "--secret-key", "12345678"],
            &["raftmq", "bench", "produce", "--topic", "t", "--access-key", "RocketMQ", "--secret-key", "12345678"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let c = cli.auth.credentials().expect("both given").expect("credentials");
            assert_eq!((c.access_key.as_str(), c.secret_key.as_str()), ("RocketMQ", "12345678"));
        }
        let cli = Cli::try_parse_from(["raftmq", "produce", "--topic", "t", "--access-key", "RocketMQ"]).expect("parses");
        let e = cli.auth.credentials().unwrap_err().to_string();
        assert!(e.contains("--access-key needs --secret-key"), "{e}");
    }
}
