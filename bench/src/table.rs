//! `bench-peers table`: merges the per-system JSON files into one printed table, with raftmq's throughput
//! ratio to each peer for the same case and size, the server and client CPU per message, and (end-to-end rows)
//! lost and duplicated messages, and writes the merged rows as one JSON list.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::common::Row;

/// `bench-peers table` options.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Write the merged rows as a JSON list of {system, case, size, msgs_per_s, mb_per_s, p50_us, p99_us,
    /// p999_us, server_cpu_us_per_msg, client_cpu_us_per_msg, fsync_before_ack, e2e} objects.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Per-system JSON files written by the system subcommands (`--out`).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Systems whose label starts with this are raftmq; every other system is a peer.
const RAFTMQ: &str = "raftmq";

/// What "fsync before ack" means for the systems the script runs.
fn durability_note(system: &str, fsync: bool) -> String {
    let what = match (system, fsync) {
        (s, true) if s.starts_with(RAFTMQ) => "SYNC_FLUSH: ack after a quorum of the Raft group fdatasynced the entry (group commit)",
        (s, false) if s.starts_with(RAFTMQ) => "ASYNC_FLUSH: ack once a quorum has the entry in the page cache; fdatasync every 500 ms",
        (s, false) if s.starts_with("nats") => {
            "ack once the R3 quorum has it in memory / OS page cache; fsync every 2 min (no sync_interval: always)"
        }
        (s, true) if s.starts_with("nats") => "sync_interval: always (fsync per write)",
        (s, true) if s.starts_with("rabbitmq") => "quorum queue: confirm after a quorum fsynced its Raft WAL",
        (_, true) => "fsync before ack",
        (_, false) => "no fsync before ack",
    };
    let client = match system {
        s if s.contains("unbatched") => "; client auto-batching off: one request per send",
        s if s.starts_with(RAFTMQ) => "; client auto-batching on: sends queued behind busy requests go as one batch request",
        _ => "",
    };
    format!("{system}: {what}{client}")
}

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn micros(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| thousands(v as f64))
}

