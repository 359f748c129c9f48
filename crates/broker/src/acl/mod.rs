//! RocketMQ 4.x plain ACL on the broker's client port: accounts with access and secret keys, per-topic and
//! per-group permissions with defaults, `admin` accounts and remote-address white lists, read from a TOML
//! file that mirrors `plain_acl.yml` ([`AclFile`]), checked on every request before it is dispatched
//! ([`Acl::check`]) and reloaded when the file changes ([`AclHolder`], [`reload_loop`]).
//!
//! The check follows RocketMQ's `PlainPermissionManager.validate`: a remote address in the global white
//! list passes; otherwise the request must name an account (`AccessKey`); an address in that account's
//! white list passes; otherwise the `Signature` must verify ([`raftmq_remoting::acl`]) and the account
//! must hold the permissions the request code needs ([`rules`]). Secrets never leave this module: refusal
//! remarks and logs name the account, the resource and the missing permission only.
//!
//! - `address.rs`: white-list patterns.
//! - `rules.rs`: request code → needed permissions (the table the dispatch consults).

mod address;
pub mod rules;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use raftmq_remoting::acl::{verify, ACCESS_KEY, SIGNATURE};
use raftmq_remoting::frame::RemotingCommand;
use serde::Deserialize;
use tracing::{error, info};

pub use address::AddressPattern;
pub use rules::{rule, Rule};

use crate::topics::{retry_topic, RETRY_PREFIX};

/// Most accounts an ACL file may define.
pub const ACL_ACCOUNTS_MAX: usize = 1024;
/// Most topic plus group permission entries one account may list.
pub const ACL_PERMS_PER_ACCOUNT_MAX: usize = 4096;
/// Most white-list entries (after expanding `{a,b}` and comma lists) in the global list, and in one
/// account's `whiteRemoteAddress`.
pub const ACL_WHITELIST_ENTRIES_MAX: usize = 256;
/// Largest ACL file read, in bytes.
pub const ACL_FILE_BYTES_MAX: u64 = 1 << 20;
/// Longest access or secret key, in bytes.
pub const ACL_KEY_BYTES_MAX: usize = 256;
/// Keys must be longer than this many characters (RocketMQ's `ACCESS_KEY_MIN_LENGTH`/`SECRET_KEY_MIN_LENGTH`).
pub const ACL_KEY_CHARS_MIN_EXCLUSIVE: usize = 6;
/// How often the ACL file's modification time, size and content hash are compared with the loaded ones.
pub const ACL_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Ext field a follower adds when it forwards a request to the leader; it carries no authority and is left
/// out of the signed content so the leader can verify the original client's signature.
pub const FORWARDED_FIELD: &str = crate::processor::FORWARDED_FIELD;

/// A permission bit set, RocketMQ's `Permission` (DENY 1, ANY 2, PUB 4, SUB 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm(pub u8);

impl Perm {
    /// Refused whatever else is set.
    pub const DENY: Perm = Perm(1);
    /// Needed: PUB or SUB suffices.
    pub const ANY: Perm = Perm(2);
    /// Publish (send).
    pub const PUB: Perm = Perm(4);
    /// Subscribe (pull, offsets, heartbeats as a consumer).
    pub const SUB: Perm = Perm(8);

    /// Parses `DENY`, `PUB`, `SUB`, `PUB|SUB` or `SUB|PUB` (RocketMQ's spellings).
    pub fn parse(s: &str) -> Result<Perm, String> {
        match s.trim() {
            "DENY" => Ok(Perm::DENY),
            "PUB" => Ok(Perm::PUB),
            "SUB" => Ok(Perm::SUB),
            "PUB|SUB" | "SUB|PUB" => Ok(Perm(Perm::PUB.0 | Perm::SUB.0)),
            other => Err(format!("permission {other:?} is not DENY, PUB, SUB or PUB|SUB")),
        }
    }

    /// True when owning `self` grants `needed` (RocketMQ's `Permission.checkPermission`).
    pub fn grants(self, needed: Perm) -> bool {
        if self.0 & Perm::DENY.0 != 0 {
            return false;
        }
        if needed.0 & Perm::ANY.0 != 0 {
            return self.0 & (Perm::PUB.0 | Perm::SUB.0) != 0;
        }
        needed.0 & self.0 != 0
    }

    /// `PUB`, `SUB`, … for remarks.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "DENY",
            2 => "ANY",
            4 => "PUB",
            8 => "SUB",
            12 => "PUB|SUB",
            _ => "?",
        }
    }
}

