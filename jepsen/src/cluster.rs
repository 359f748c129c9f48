//! The test cluster: a bridge and one Linux network namespace per broker node, the nameserver in the root
//! namespace (where the harness and its clients run), the `raftmq` processes themselves (spawned inside
//! their namespaces, so their PIDs are the brokers' and can be killed or stopped), and cleanup that also
//! works after the harness itself crashed (every PID it started is recorded in a state file).
//!
//! Addresses: bridge `jepbr0` 10.99.0.254/24; node i in namespace `jep-n{i}` at 10.99.0.i (client port
//! 10911, Raft port 10912); nameserver 10.99.0.254:9876.
//!
//! These names are fixed, so two harnesses on one machine would tear down and take over each other's cluster
//! (a run's clients then read another cluster's queues: thousands of anomalies that are no broker's). A run
//! and `cleanup` therefore hold [`RunLock`] for their whole duration; a second one waits.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Where the harness keeps what cleanup needs (PIDs, faketime files).
pub const STATE_DIR: &str = "/run/raftmq-jepsen";
/// The lock file of [`RunLock`] (outside [`STATE_DIR`], which cleanup removes).
pub const LOCK_PATH: &str = "/run/raftmq-jepsen.lock";
/// The bridge in the root namespace.
pub const BRIDGE: &str = "jepbr0";
/// The root namespace's address on the bridge (harness, clients, nameserver).
pub const HOST_IP: &str = "10.99.0.254";
/// Client (RocketMQ) port of every broker node.
pub const CLIENT_PORT: u16 = 10911;
/// Raft port of every broker node.
pub const RAFT_PORT: u16 = 10912;
/// Nameserver port.
pub const NAMESRV_PORT: u16 = 9876;

/// An exclusive `flock` on [`LOCK_PATH`], held by a run (or a cleanup) until dropped. The file is opened
/// close-on-exec, so the brokers a run spawns do not inherit it.
pub struct RunLock {
    _file: fs::File,
}

impl RunLock {
    /// Takes the lock, waiting (with a message on stderr) while another harness holds it.
    pub fn acquire() -> Result<RunLock> {
        match RunLock::try_at(Path::new(LOCK_PATH))? {
            Ok(lock) => Ok(lock),
            Err(file) => {
                eprintln!("another raftmq-jepsen run or cleanup holds {LOCK_PATH}; waiting for it to finish");
                use std::os::fd::AsRawFd;
                // SAFETY: flock(2) on a descriptor we own; blocks until the other holder closes its descriptor.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                    bail!("flock {LOCK_PATH}: {}", std::io::Error::last_os_error());
                }
                Ok(RunLock { _file: file })
            }
        }
    }

    /// Tries to take the lock at `path` without waiting: `Ok(Err(file))` when another descriptor holds it.
    pub fn try_at(path: &Path) -> Result<std::result::Result<RunLock, fs::File>> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock {
                bail!("flock {}: {e}", path.display());
            }
            return Ok(Err(file));
        }
        Ok(Ok(RunLock { _file: file }))
    }
}