fn cpu(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

/// Renders the table (with ratio columns for every peer) and the durability legend.
pub fn render(rows: &[Row]) -> String {
    let mut peers: Vec<&str> = Vec::new();
    let mut systems: Vec<(&str, bool)> = Vec::new();
    let any_raftmq = rows.iter().any(|r| r.system.starts_with(RAFTMQ));
    for r in rows {
        if any_raftmq && !r.system.starts_with(RAFTMQ) && !peers.contains(&r.system.as_str()) {
            peers.push(&r.system);
        }
        if !systems.iter().any(|(s, _)| *s == r.system) {
            systems.push((&r.system, r.fsync_before_ack));
        }
    }
    let sys_w = rows.iter().map(|r| r.system.len()).max().unwrap_or(6).max(6);
    let case_w = rows.iter().map(|r| r.case.len()).max().unwrap_or(4).max(4);
    let mut header = format!(
        "{:<sys_w$}  {:<case_w$}  {:>5}  {:>9}  {:>7}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}  {:>8}  {:>9}",
        "system", "case", "size", "msgs/s", "MB/s", "p50 µs", "p99 µs", "p99.9 µs", "srv µs/msg", "cli µs/msg", "lost/dup", "fsync@ack"
    );
    for p in &peers {
        let _ = write!(header, "  {:>10}", format!("vs {p}"));
    }
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{}", "-".repeat(header.chars().count()));
    for r in rows {
        let _ = write!(
            out,
            "{:<sys_w$}  {:<case_w$}  {:>5}  {:>9}  {:>7.2}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}  {:>8}  {:>9}",
            r.system,
            r.case,
            r.size,
            thousands(r.msgs_per_s),
            r.mb_per_s,
            micros(r.p50_us),
            micros(r.p99_us),
            micros(r.p999_us),
            cpu(r.server_cpu_us_per_msg),
            cpu(r.client_cpu_us_per_msg),
            r.e2e.as_ref().map_or_else(|| "-".to_string(), |e| format!("{}/{}", e.lost, e.duplicates)),
            if r.fsync_before_ack { "yes" } else { "no" }
        );
        if r.system.starts_with(RAFTMQ) {
            for p in &peers {
                let peer = rows.iter().find(|x| x.system == *p && x.case == r.case && x.size == r.size);
                let cell = match peer {
                    Some(x) if x.msgs_per_s > 0.0 => format!("{:.2}x", r.msgs_per_s / x.msgs_per_s),
                    _ => "-".into(),
                };
                let _ = write!(out, "  {cell:>10}");
            }
        }
        out = out.trim_end().to_string();
        out.push('\n');
    }
    let _ = writeln!(out);
    let _ =
        writeln!(out, "size: message body bytes; µs: send-to-ack latency (e2e rows: produce-to-consume, from each message's due time);");
    let _ = writeln!(out, "vs PEER: raftmq msgs/s ÷ PEER msgs/s, same case and size (e2e rows: messages received per second).");
    let _ = writeln!(
        out,
        "srv/cli µs/msg: user + system CPU of the three server processes (/proc/PID/stat) / of the load generator (getrusage) over"
    );
    let _ = writeln!(out, "  the case, per message acknowledged (produce), read (consume) or received (e2e); - when not measured.");
    let _ = writeln!(out, "lost/dup (e2e rows): acknowledged messages never received / messages received twice.");
    for r in rows {
        if let Some(e) = r.e2e.as_ref().filter(|e| e.sent < e.planned) {
            let _ = writeln!(
                out,
                "  {} {}: sent {} of {} planned messages — the system fell behind the rate and sending stopped at twice the duration",
                r.system, r.case, e.sent, e.planned
            );
        }
    }
    let _ = writeln!(out, "fsync@ack: whether the message was fsynced before the ack —");
    for (s, fsync) in systems {
        let _ = writeln!(out, "  {}", durability_note(s, fsync));
    }
    out
}

/// Merges the files, prints the table and writes the JSON list.
pub fn run(o: Opts) -> Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    for f in &o.files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let mut part: Vec<Row> = serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        rows.append(&mut part);
    }
    if rows.is_empty() {
        bail!("no rows in {} file(s)", o.files.len());
    }
    print!("{}", render(&rows));
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?).with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON: {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, case: &str, size: usize, msgs: f64) -> Row {
        Row {
            system: system.into(),
            case: case.into(),
            size,
            msgs_per_s: msgs,
            mb_per_s: msgs * size as f64 / 1e6,
            p50_us: Some(1500),
            p99_us: Some(12_345),
            fsync_before_ack: system != "nats",
            p999_us: Some(23_456),
            server_cpu_us_per_msg: Some(41.25),
            client_cpu_us_per_msg: None,
            e2e: None,
        }
    }

    #[test]
    fn ratios_are_per_peer_case_and_size() {
        let rows = vec![
            row("raftmq-sync", "sync", 128, 1000.0),
            row("raftmq-sync", "pipelined 4x256", 1024, 30000.0),
            row("nats", "sync", 128, 2000.0),
            row("nats", "pipelined 4x256", 1024, 24000.0),
            row("rabbitmq", "sync", 128, 500.0),
        ];
        let t = render(&rows);
        let sync = t.lines().find(|l| l.starts_with("raftmq-sync") && l.contains(" sync ")).unwrap();
        let cells: Vec<&str> = sync.split_whitespace().collect();
        assert_eq!(cells[cells.len() - 2..], ["0.50x", "2.00x"], "{sync}");
        assert!(sync.contains("23,456") && sync.contains(" 41.2") && sync.contains("  -  "), "{sync}");
        let pipe = t.lines().find(|l| l.starts_with("raftmq-sync") && l.contains("pipelined")).unwrap();
        assert!(pipe.contains("1.25x") && pipe.trim_end().ends_with('-'), "{pipe}");
        assert!(t.contains("12,345"));
        assert!(t.contains("nats: ack once the R3 quorum"));
        let peers_only = render(&rows[2..]);
        assert!(!peers_only.contains("vs nats"), "{peers_only}");
    }

    #[test]
    fn rows_round_trip_through_json_with_the_documented_fields() {
        let r = row("rabbitmq", "consume", 128, 10_000.0);
        let v = serde_json::to_value(&r).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "case",
                "client_cpu_us_per_msg",
                "e2e",
                "fsync_before_ack",
                "mb_per_s",
                "msgs_per_s",
                "p50_us",
                "p999_us",
                "p99_us",
                "server_cpu_us_per_msg",
                "size",
                "system"
            ]
        );
        assert_eq!(serde_json::from_value::<Row>(v).unwrap(), r);
        // Files written before the CPU and e2e fields still load.
        let old = r#"[{"system":"nats","case":"sync","size":128,"msgs_per_s":1.0,"mb_per_s":0.0,"p50_us":1,"p99_us":2,"fsync_before_ack":false}]"#;
        let rows: Vec<Row> = serde_json::from_str(old).unwrap();
        assert_eq!((rows[0].p999_us, rows[0].server_cpu_us_per_msg, rows[0].e2e.is_none()), (None, None, true));
    }

    #[test]
    fn e2e_rows_show_lost_and_duplicates() {
        let mut r = row("raftmq-sync", "e2e 1000/s", 128, 999.0);
        r.e2e = Some(crate::common::E2eCounts {
            rate: 1000,
            planned: 3000,
            sent: 3000,
            acked: 3000,
            received: 2998,
            lost: 2,
            duplicates: 5,
            received_unacknowledged: 0,
            send_p99_us: Some(900),
        });
        let t = render(&[r.clone()]);
        let line = t.lines().find(|l| l.contains("e2e 1000/s")).unwrap();
        assert!(line.contains(" 2/5 "), "{line}");
        assert!(!t.contains("fell behind"), "{t}");
        if let Some(e) = r.e2e.as_mut() {
            e.sent = 2500;
        }
        assert!(render(&[r]).contains("raftmq-sync e2e 1000/s: sent 2500 of 3000 planned"));
    }
}