/// The ACL file, `plain_acl.yml`'s keys in TOML (see docs/security.md for the mapping).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AclFile {
    /// `globalWhiteRemoteAddresses`: requests from these addresses pass without a signature.
    #[serde(default)]
    pub global_white_remote_addresses: Vec<String>,
    /// `accounts`.
    #[serde(default)]
    pub accounts: Vec<AccountFile>,
}

/// One account of the ACL file.
#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccountFile {
    /// `accessKey`.
    pub access_key: String,
    /// `secretKey`.
    pub secret_key: String,
    /// `whiteRemoteAddress`: requests naming this account from these addresses pass without a signature.
    #[serde(default)]
    pub white_remote_address: String,
    /// `admin`: may use admin-only request codes.
    #[serde(default)]
    pub admin: bool,
    /// `defaultTopicPerm` (DENY when absent, as RocketMQ).
    #[serde(default)]
    pub default_topic_perm: Option<String>,
    /// `defaultGroupPerm` (DENY when absent, as RocketMQ).
    #[serde(default)]
    pub default_group_perm: Option<String>,
    /// `topicPerms`: `topic=PERM` entries.
    #[serde(default)]
    pub topic_perms: Vec<String>,
    /// `groupPerms`: `group=PERM` entries.
    #[serde(default)]
    pub group_perms: Vec<String>,
}

impl std::fmt::Debug for AccountFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountFile").field("access_key", &self.access_key).field("secret_key", &"<redacted>").finish_non_exhaustive()
    }
}

/// A checked account.
struct Account {
    secret_key: String,
    white: AddressPattern,
    admin: bool,
    default_topic: Perm,
    default_group: Perm,
    /// Topic names and `%RETRY%group` names → permission; empty when the file lists none.
    perms: HashMap<String, Perm>,
}

/// A loaded ACL: what [`Acl::check`] consults.
pub struct Acl {
    global_white: AddressPattern,
    accounts: HashMap<String, Account>,
}

impl std::fmt::Debug for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acl").field("accounts", &self.accounts.len()).field("global_white", &self.global_white.len()).finish()
    }
}

/// Why an ACL file was not loaded. The text never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("cannot read ACL file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is larger than [`ACL_FILE_BYTES_MAX`].
    #[error("ACL file {path} is {bytes} bytes, more than {ACL_FILE_BYTES_MAX} (ACL_FILE_BYTES_MAX)")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// Not TOML of the expected shape. Only the position is reported: the parser's own message may quote
    /// the offending value, which may be a secret.
    #[error("ACL file {path} does not parse at line {line}, column {column} (the value is not shown: it may be a secret)")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// A rule of the file is broken.
    #[error("ACL file {path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (names accounts by access key, never by secret).
        why: String,
    },
}

