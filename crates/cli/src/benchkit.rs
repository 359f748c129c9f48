//! Measurement pieces shared by `raftmq bench` and the side-by-side crate in `bench/` (which includes this
//! file by path, so that both read `/proc` and encode end-to-end bodies the same way; it needs only `std`,
//! `libc` and `hdrhistogram`):
//!
//! - CPU per message: user + system time of server processes from `/proc/PID/stat` (fields 14 and 15, in
//!   clock ticks of `sysconf(_SC_CLK_TCK)`), and of the load generator itself from `getrusage(RUSAGE_SELF)`,
//!   sampled at the start and the end of a case ([`CpuMeter`]);
//! - end-to-end latency: a 16-byte body header (sequence number, intended send time), a bounded bit set of
//!   sequence numbers, and [`E2eTracker`], which turns received bodies into produce-to-consume latencies and
//!   duplicate counts.

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// Most server processes one measurement follows (`--server-pids`); a bigger list is refused.
pub const SERVER_PIDS_MAX: usize = 64;

/// Most messages one end-to-end case may send (rate × duration): bounds the two sequence bit sets of a case
/// (acknowledged and received) to 2 × 6.25 MB.
pub const E2E_MESSAGES_MAX: u64 = 50_000_000;

/// Highest `--rate` of an end-to-end case (messages per second).
pub const E2E_RATE_MAX: u64 = 1_000_000;

/// Bytes of the end-to-end header at the start of each body: sequence number, then the intended send time in
/// nanoseconds since the epoch, both big-endian u64.
pub const E2E_HEADER: usize = 16;

/// utime + stime (clock ticks) from the text of `/proc/PID/stat`. Field 2, the command name, is in
/// parentheses and may itself contain spaces and parentheses, so the fields are counted from the *last* `)`.
pub fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let mut fields = rest.split_ascii_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// Clock ticks per second of `/proc/PID/stat` (`sysconf(_SC_CLK_TCK)`; 100 if the call fails).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// User + system CPU time a process has used so far (all its threads), from `/proc/PID/stat`.
pub fn process_cpu(pid: u32) -> io::Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = stat_ticks(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unparsable /proc/{pid}/stat")))?;
    let hz = clock_ticks_per_sec();
    Ok(Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz))
}

/// User + system CPU time this process (the load generator, all its threads) has used so far.
pub fn self_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given and has no other effect.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Parses a comma-separated list of process ids (`--server-pids 123,456`): positive, no repeats, at most
/// [`SERVER_PIDS_MAX`].
pub fn parse_pids(s: &str) -> Result<Vec<u32>, String> {
    let mut pids = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let pid: u32 = part.parse().map_err(|_| format!("{part:?} is not a process id"))?;
        if pid == 0 {
            return Err("process id 0".into());
        }
        if pids.contains(&pid) {
            return Err(format!("process id {pid} given twice"));
        }
        pids.push(pid);
    }
    if pids.len() > SERVER_PIDS_MAX {
        return Err(format!("{} process ids; at most {SERVER_PIDS_MAX}", pids.len()));
    }
    Ok(pids)
}

/// The broker processes of a `scripts/cluster.sh` data directory: every `DIR/pids/NAME.pid` except
/// `namesrv.pid`, as (NAME, pid) sorted by name, only those whose process is running.
pub fn broker_pids_in(data_dir: &Path) -> io::Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(data_dir.join("pids"))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".pid")) else { continue };
        if name == "namesrv" {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let Ok(pid) = text.trim().parse::<u32>() else { continue };
        if Path::new(&format!("/proc/{pid}/stat")).exists() {
            out.push((name.to_string(), pid));
        }
    }
    out.sort();
    if out.len() > SERVER_PIDS_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} broker pid files; at most {SERVER_PIDS_MAX}", out.len())));
    }
    Ok(out)
}

