//! Network faults, applied inside the node namespaces: nftables rules in table `inet jepsen`, chain `input`
//! ("this node drops packets from these sources", Jepsen's grudge), random loss with `numgen`, and slow
//! links with `tc` (netem when the kernel has it, else a tbf rate limit).

use anyhow::Result;

use crate::cluster::{node_ip, run_in};

/// Node `id` drops every packet from `sources` (IPs).
pub fn drop_from(id: u8, sources: &[String]) -> Result<()> {
    if sources.is_empty() {
        return Ok(());
    }
    let set = format!("{{ {} }}", sources.join(", "));
    run_in(id, "nft", &["add", "rule", "inet", "jepsen", "input", "ip", "saddr", &set, "drop"])?;
    Ok(())
}

/// Node `id` drops `percent` % of the packets from `sources`, at random.
pub fn lose_from(id: u8, sources: &[String], percent: u8) -> Result<()> {
    let set = format!("{{ {} }}", sources.join(", "));
    let p = percent.min(100).to_string();
    run_in(id, "nft", &["add", "rule", "inet", "jepsen", "input", "ip", "saddr", &set, "numgen", "random", "mod", "100", "<", &p, "drop"])?;
    Ok(())
}

/// Removes every rule of node `id`.
pub fn heal(id: u8) -> Result<()> {
    run_in(id, "nft", &["flush", "chain", "inet", "jepsen", "input"])?;
    Ok(())
}

/// True when the kernel has the netem qdisc (probed on node `id`'s loopback).
pub fn netem_available(id: u8) -> bool {
    let ok = run_in(id, "tc", &["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]).is_ok();
    if ok {
        let _ = run_in(id, "tc", &["qdisc", "del", "dev", "lo", "root"]);
    }
    ok
}

/// Slows node `id`'s outgoing traffic: 50 ms ± 10 ms delay with netem, else a 256 kbit/s token bucket.
pub fn slow(id: u8, netem: bool) -> Result<String> {
    let _ = run_in(id, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
    if netem {
        run_in(id, "tc", &["qdisc", "add", "dev", "eth0", "root", "netem", "delay", "50ms", "10ms", "distribution", "normal"])?;
        Ok("netem delay 50ms 10ms".into())
    } else {
        run_in(id, "tc", &["qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "256kbit", "burst", "16kbit", "latency", "2s"])?;
        Ok("tbf rate 256kbit burst 16kbit latency 2s".into())
    }
}

/// Removes node `id`'s qdisc.
pub fn unslow(id: u8) {
    let _ = run_in(id, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
}

/// The IPs of `ids`.
pub fn ips(ids: &[u8]) -> Vec<String> {
    ids.iter().map(|i| node_ip(*i)).collect()
}