impl Acl {
    /// Parses and checks an ACL file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Acl, AclError> {
        let file: AclFile = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            AclError::Syntax { path: path.into(), line, column }
        })?;
        Acl::from_file(&file).map_err(|why| AclError::Invalid { path: path.into(), why })
    }

    /// Checks an [`AclFile`] against the limits and RocketMQ's rules.
    pub fn from_file(file: &AclFile) -> Result<Acl, String> {
        let global_white = AddressPattern::parse_list(&file.global_white_remote_addresses, ACL_WHITELIST_ENTRIES_MAX)
            .map_err(|e| format!("globalWhiteRemoteAddresses: {e}"))?;
        if file.accounts.len() > ACL_ACCOUNTS_MAX {
            return Err(format!("{} accounts, more than {ACL_ACCOUNTS_MAX} (ACL_ACCOUNTS_MAX)", file.accounts.len()));
        }
        let mut accounts = HashMap::with_capacity(file.accounts.len());
        for (i, a) in file.accounts.iter().enumerate() {
            let ak = &a.access_key;
            let key_ok = |k: &str| k.chars().count() > ACL_KEY_CHARS_MIN_EXCLUSIVE && k.len() <= ACL_KEY_BYTES_MAX;
            if !key_ok(ak) {
                return Err(format!(
                    "account #{} accessKey must be {}..={ACL_KEY_BYTES_MAX} bytes long (longer than {ACL_KEY_CHARS_MIN_EXCLUSIVE} characters)",
                    i + 1,
                    ACL_KEY_CHARS_MIN_EXCLUSIVE + 1
                ));
            }
            if !key_ok(&a.secret_key) {
                return Err(format!(
                    "account {ak}: secretKey must be longer than {ACL_KEY_CHARS_MIN_EXCLUSIVE} characters and at most {ACL_KEY_BYTES_MAX} bytes"
                ));
            }
            let n = a.topic_perms.len() + a.group_perms.len();
            if n > ACL_PERMS_PER_ACCOUNT_MAX {
                return Err(format!(
                    "account {ak}: {n} permission entries, more than {ACL_PERMS_PER_ACCOUNT_MAX} (ACL_PERMS_PER_ACCOUNT_MAX)"
                ));
            }
            let perm = |s: &Option<String>, what: &str| match s {
                None => Ok(Perm::DENY),
                Some(s) => Perm::parse(s).map_err(|e| format!("account {ak}: {what}: {e}")),
            };
            let mut perms = HashMap::with_capacity(n);
            for (list, group) in [(&a.topic_perms, false), (&a.group_perms, true)] {
                for entry in list {
                    let Some((name, p)) = entry.split_once('=') else {
                        return Err(format!("account {ak}: permission entry {entry:?} is not NAME=PERM"));
                    };
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(format!("account {ak}: permission entry {entry:?} has no name"));
                    }
                    let p = Perm::parse(p).map_err(|e| format!("account {ak}: {entry:?}: {e}"))?;
                    perms.insert(if group { retry_topic(name) } else { name.to_string() }, p);
                }
            }
            let account = Account {
                secret_key: a.secret_key.clone(),
                white: AddressPattern::parse(&a.white_remote_address, ACL_WHITELIST_ENTRIES_MAX)
                    .map_err(|e| format!("account {ak}: whiteRemoteAddress: {e}"))?,
                admin: a.admin,
                default_topic: perm(&a.default_topic_perm, "defaultTopicPerm")?,
                default_group: perm(&a.default_group_perm, "defaultGroupPerm")?,
                perms,
            };
            if accounts.insert(ak.clone(), account).is_some() {
                return Err(format!("account {ak} is defined twice"));
            }
        }
        Ok(Acl { global_white, accounts })
    }

    /// Number of accounts.
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    /// The credentials of the account `req` names (its `AccessKey`), for a request the broker makes on
    /// that account's behalf (the leader probing a node it is asked to add). `None` for an unknown account.
    pub fn credentials_for(&self, req: &RemotingCommand) -> Option<raftmq_remoting::acl::Credentials> {
        let ak = req.ext_fields.get(ACCESS_KEY)?;
        let account = self.accounts.get(ak.as_str())?;
        Some(raftmq_remoting::acl::Credentials::new(ak.clone(), account.secret_key.clone()))
    }

    /// Ok when `req` from `remote` may be served; otherwise the refusal's remark (names the account, the
    /// resource and the missing permission; never a secret).
    pub fn check(&self, req: &RemotingCommand, remote: IpAddr) -> Result<(), String> {
        let code = req.request_code();
        let Some(rule) = rules::rule(code) else {
            return Err(format!("request code {code} has no ACL rule"));
        };
        if self.global_white.matches(remote) {
            return Ok(());
        }
        let Some(ak) = req.ext_fields.get(ACCESS_KEY) else {
            return Err(format!("ACL is on: request {code} from {remote} carries no AccessKey; sign requests with an account's keys"));
        };
        let shown = shorten(ak);
        let Some(account) = self.accounts.get(ak.as_str()) else {
            return Err(format!("no ACL account for accessKey={shown}"));
        };
        if account.white.matches(remote) {
            return Ok(());
        }
        let Some(sig) = req.ext_fields.get(SIGNATURE) else {
            return Err(format!("request {code} for accessKey={shown} carries no Signature"));
        };
        if !verify(&req.ext_fields, &req.body, &account.secret_key, sig, &[FORWARDED_FIELD, crate::forward::BORN_HOST_FIELD]) {
            return Err(format!(
                "check signature failed for accessKey={shown}: wrong secret key, or the request was changed after signing"
            ));
        }
        match rule {
            Rule::Signed => Ok(()),
            Rule::Admin if account.admin => Ok(()),
            Rule::Admin => Err(format!("request {code} needs an admin account, but accessKey={shown} is not admin")),
            Rule::Resources => {
                let needed = rules::resources(req).map_err(|e| format!("cannot authorise {code} for accessKey={shown}: {e}"))?;
                if account.perms.is_empty() && account.admin {
                    return Ok(());
                }
                for (resource, perm) in needed {
                    let group = resource.strip_prefix(RETRY_PREFIX);
                    let owned = account.perms.get(&resource).copied().unwrap_or(if group.is_some() {
                        account.default_group
                    } else {
                        account.default_topic
                    });
                    if !owned.grants(perm) {
                        let what = match group {
                            Some(g) => format!("group:{}", shorten(g)),
                            None => format!("topic:{}", shorten(&resource)),
                        };
                        return Err(format!("accessKey={shown} has no {} permission on {what} (it holds {})", perm.name(), owned.name()));
                    }
                }
                Ok(())
            }
        }
    }
}

