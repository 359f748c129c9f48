//! Checks of what deploying on real hosts relies on (cluster/systemd, cluster/etc, cluster/debian,
//! cluster/container, `[package.metadata.deb]` in crates/cli/Cargo.toml), without systemd running,
//! cargo-deb or a container engine:
//!
//! - `systemd-analyze verify` accepts both units (with ExecStart pointing at the built binary, which
//!   verify requires to exist); skipped, saying why, where systemd-analyze is missing.
//! - The units keep the exit-status contract: restart on failure, never after `EXIT_STORE_CORRUPT`, and
//!   a stop timeout longer than the broker's own `SHUTDOWN_MAX`.
//! - A broker stops on SIGTERM with status 0, well within `SHUTDOWN_MAX`.
//! - Every example configuration loads and validates, with its node id matching its file name and its
//!   store under /var/lib/raftmq (the only place the unit lets the broker write).
//! - Every file the Debian package metadata names exists; the maintainer scripts are executable.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// The repository root (this test runs as raftmq-cli's, in crates/cli).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Values of `key=` lines in a unit file, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines().filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=').map(|v| v.trim().to_string())).collect()
}

/// Runs `systemd-analyze verify` on copies of the units in `dir` (instances `instances`); returns the
/// combined output lines that mention the units' directory (warnings and errors about them), and whether
/// the command succeeded.
fn verify(dir: &Path, instances: &[&str]) -> (bool, Vec<String>) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(instances.iter().map(|i| dir.join(i)))
        .output()
        .expect("run systemd-analyze");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let dir_name = dir.to_string_lossy().to_string();
    let about_units = text.lines().filter(|l| l.contains(&dir_name) || l.contains("raftmq")).map(String::from).collect();
    (out.status.success(), about_units)
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    if Command::new("systemd-analyze").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("SKIPPED: systemd-analyze is not installed (Debian package systemd)");
        return;
    }
    let units = repo().join("cluster/systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["raftmq-namesrv.service", "raftmq-broker@.service"] {
        let text = read(&units.join(name));
        assert!(text.contains("ExecStart=/usr/bin/raftmq "), "{name} runs the packaged binary");
        // verify insists that ExecStart's binary exists: point it at the one Cargo built.
        std::fs::write(dir.path().join(name), text.replace("/usr/bin/raftmq", env!("CARGO_BIN_EXE_raftmq"))).expect("write unit");
    }
    let instances = ["raftmq-namesrv.service", "raftmq-broker@broker-a-n1.service"];
    let (ok, complaints) = verify(dir.path(), &instances);
    assert!(ok && complaints.is_empty(), "systemd-analyze verify: success={ok}\n{}", complaints.join("\n"));

    // The check sees a mistake: an unknown key is reported (as a warning, with success).
    let broken = read(&dir.path().join("raftmq-broker@.service")).replace("[Service]\n", "[Service]\nRestartPreventExitStatuz=65\n");
    std::fs::write(dir.path().join("raftmq-broker@.service"), broken).expect("write unit");
    let (_, complaints) = verify(dir.path(), &instances);
    assert!(complaints.iter().any(|l| l.contains("RestartPreventExitStatuz")), "a misspelt key goes unnoticed: {complaints:?}");
}