/// Runs a command and fails with its stderr when it does not succeed.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside node `id`'s namespace.
pub fn run_in(id: u8, program: &str, args: &[&str]) -> Result<String> {
    let ns = netns(id);
    let mut full = vec!["netns", "exec", ns.as_str(), program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// The namespace of node `id`.
pub fn netns(id: u8) -> String {
    format!("jep-n{id}")
}

/// Node `id`'s address.
pub fn node_ip(id: u8) -> String {
    format!("10.99.0.{id}")
}

/// Node `id`'s client address.
pub fn client_addr(id: u8) -> String {
    format!("{}:{CLIENT_PORT}", node_ip(id))
}

/// The nameserver address.
pub fn namesrv_addr() -> String {
    format!("{HOST_IP}:{NAMESRV_PORT}")
}

/// Creates the bridge, the namespaces with their veth pairs and addresses, and an empty nftables table with
/// an input chain in each namespace (where the network nemeses put their rules).
pub fn setup_network(nodes: u8) -> Result<()> {
    teardown_network(nodes);
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run("ip", &["addr", "add", &format!("{HOST_IP}/24"), "dev", BRIDGE])?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    for id in 1..=nodes {
        let (ns, veth) = (netns(id), format!("jep-v{id}"));
        run("ip", &["netns", "add", &ns])?;
        run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        run("ip", &["link", "set", &veth, "master", BRIDGE, "up"])?;
        run("ip", &["-n", &ns, "addr", "add", &format!("{}/24", node_ip(id)), "dev", "eth0"])?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        run_in(id, "nft", &["add", "table", "inet", "jepsen"])?;
        run_in(id, "nft", &["add", "chain", "inet", "jepsen", "input", "{ type filter hook input priority 0; policy accept; }"])?;
    }
    Ok(())
}

/// Removes every namespace, veth and the bridge this harness may have made; ignores what is already gone.
pub fn teardown_network(nodes: u8) {
    for id in 1..=nodes.max(5) {
        let _ = run("ip", &["netns", "del", &netns(id)]);
        let _ = run("ip", &["link", "del", &format!("jep-v{id}")]);
    }
    let _ = run("ip", &["link", "del", BRIDGE]);
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    pids: Vec<u32>,
    nodes: u8,
}

fn state_path() -> PathBuf {
    Path::new(STATE_DIR).join("state.json")
}

fn load_state() -> State {
    fs::read(state_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn save_state(s: &State) {
    let _ = fs::create_dir_all(STATE_DIR);
    if let Ok(b) = serde_json::to_vec(s) {
        let _ = fs::write(state_path(), b);
    }
}

fn record_pid(pid: u32, nodes: u8) {
    let mut s = load_state();
    s.pids.push(pid);
    s.nodes = s.nodes.max(nodes);
    save_state(&s);
}

/// Kills every process a harness recorded (only those PIDs, never by name), resumes stopped ones first so
/// they die, and removes the network and the faketime files. Safe to run at any time.
pub fn cleanup() {
    let s = load_state();
    for pid in &s.pids {
        // SAFETY: plain kill(2) calls on PIDs this harness started.
        unsafe {
            libc::kill(*pid as i32, libc::SIGCONT);
            libc::kill(*pid as i32, libc::SIGKILL);
        }
    }
    teardown_network(s.nodes.max(3));
    let _ = fs::remove_dir_all(STATE_DIR);
}

/// How the cluster is started.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Broker nodes (3).
    pub nodes: u8,
    /// The `raftmq` binary.
    pub bin: PathBuf,
    /// Logs and configs go here (`n{i}.log`, `namesrv.log`).
    pub log_dir: PathBuf,
    /// Broker data directories go here (`n{i}/`); must be on a real disk so fsync means something.
    pub data_dir: PathBuf,
    /// libfaketime, when the clock nemesis is on.
    pub faketime_lib: Option<PathBuf>,
    /// Extra TOML lines for every broker (e.g. unsafe test switches).
    pub broker_extra: String,
}

struct NodeProc {
    id: u8,
    child: Option<Child>,
    config: PathBuf,
}

/// A running cluster.
pub struct Cluster {
    spec: ClusterSpec,
    namesrv: Option<Child>,
    nodes: Vec<NodeProc>,
}

/// The faketime offset file of node `id`.
pub fn faketime_file(id: u8) -> PathBuf {
    Path::new(STATE_DIR).join(format!("n{id}.faketime"))
}

impl Cluster {
    /// Writes the configs and starts the nameserver and every broker node.
    pub fn start(spec: ClusterSpec) -> Result<Cluster> {
        fs::create_dir_all(&spec.log_dir)?;
        fs::create_dir_all(&spec.data_dir)?;
        fs::create_dir_all(STATE_DIR)?;
        let mut nodes = Vec::new();
        for id in 1..=spec.nodes {
            let mut toml = format!(
                "brokerName = \"broker-a\"\nnodeId = {id}\nnamesrvAddr = \"{}\"\nstorePathRootDir = \"{}\"\nbootstrap = {}\nmappedFileSizeCommitLog = 67108864\ndiskMaxUsedSpaceRatio = 0.99\n{}\n",
                namesrv_addr(),
                spec.data_dir.join(format!("n{id}")).display(),
                id == 1,
                spec.broker_extra
            );
            for p in 1..=spec.nodes {
                toml.push_str(&format!(
                    "[[peers]]\nid = {p}\nraftAddr = \"{}:{RAFT_PORT}\"\nclientAddr = \"{}\"\n",
                    node_ip(p),
                    client_addr(p)
                ));
            }
            let config = spec.log_dir.join(format!("n{id}.toml"));
            fs::write(&config, toml)?;
            fs::write(faketime_file(id), "+0\n")?;
            nodes.push(NodeProc { id, child: None, config });
        }
        let log = spec.log_dir.join("namesrv.log");
        let namesrv = Command::new(&spec.bin)
            .args(["namesrv", "--listen", &namesrv_addr(), "--log-file"])
            .arg(log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn_dying_with_parent()
            .context("spawn nameserver")?;
        record_pid(namesrv.id(), spec.nodes);
        let mut c = Cluster { spec, namesrv: Some(namesrv), nodes };
        for id in 1..=c.spec.nodes {
            c.start_node(id)?;
        }
        Ok(c)
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u8> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Starts (or restarts) node `id` on its existing data directory.
    pub fn start_node(&mut self, id: u8) -> Result<()> {
        let spec = self.spec.clone();
        let node = self.nodes.iter_mut().find(|n| n.id == id).context("no such node")?;
        if node.child.is_some() {
            return Ok(());
        }
        let log = spec.log_dir.join(format!("n{id}.log"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns(id)]).arg(&spec.bin).args(["broker", "--config"]).arg(&node.config).arg("--log-file").arg(log);
        if let Some(lib) = &spec.faketime_lib {
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME_TIMESTAMP_FILE", faketime_file(id))
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child =
            cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn_dying_with_parent().with_context(|| format!("spawn node {id}"))?;
        record_pid(child.id(), spec.nodes);
        node.child = Some(child);
        Ok(())
    }

    fn pid(&self, id: u8) -> Option<i32> {
        self.nodes.iter().find(|n| n.id == id).and_then(|n| n.child.as_ref()).map(|c| c.id() as i32)
    }

    /// True when node `id` has a process (running or stopped).
    pub fn is_up(&self, id: u8) -> bool {
        self.pid(id).is_some()
    }

    /// SIGKILL: no shutdown path runs. The node stays down until [`Cluster::start_node`].
    pub fn kill(&mut self, id: u8) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.id == id) {
            if let Some(mut c) = n.child.take() {
                // A stopped process must be continued to die promptly and release its ports.
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// SIGTERM: the broker leaves the group gracefully (a leader hands leadership over, the node drains
    /// stale-route clients; crates/broker/src/leave.rs) and exits by itself. Returns the process to wait for
    /// (outside the cluster lock); the node counts as down from now on.
    pub fn terminate(&mut self, id: u8) -> Option<std::process::Child> {
        let n = self.nodes.iter_mut().find(|n| n.id == id)?;
        let c = n.child.take()?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        Some(c)
    }

    /// SIGSTOP.
    pub fn pause(&self, id: u8) {
        if let Some(pid) = self.pid(id) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
    }

    /// SIGCONT.
    pub fn resume(&self, id: u8) {
        if let Some(pid) = self.pid(id) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }

    /// Stops everything (SIGKILL), nameserver included.
    pub fn stop_all(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
        if let Some(mut n) = self.namesrv.take() {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// `Command::spawn` with `PR_SET_PDEATHSIG = SIGKILL`, so nodes die with the harness. The signal follows the
/// *thread* that spawned the child, so spawn only from the main thread or runtime workers (never from
/// `spawn_blocking` threads, which exit when idle).
trait SpawnDyingWithParent {
    fn spawn_dying_with_parent(&mut self) -> std::io::Result<Child>;
}

impl SpawnDyingWithParent for Command {
    fn spawn_dying_with_parent(&mut self) -> std::io::Result<Child> {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            self.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.spawn()
    }
}

/// Waits until `f` returns true, polling every 100 ms, for at most `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_lock_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = RunLock::try_at(&path).unwrap().expect("a free lock is taken");
        assert!(RunLock::try_at(&path).unwrap().is_err(), "a held lock is refused");
        drop(first);
        assert!(RunLock::try_at(&path).unwrap().is_ok(), "a released lock is free again");
    }
}