/// A client-chosen name as shown in remarks and logs: at most 128 characters.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 128 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(128).collect::<String>())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, column)
}

/// What identifies a loaded file version: modification time, size and content hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    hash: u128,
}

fn read_file(path: &Path) -> Result<(String, Fingerprint), AclError> {
    let read = |source| AclError::Read { path: path.into(), source };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > ACL_FILE_BYTES_MAX {
        return Err(AclError::TooLarge { path: path.into(), bytes: meta.len() });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    if bytes.len() as u64 > ACL_FILE_BYTES_MAX {
        return Err(AclError::TooLarge { path: path.into(), bytes: bytes.len() as u64 });
    }
    let hash = xxhash_rust::xxh3::xxh3_128(&bytes);
    let text = String::from_utf8(bytes).map_err(|_| AclError::Invalid { path: path.into(), why: "the file is not UTF-8".into() })?;
    Ok((text, Fingerprint { modified: meta.modified().ok(), len: meta.len(), hash }))
}

/// The ACL in force on this node and the file it came from; [`reload_loop`] swaps in new versions.
pub struct AclHolder {
    path: PathBuf,
    current: RwLock<(Arc<Acl>, Fingerprint)>,
    /// The identity (modification time and size, `None` for a missing file) of the last version that
    /// failed to load, so that it is reported once, not at every poll.
    failed: std::sync::Mutex<Option<FileIdentity>>,
}

/// A file version's modification time and size; `None` when the file is missing.
type FileIdentity = Option<(Option<SystemTime>, u64)>;

impl std::fmt::Debug for AclHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclHolder").field("path", &self.path).field("acl", &self.acl()).finish()
    }
}

impl AclHolder {
    /// Loads `path`; an error stops the broker from starting.
    pub fn load(path: &Path) -> Result<AclHolder, AclError> {
        let (text, fp) = read_file(path)?;
        let acl = Acl::parse(&text, path)?;
        info!(file = %path.display(), accounts = acl.accounts(), "ACL loaded");
        Ok(AclHolder { path: path.into(), current: RwLock::new((Arc::new(acl), fp)), failed: std::sync::Mutex::new(None) })
    }

    /// The ACL in force.
    pub fn acl(&self) -> Arc<Acl> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()).0)
    }

    /// Re-reads the file when its modification time or size changed, and swaps the ACL in when its content
    /// did. Returns true when a new ACL took effect. A file that cannot be read or does not parse keeps
    /// the ACL in force and logs why (never a secret).
    pub fn reload_if_changed(&self) -> bool {
        let old = self.current.read().unwrap_or_else(|e| e.into_inner()).1;
        let ident: FileIdentity = std::fs::metadata(&self.path).ok().map(|m| (m.modified().ok(), m.len()));
        if ident == Some((old.modified, old.len)) {
            return false;
        }
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if *failed == Some(ident) {
            // The version that already failed to load: reported once.
            return false;
        }
        let loaded = read_file(&self.path).and_then(|(text, fp)| Ok((Acl::parse(&text, &self.path)?, fp)));
        match loaded {
            Ok((_, fp)) if fp.hash == old.hash => {
                *failed = None;
                self.current.write().unwrap_or_else(|e| e.into_inner()).1 = fp;
                false
            }
            Ok((acl, fp)) => {
                *failed = None;
                info!(file = %self.path.display(), accounts = acl.accounts(), "ACL file changed: new ACL in force");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(acl), fp);
                true
            }
            Err(e) => {
                error!(error = %e, "ACL file not reloaded; the previous ACL stays in force");
                *failed = Some(ident);
                false
            }
        }
    }
}

/// Polls the ACL file every [`ACL_RELOAD_INTERVAL`] and swaps in changed versions.
pub async fn reload_loop(holder: Arc<AclHolder>) {
    let mut tick = tokio::time::interval(ACL_RELOAD_INTERVAL);
    loop {
        tick.tick().await;
        let h = Arc::clone(&holder);
        // File reads are blocking; keep them off the request threads.
        let _ = tokio::task::spawn_blocking(move || h.reload_if_changed()).await;
    }
}

#[cfg(test)]
mod tests;