#[test]
fn the_units_restart_failed_nodes_except_those_with_damaged_data_and_outwait_the_shutdown() {
    let broker = read(&repo().join("cluster/systemd/raftmq-broker@.service"));
    assert_eq!(unit_values(&broker, "ExecStart"), ["/usr/bin/raftmq broker --config /etc/raftmq/%i.toml"]);
    assert_eq!(unit_values(&broker, "Restart"), ["on-failure"]);
    assert_eq!(unit_values(&broker, "User"), ["raftmq"]);
    let prevent = unit_values(&broker, "RestartPreventExitStatus").join(" ");
    let prevented: Vec<i32> = prevent.split_whitespace().map(|v| v.parse().expect("numeric status")).collect();
    assert!(prevented.contains(&raftmq_broker::EXIT_STORE_CORRUPT), "RestartPreventExitStatus={prevent}");
    assert!(!prevented.contains(&raftmq_broker::EXIT_STORE_FAILED), "a full disk must be retried: RestartPreventExitStatus={prevent}");
    let secs = |v: &str| v.strip_suffix('s').unwrap_or(v).parse::<u64>().unwrap_or_else(|_| panic!("seconds: {v}"));
    let stop = unit_values(&broker, "TimeoutStopSec");
    assert_eq!(stop.len(), 1, "TimeoutStopSec");
    let leave = raftmq_broker::leave::LEAVE_MAX_DEFAULT;
    assert!(
        secs(&stop[0]) > (leave + raftmq_broker::SHUTDOWN_MAX).as_secs(),
        "TimeoutStopSec={} within the SIGTERM leave ({leave:?}) and SHUTDOWN_MAX",
        stop[0]
    );
    // The broker writes its store under the state directory, which ProtectSystem=strict leaves writable.
    assert_eq!(unit_values(&broker, "ProtectSystem"), ["strict"]);
    assert_eq!(unit_values(&broker, "StateDirectory"), ["raftmq"]);
    let nofile: u64 = unit_values(&broker, "LimitNOFILE")[0].parse().expect("LimitNOFILE");
    assert!(nofile > raftmq_net::server::CONNECTIONS_MAX_DEFAULT as u64 + 1024, "LimitNOFILE={nofile} below connectionsMax");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stops_cleanly_on_sigterm_within_its_shutdown_limit() {
    let mut cluster = Cluster::start(1).await;
    let c = client(&cluster.node(1).client_addr).await.expect("broker reachable");
    for i in 0..50 {
        send(&c, "TopicStop", 0, format!("m{i}").as_bytes()).await.expect("send");
    }
    let (st, took) = cluster
        .terminate(1, raftmq_broker::SHUTDOWN_MAX + Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running after SIGTERM\n{}", cluster.log_tails(30)));
    println!("stopped in {took:?} with {st:?}");
    assert_eq!(st.code(), Some(0), "exit status after SIGTERM\n{}", cluster.log_tails(30));
    assert!(took < Duration::from_secs(5), "a clean stop took {took:?}");
    let log = read(&cluster.dir.path().join("n1.log"));
    assert!(log.contains("broker stopped"), "the shutdown finished rather than timing out\n{log}");
    // And comes back with everything.
    cluster.start_node(1);
    cluster.wait_registered_leader(Duration::from_secs(30)).await;
    let c = client(&cluster.node(1).client_addr).await.expect("broker reachable after restart");
    assert_eq!(pull_all(&c, "TopicStop", 0).await.len(), 50);
}

#[test]
fn the_example_configurations_load_and_describe_one_group_on_three_hosts() {
    let dir = repo().join("cluster/etc");
    let mut ids = Vec::new();
    for n in 1..=3u64 {
        let name = format!("broker-a-n{n}");
        let cfg = raftmq_broker::config::BrokerConfig::from_toml(&read(&dir.join(format!("{name}.toml")))).expect(&name);
        cfg.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(cfg.node_id, n, "{name}: nodeId matches the file name (the unit instance)");
        assert_eq!(cfg.store_path_root_dir, Path::new("/var/lib/raftmq").join(&name), "{name}: store under the unit's state directory");
        assert_eq!(cfg.bootstrap, n == 1, "{name}: exactly member 1 bootstraps");
        assert_eq!(cfg.namesrv_addrs().len(), 3, "{name}: every host's nameserver");
        ids.push(cfg.peers.iter().map(|p| (p.id, p.raft_addr.clone(), p.client_addr.clone())).collect::<Vec<_>>());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "the members list the same peers");
    let container = repo().join("cluster/container");
    for n in 1..=3u64 {
        let name = format!("broker-a-n{n}.toml");
        let cfg = raftmq_broker::config::BrokerConfig::from_toml(&read(&container.join(&name))).expect(&name);
        cfg.validate().unwrap_or_else(|e| panic!("container {name}: {e}"));
        assert_eq!(cfg.node_id, n, "container {name}");
        assert!(read(&container.join("compose.yaml")).contains(&format!("./{name}:/etc/raftmq/{name}")), "compose mounts {name}");
    }
}

#[test]
fn the_debian_package_metadata_names_files_that_exist() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest: toml::Value = toml::from_str(&read(&crate_dir.join("Cargo.toml"))).expect("Cargo.toml");
    let deb = &manifest["package"]["metadata"]["deb"];
    let scripts = crate_dir.join(deb["maintainer-scripts"].as_str().expect("maintainer-scripts"));
    for name in ["postinst", "prerm", "postrm"] {
        let meta = std::fs::metadata(scripts.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0, "{name} is executable");
    }
    let postinst = read(&scripts.join("postinst"));
    assert!(postinst.contains("adduser --system") && postinst.contains("/var/lib/raftmq"), "postinst creates the user and data dir");
    let assets = deb["assets"].as_array().expect("assets");
    let mut dests = Vec::new();
    for a in assets {
        let (src, dest) = (a[0].as_str().expect("source"), a[1].as_str().expect("dest"));
        dests.push(dest.to_string());
        if src == "target/release/raftmq" {
            continue; // cargo-deb builds it
        }
        assert!(crate_dir.join(src).is_file(), "asset {src} does not exist");
    }
    for want in ["usr/bin/", "lib/systemd/system/", "etc/raftmq/"] {
        assert!(dests.iter().any(|d| d == want), "nothing installed into {want}: {dests:?}");
    }
    // Every unit and every example configuration is packaged.
    for dir in ["cluster/systemd", "cluster/etc"] {
        for e in std::fs::read_dir(repo().join(dir)).expect("read dir") {
            let name = e.expect("entry").file_name().to_string_lossy().to_string();
            assert!(
                assets.iter().any(|a| a[0].as_str().is_some_and(|s| s.ends_with(&format!("{dir}/{name}")))),
                "{dir}/{name} not packaged"
            );
        }
    }
}
