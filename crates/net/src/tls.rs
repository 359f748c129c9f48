//! TLS on the remoting ports with rustls (ring provider): RocketMQ's three server modes, certificate files
//! read with a size cap and reloaded when they change, and the client side (a trust file and the server
//! name to check).
//!
//! Modes, as RocketMQ's `tls.server.mode` (`TlsMode`): the server looks at the first byte a connection sends
//! (`NettyRemotingServer.TlsModeHandler`). A TLS connection opens with a handshake record, content type
//! 0x16 ([`TLS_HANDSHAKE_FIRST_BYTE`]); a RocketMQ frame opens with its big-endian length, whose first byte
//! is 0 for any frame under 16 MiB (and 0x16 only for a frame of at least 369 MiB, past every frame limit).
//! - `disabled`: plain only; a connection opening with 0x16 is closed;
//! - `permissive`: 0x16 → TLS handshake, anything else → plain, on the same port;
//! - `enforcing`: TLS only; a connection opening with anything else is closed.
//!
//! Certificates: a PEM chain (`certPath`) and a PEM private key (`keyPath`, PKCS#8, PKCS#1 or SEC1); with a
//! trust file (`trustCertPath`) clients may present certificates signed by it, and must when
//! `needClientAuth` is set (mutual TLS). [`ServerTls`] re-reads the files every `reload_interval_ms` and,
//! when their content changed, builds a new rustls configuration for new connections (open ones keep
//! theirs); a new set that does not load keeps the old configuration and logs an error.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tracing::{error, info};

/// First byte of a TLS connection: the content type of a handshake record.
pub const TLS_HANDSHAKE_FIRST_BYTE: u8 = 0x16;
/// Default [`ServerTlsOptions::handshake_timeout_ms`].
pub const TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default [`ServerTlsOptions::handshakes_inflight_max`].
pub const TLS_HANDSHAKES_INFLIGHT_MAX_DEFAULT: usize = 256;
/// Default [`ServerTlsOptions::cert_file_bytes_max`] (also the cap of a client's trust file).
pub const TLS_CERT_FILE_BYTES_MAX_DEFAULT: u64 = 1 << 20;
/// Default [`ServerTlsOptions::reload_interval_ms`].
pub const TLS_RELOAD_INTERVAL_MS_DEFAULT: u64 = 5_000;

/// RocketMQ's `TlsMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain connections only.
    #[default]
    Disabled,
    /// TLS and plain connections on one port, told apart by the first byte.
    Permissive,
    /// TLS connections only.
    Enforcing,
}

impl TlsMode {
    /// The name RocketMQ's `tls.server.mode` uses.
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Disabled => "disabled",
            TlsMode::Permissive => "permissive",
            TlsMode::Enforcing => "enforcing",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TlsMode {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s.to_ascii_lowercase().as_str() {
            "disabled" => Ok(TlsMode::Disabled),
            "permissive" => Ok(TlsMode::Permissive),
            "enforcing" => Ok(TlsMode::Enforcing),
            _ => Err(TlsError::Options(format!("TLS mode {s:?} is not one of disabled, permissive, enforcing"))),
        }
    }
}

/// TLS settings of a server (part of [`crate::ServerOptions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsOptions {
    /// Which connections are served.
    pub mode: TlsMode,
    /// PEM certificate chain, leaf first (RocketMQ's `tls.server.certPath`). Required unless disabled.
    pub cert_path: Option<PathBuf>,
    /// PEM private key (`tls.server.keyPath`). Required unless disabled.
    pub key_path: Option<PathBuf>,
    /// PEM certificates that sign client certificates (`tls.server.trustCertPath`); with it clients may
    /// authenticate with a certificate.
    pub trust_cert_path: Option<PathBuf>,
    /// Clients must present a certificate signed by `trust_cert_path` (`tls.server.need.client.auth` =
    /// `require`).
    pub need_client_auth: bool,
    /// A TLS handshake not finished within this is abandoned and its connection closed.
    pub handshake_timeout_ms: u64,
    /// TLS handshakes running at once; a connection past it is closed at once (handshakes cost CPU).
    pub handshakes_inflight_max: usize,
    /// Largest certificate, key or trust file read.
    pub cert_file_bytes_max: u64,
    /// How often the files are re-read for changes; 0 never re-reads them.
    pub reload_interval_ms: u64,
}