/// CPU used over one case, and per message.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuUse {
    /// Server CPU seconds (all followed processes); `None` when no process is followed or one could not be
    /// read at the start or the end (it exited or restarted: the difference would mean nothing).
    pub server_cpu_s: Option<f64>,
    /// Load generator CPU seconds.
    pub client_cpu_s: f64,
    /// Server CPU µs per message; `None` as `server_cpu_s`, or when no message counted.
    pub server_us_per_msg: Option<f64>,
    /// Load generator CPU µs per message; `None` when no message counted.
    pub client_us_per_msg: Option<f64>,
    /// Followed processes that could not be read (with the error), for the log.
    pub unreadable: Vec<(u32, String)>,
}

/// CPU times of the followed server processes and of this process at the start of a case.
pub struct CpuMeter {
    pids: Vec<u32>,
    server_start: Vec<io::Result<Duration>>,
    client_start: Duration,
}

impl CpuMeter {
    /// Samples now.
    pub fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter { pids: pids.to_vec(), server_start: pids.iter().map(|p| process_cpu(*p)).collect(), client_start: self_cpu() }
    }

    /// Samples again and divides the differences by `msgs`.
    pub fn finish(&self, msgs: u64) -> CpuUse {
        let client = self_cpu().saturating_sub(self.client_start).as_secs_f64();
        let mut unreadable = Vec::new();
        let mut server = Duration::ZERO;
        for (pid, start) in self.pids.iter().zip(&self.server_start) {
            match (start, process_cpu(*pid)) {
                (Ok(a), Ok(b)) => server += b.saturating_sub(*a),
                (Err(e), _) => unreadable.push((*pid, format!("at the start: {e}"))),
                (_, Err(e)) => unreadable.push((*pid, format!("at the end: {e}"))),
            }
        }
        let server_cpu_s = (!self.pids.is_empty() && unreadable.is_empty()).then_some(server.as_secs_f64());
        let per = |s: f64| (msgs > 0).then(|| s * 1e6 / msgs as f64);
        CpuUse {
            server_cpu_s,
            client_cpu_s: client,
            server_us_per_msg: server_cpu_s.and_then(per),
            client_us_per_msg: per(client),
            unreadable,
        }
    }
}

/// Nanoseconds since the epoch (the end-to-end stamps; producer and consumer share the host's clock).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Writes the end-to-end header into the first [`E2E_HEADER`] bytes of `body` (which must be that long).
pub fn e2e_stamp(body: &mut [u8], seq: u64, sent_ns: u64) {
    body[..8].copy_from_slice(&seq.to_be_bytes());
    body[8..E2E_HEADER].copy_from_slice(&sent_ns.to_be_bytes());
}

/// (sequence number, intended send time in ns) of a body, if it is long enough.
pub fn e2e_header(body: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(body.get(8..E2E_HEADER)?.try_into().ok()?);
    Some((seq, sent))
}

/// A set of sequence numbers below a fixed limit, as a bit set that grows up to `limit / 8` bytes.
#[derive(Debug, Clone)]
pub struct SeqSet {
    words: Vec<u64>,
    limit: u64,
    len: u64,
}

impl SeqSet {
    /// An empty set accepting `0..limit` (`limit` at most [`E2E_MESSAGES_MAX`]).
    pub fn new(limit: u64) -> SeqSet {
        SeqSet { words: Vec::new(), limit: limit.min(E2E_MESSAGES_MAX), len: 0 }
    }

    /// Adds `seq`: `Some(true)` if it was new, `Some(false)` if already present, `None` if out of range.
    pub fn insert(&mut self, seq: u64) -> Option<bool> {
        if seq >= self.limit {
            return None;
        }
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        let new = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.len += u64::from(new);
        Some(new)
    }

    /// Elements.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Elements of `self` missing from `other`.
    pub fn missing_from(&self, other: &SeqSet) -> u64 {
        self.words.iter().enumerate().map(|(i, w)| u64::from((w & !other.words.get(i).copied().unwrap_or(0)).count_ones())).sum()
    }
}

/// A latency histogram: 1 µs to 1 h at 3 significant digits (fixed size, about 200 KB).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