impl Default for ServerTlsOptions {
    fn default() -> Self {
        ServerTlsOptions {
            mode: TlsMode::Disabled,
            cert_path: None,
            key_path: None,
            trust_cert_path: None,
            need_client_auth: false,
            handshake_timeout_ms: TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT,
            handshakes_inflight_max: TLS_HANDSHAKES_INFLIGHT_MAX_DEFAULT,
            cert_file_bytes_max: TLS_CERT_FILE_BYTES_MAX_DEFAULT,
            reload_interval_ms: TLS_RELOAD_INTERVAL_MS_DEFAULT,
        }
    }
}

impl ServerTlsOptions {
    /// Checks the settings without reading the files.
    ///
    /// # Errors
    /// [`TlsError::Options`] naming the rule: certificate and key paths set unless disabled; client
    /// authentication needs a trust file; limits positive.
    pub fn validate(&self) -> Result<(), TlsError> {
        let bad = |why: &str| Err(TlsError::Options(why.to_string()));
        if self.mode != TlsMode::Disabled && (self.cert_path.is_none() || self.key_path.is_none()) {
            return Err(TlsError::Options(format!("TLS mode {} needs a certificate path and a key path", self.mode)));
        }
        if self.need_client_auth && self.trust_cert_path.is_none() {
            return bad("client authentication needs a trust certificate path");
        }
        if self.handshake_timeout_ms == 0 || self.handshakes_inflight_max == 0 || self.cert_file_bytes_max == 0 {
            return bad("TLS handshake timeout, handshakes in flight and certificate file bytes must be positive");
        }
        if self.handshakes_inflight_max > tokio::sync::Semaphore::MAX_PERMITS {
            return bad("TLS handshakes in flight too large");
        }
        Ok(())
    }
}

/// TLS set-up errors. None of them carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Settings that break a rule.
    #[error("TLS settings: {0}")]
    Options(String),
    /// A certificate, key or trust file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file larger than the cap.
    #[error("{path} is larger than {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        max: u64,
    },
    /// A file without the PEM item it should hold, or with a malformed one.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        what: String,
    },
    /// rustls refused the certificates or key (e.g. the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
    /// A server name that is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

/// The ring provider. rustls 0.23.48 deprecates it for lacking post-quantum key exchange (X25519MLKEM768),
/// which only its aws-lc-rs provider offers, and that one needs cmake and a C toolchain to build: classical
/// key exchange (X25519, P-256, P-384) is what RocketMQ's Java TLS offers too.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads `path` whole, refusing files larger than `max` bytes.
fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read { path: path.to_path_buf(), source };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > max {
        return Err(TlsError::TooLarge { path: path.to_path_buf(), max });
    }
    Ok(bytes)
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), what: format!("malformed PEM certificate ({e})") })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), what: "no PEM certificate (BEGIN CERTIFICATE) found".into() });
    }
    Ok(certs)
}

fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The parser's error text could quote a line of the file: say only what kind of failure it was.
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let what = match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PEM private key (PKCS#8, PKCS#1 or SEC1) found",
            _ => "malformed PEM private key",
        };
        TlsError::Pem { path: path.to_path_buf(), what: what.into() }
    })
}

fn root_store(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(path, pem)? {
        roots.add(cert).map_err(|e| TlsError::Pem { path: path.to_path_buf(), what: format!("unusable trust certificate ({e})") })?;
    }
    Ok(roots)
}

/// The bytes of a server's certificate files, as last read.
#[derive(Clone, PartialEq, Eq)]
struct ServerFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    trust: Option<Vec<u8>>,
}

impl ServerFiles {
    fn read(opts: &ServerTlsOptions) -> Result<ServerFiles, TlsError> {
        let missing = || TlsError::Options("TLS needs a certificate path and a key path".into());
        let max = opts.cert_file_bytes_max;
        Ok(ServerFiles {
            cert: read_capped(opts.cert_path.as_deref().ok_or_else(missing)?, max)?,
            key: read_capped(opts.key_path.as_deref().ok_or_else(missing)?, max)?,
            trust: opts.trust_cert_path.as_deref().map(|p| read_capped(p, max)).transpose()?,
        })
    }

    fn build(&self, opts: &ServerTlsOptions) -> Result<Arc<ServerConfig>, TlsError> {
        let (cert_path, key_path) = (opts.cert_path.as_deref().unwrap_or(Path::new("")), opts.key_path.as_deref().unwrap_or(Path::new("")));
        let chain = parse_certs(cert_path, &self.cert)?;
        let key = parse_key(key_path, &self.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match (&self.trust, opts.trust_cert_path.as_deref()) {
            (Some(pem), Some(path)) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(path, pem)?), provider());
                let verifier = if opts.need_client_auth { verifier } else { verifier.allow_unauthenticated() };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Config(e.to_string()))?)
            }
            _ => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(format!("{} with {}: {e}", cert_path.display(), key_path.display())))?;
        Ok(Arc::new(config))
    }
}

/// A server's TLS state: the configuration new connections get, reloaded from the files when they change.
pub struct ServerTls {
    opts: ServerTlsOptions,
    current: RwLock<(Arc<ServerConfig>, ServerFiles)>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("mode", &self.opts.mode).field("cert_path", &self.opts.cert_path).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks the files of `opts` (not for mode `disabled`).
    ///
    /// # Errors
    /// [`TlsError`] naming the file and what is wrong with it.
    pub fn load(opts: &ServerTlsOptions) -> Result<ServerTls, TlsError> {
        opts.validate()?;
        let files = ServerFiles::read(opts)?;
        let config = files.build(opts)?;
        Ok(ServerTls { opts: opts.clone(), current: RwLock::new((config, files)) })
    }

    /// The settings.
    pub fn options(&self) -> &ServerTlsOptions {
        &self.opts
    }

    /// The configuration for a new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()).0)
    }

    /// Re-reads the files; if their content changed, builds and installs a new configuration. `Ok(true)` when
    /// one was installed, `Ok(false)` when nothing changed.
    ///
    /// # Errors
    /// The new files do not load: the old configuration stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let files = ServerFiles::read(&self.opts)?;
        if self.current.read().unwrap_or_else(|e| e.into_inner()).1 == files {
            return Ok(false);
        }
        let config = files.build(&self.opts)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (config, files);
        Ok(true)
    }

    /// [`ServerTls::reload`] for the accept loop: logs the outcome; a failing set is logged once until it
    /// changes again (`last_error` remembers it).
    pub(crate) fn reload_logged(&self, last_error: &mut Option<String>) -> bool {
        match self.reload() {
            Ok(true) => {
                info!(cert = ?self.opts.cert_path, "TLS certificate files changed; new connections get the new certificate");
                *last_error = None;
                true
            }
            Ok(false) => false,
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    error!(error = %text, "TLS certificate files changed but do not load; keeping the previous certificate");
                    *last_error = Some(text);
                }
                false
            }
        }
    }
}

/// A client's TLS settings: whom to trust and which name to check. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for ClientTls {}

/// Options for building a [`ClientTls`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsOptions {
    /// PEM certificates of the CAs that sign the servers' certificates (RocketMQ's
    /// `tls.client.trustCertPath`). Required: there is no system trust store here.
    pub trust_cert_path: Option<PathBuf>,
    /// The name checked against the server's certificate; by default the host of the address connected to.
    pub server_name: Option<String>,
    /// A client certificate chain (`tls.client.certPath`) for servers that require one.
    pub cert_path: Option<PathBuf>,
    /// Its private key (`tls.client.keyPath`).
    pub key_path: Option<PathBuf>,
}