/// The consumer side of an end-to-end case: latencies (receive time minus intended send time, µs), the
/// sequence numbers received, duplicates, and bodies without a valid header.
pub struct E2eTracker {
    /// Produce-to-consume latency (µs) of every first reception.
    pub hist: Histogram<u64>,
    /// Sequence numbers received.
    pub received: SeqSet,
    /// Receptions of a sequence number already received.
    pub duplicates: u64,
    /// Bodies too short for the header, or with a sequence number out of range.
    pub foreign: u64,
    /// When the last new message arrived.
    pub last_new: Option<std::time::Instant>,
}

impl E2eTracker {
    /// A tracker for sequence numbers `0..messages`.
    pub fn new(messages: u64) -> E2eTracker {
        E2eTracker { hist: latency_histogram(), received: SeqSet::new(messages), duplicates: 0, foreign: 0, last_new: None }
    }

    /// Counts one received body at `now_ns`.
    pub fn on_body(&mut self, body: &[u8], now_ns: u64) {
        let Some((seq, sent)) = e2e_header(body) else {
            self.foreign += 1;
            return;
        };
        match self.received.insert(seq) {
            None => self.foreign += 1,
            Some(false) => self.duplicates += 1,
            Some(true) => {
                self.hist.saturating_record((now_ns.saturating_sub(sent) / 1000).max(1));
                self.last_new = Some(std::time::Instant::now());
            }
        }
    }
}