impl ClientTls {
    /// Reads the files of `opts` (each at most [`TLS_CERT_FILE_BYTES_MAX_DEFAULT`] bytes).
    ///
    /// # Errors
    /// [`TlsError`] naming the file and what is wrong with it.
    pub fn load(opts: &ClientTlsOptions) -> Result<ClientTls, TlsError> {
        let max = TLS_CERT_FILE_BYTES_MAX_DEFAULT;
        let trust =
            opts.trust_cert_path.as_deref().ok_or_else(|| TlsError::Options("TLS clients need a trust (CA) certificate file".into()))?;
        let roots = Arc::new(root_store(trust, &read_capped(trust, max)?)?);
        let verifier =
            WebPkiServerVerifier::builder_with_provider(roots, provider()).build().map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_webpki_verifier(verifier);
        let config = match (&opts.cert_path, &opts.key_path) {
            (Some(cert), Some(key)) => {
                let chain = parse_certs(cert, &read_capped(cert, max)?)?;
                let key_der = parse_key(key, &read_capped(key, max)?)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| TlsError::Config(e.to_string()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsError::Options("a client certificate needs both a certificate path and a key path".into())),
        };
        let server_name = opts.server_name.as_deref().map(parse_server_name).transpose()?;
        Ok(ClientTls { config: Arc::new(config), server_name })
    }

    /// The name to check for a connection to `addr` (`host:port`): the override, else the host.
    ///
    /// # Errors
    /// [`TlsError::ServerName`] when the host is neither a DNS name nor an IP address.
    pub fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>, TlsError> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let host = match addr.rsplit_once(':') {
            Some((h, _)) => h,
            None => addr,
        };
        parse_server_name(host.trim_start_matches('[').trim_end_matches(']'))
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
    }
}

fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_by_rocketmq_name() {
        for m in [TlsMode::Disabled, TlsMode::Permissive, TlsMode::Enforcing] {
            assert_eq!(m.name().parse::<TlsMode>().unwrap(), m);
        }
        assert_eq!("ENFORCING".parse::<TlsMode>().unwrap(), TlsMode::Enforcing);
        assert!(matches!("strict".parse::<TlsMode>(), Err(TlsError::Options(w)) if w.contains("strict")));
    }

    #[test]
    fn options_need_files_unless_disabled() {
        ServerTlsOptions::default().validate().expect("disabled needs nothing");
        let o = ServerTlsOptions { mode: TlsMode::Permissive, ..ServerTlsOptions::default() };
        assert!(matches!(o.validate(), Err(TlsError::Options(w)) if w.contains("certificate path")));
        let o = ServerTlsOptions { need_client_auth: true, ..ServerTlsOptions::default() };
        assert!(matches!(o.validate(), Err(TlsError::Options(w)) if w.contains("trust")));
        let o = ServerTlsOptions { handshakes_inflight_max: 0, ..ServerTlsOptions::default() };
        assert!(o.validate().is_err());
    }

    #[test]
    fn the_server_name_is_the_host_of_the_address_unless_overridden() {
        let dir = std::env::temp_dir().join(format!("raftmq-tls-name-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&ca).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        let t = ClientTls::load(&ClientTlsOptions { trust_cert_path: Some(dir.join("ca.pem")), ..Default::default() }).unwrap();
        assert_eq!(t.server_name_for("127.0.0.1:9876").unwrap(), ServerName::try_from("127.0.0.1").unwrap());
        assert_eq!(t.server_name_for("broker-1.example:10911").unwrap(), ServerName::try_from("broker-1.example").unwrap());
        assert_eq!(t.server_name_for("[::1]:10911").unwrap(), ServerName::try_from("::1").unwrap());
        assert!(matches!(t.server_name_for("bad name:1"), Err(TlsError::ServerName(_))));
        let t = ClientTls::load(&ClientTlsOptions {
            trust_cert_path: Some(dir.join("ca.pem")),
            server_name: Some("localhost".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.server_name_for("127.0.0.1:9876").unwrap(), ServerName::try_from("localhost").unwrap());
        std::fs::remove_dir_all(&dir).ok();
    }
}