/// Reads one queue from `start` with long-polling pulls until `stop`, handing every message to `tracker`;
/// returns the failed pulls (each followed by a 50 ms pause). The e2e consumer of `raftmq bench e2e` and of
/// `bench-peers`.
pub async fn e2e_reader(
    pc: std::sync::Arc<raftmq_client::PullConsumer>,
    q: raftmq_client::MessageQueue,
    start: i64,
    batch: i32,
    tracker: std::sync::Arc<std::sync::Mutex<E2eTracker>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    let (mut next, mut failures) = (start, 0u64);
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        match pc.pull_blocking(&q, "*", next, batch, Duration::from_millis(500)).await {
            Ok(r) => {
                let now = now_ns();
                let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
                for m in &r.messages {
                    t.on_body(&m.body, now);
                }
                drop(t);
                next = next.max(r.next_begin_offset);
            }
            Err(_) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /proc/PID/stat line with `comm` as field 2 and utime/stime 1234/567.
    fn stat_line(comm: &str) -> String {
        format!("4242 ({comm}) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1234 567 0 0 20 0 9 0 12345 1000000 200 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0")
    }

    #[test]
    fn stat_ticks_counts_fields_from_the_last_parenthesis() {
        assert_eq!(stat_ticks(&stat_line("raftmq")), Some(1801));
        // Spaces and parentheses in the command name must not shift the fields.
        assert_eq!(stat_ticks(&stat_line("my (odd) name) 7 8 9")), Some(1801));
        assert_eq!(stat_ticks(&stat_line("a b")), Some(1801));
        assert_eq!(stat_ticks(&stat_line(")")), Some(1801));
    }

    #[test]
    fn stat_ticks_refuses_truncated_or_garbled_lines() {
        assert_eq!(stat_ticks("4242 (raftmq) S 1 2 3"), None);
        assert_eq!(stat_ticks("no parenthesis at all 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"), None);
        assert_eq!(stat_ticks(&stat_line("x").replace(" 1234 ", " -5 ")), None);
        assert_eq!(stat_ticks(""), None);
    }

    #[test]
    fn this_process_is_readable_and_its_cpu_grows() {
        let pid = std::process::id();
        let before = (process_cpu(pid).unwrap(), self_cpu());
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        }
        std::hint::black_box(x);
        assert!(self_cpu() > before.1);
        assert!(process_cpu(pid).unwrap() >= before.0);
        assert!(clock_ticks_per_sec() > 0);
    }

    #[test]
    fn meter_divides_by_messages_and_refuses_unreadable_processes() {
        let m = CpuMeter::start(&[std::process::id()]);
        let u = m.finish(1000);
        assert!(u.server_cpu_s.is_some() && u.server_us_per_msg.is_some() && u.client_us_per_msg.is_some());
        assert!(u.unreadable.is_empty());
        assert_eq!(m.finish(0).server_us_per_msg, None);
        assert_eq!(m.finish(0).client_us_per_msg, None);
        // No process followed: no server figure, the client one still.
        let u = CpuMeter::start(&[]).finish(10);
        assert_eq!(u.server_cpu_s, None);
        assert!(u.client_us_per_msg.is_some());
        // A process that does not exist (pid_max is at most 2^22).
        let u = CpuMeter::start(&[u32::MAX - 1]).finish(10);
        assert_eq!(u.server_cpu_s, None);
        assert_eq!(u.unreadable.len(), 1);
    }

    #[test]
    fn pid_lists_are_checked() {
        assert_eq!(parse_pids("12, 34,56"), Ok(vec![12, 34, 56]));
        assert_eq!(parse_pids(""), Ok(vec![]));
        assert!(parse_pids("12,x").is_err());
        assert!(parse_pids("0").is_err());
        assert!(parse_pids("7,7").is_err());
        let at_limit: Vec<String> = (1..=SERVER_PIDS_MAX as u32).map(|p| p.to_string()).collect();
        assert_eq!(parse_pids(&at_limit.join(",")).unwrap().len(), SERVER_PIDS_MAX);
        let over: Vec<String> = (1..=SERVER_PIDS_MAX as u32 + 1).map(|p| p.to_string()).collect();
        assert!(parse_pids(&over.join(",")).is_err());
    }

    #[test]
    fn broker_pid_files_skip_the_nameserver_and_dead_processes() {
        let dir = std::env::temp_dir().join(format!("benchkit-pids-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pids")).unwrap();
        let me = std::process::id();
        std::fs::write(dir.join("pids/n1.pid"), format!("{me}\n")).unwrap();
        std::fs::write(dir.join("pids/b-n2.pid"), format!("{me}\n")).unwrap();
        std::fs::write(dir.join("pids/namesrv.pid"), format!("{me}\n")).unwrap();
        std::fs::write(dir.join("pids/n3.pid"), format!("{}\n", u32::MAX - 1)).unwrap();
        let found = broker_pids_in(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.unwrap(), vec![("b-n2".to_string(), me), ("n1".to_string(), me)]);
    }

    #[test]
    fn seq_set_counts_news_duplicates_and_differences() {
        let mut a = SeqSet::new(1000);
        assert_eq!(a.insert(5), Some(true));
        assert_eq!(a.insert(5), Some(false));
        assert_eq!(a.insert(999), Some(true));
        assert_eq!(a.insert(1000), None);
        assert_eq!(a.len(), 2);
        assert_eq!(a.insert(999), Some(false));
        let mut b = SeqSet::new(1000);
        b.insert(5);
        assert_eq!(a.missing_from(&b), 1);
        assert_eq!(b.missing_from(&a), 0);
        assert_eq!(SeqSet::new(u64::MAX).insert(E2E_MESSAGES_MAX), None);
    }

    #[test]
    fn tracker_measures_from_the_stamp_and_counts_duplicates() {
        let mut t = E2eTracker::new(100);
        let mut body = vec![0u8; 32];
        e2e_stamp(&mut body, 7, 1_000_000_000);
        t.on_body(&body, 1_002_500_000);
        t.on_body(&body, 1_003_000_000);
        t.on_body(&[1, 2, 3], 0);
        e2e_stamp(&mut body, 100, 0);
        t.on_body(&body, 0);
        assert_eq!(t.received.len(), 1);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.foreign, 2);
        assert_eq!(t.hist.len(), 1);
        assert!(t.hist.equivalent(t.hist.max(), 2500), "{}", t.hist.max());
    }
}
