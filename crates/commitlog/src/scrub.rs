//! Background scrub: after a start that trusted a recovery checkpoint, re-reads and CRC-verifies the records
//! recovery took without reading, at a bounded rate and at idle CPU and IO priority, and logs every failure
//! with the file and offset it names. It only reports (`Stats::scrub_errors`): a damaged record is refused
//! to readers anyway by the read-time check, and nothing a quorum may have acknowledged is dropped on the
//! scrub's word.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info};

use crate::CommitLogReader;

/// Longest sleep between two checks of the stop flag.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

/// Starts the scrub of records up to `upto` (the checkpoint's last index) at `bytes_per_sec`. It stops
/// early when `stop` is set.
pub(crate) fn spawn(reader: CommitLogReader, upto: u64, bytes_per_sec: u64, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("commitlog-scrub".into()).spawn(move || run(&reader, upto, bytes_per_sec, &stop))
}

fn run(reader: &CommitLogReader, upto: u64, bytes_per_sec: u64, stop: &AtomicBool) {
    lower_priority();
    let stats = reader.stats();
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut index = reader.state().first.unwrap_or(u64::MAX);
    while index <= upto && !stop.load(Ordering::Relaxed) {
        match reader.read(index) {
            Ok(Some(r)) => {
                bytes += r.len as u64;
                stats.scrubbed.fetch_add(1, Ordering::Relaxed);
            }
            // Purged meanwhile (go on from the new first record) or truncated (nothing left to check).
            Ok(None) => match reader.state().first {
                Some(first) if first > index => {
                    index = first;
                    continue;
                }
                _ => break,
            },
            Err(e) => {
                error!(error = %e, index, "scrub: a record the recovery checkpoint vouched for failed verification");
                stats.scrub_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        index += 1;
        // Stay at `bytes_per_sec` on average.
        let due = Duration::from_secs_f64(bytes as f64 / bytes_per_sec as f64);
        while !stop.load(Ordering::Relaxed) {
            let ahead = due.saturating_sub(started.elapsed());
            if ahead.is_zero() {
                break;
            }
            std::thread::sleep(ahead.min(SLEEP_SLICE));
        }
    }
    let (scrubbed, errors) = (stats.scrubbed.load(Ordering::Relaxed), stats.scrub_errors.load(Ordering::Relaxed));
    info!(scrubbed, errors, bytes, elapsed = ?started.elapsed(), stopped = stop.load(Ordering::Relaxed), "commitlog scrub finished");
    stats.scrub_done.store(true, Ordering::Release);
}

/// Nice 19 and the idle IO class for this thread. Best effort: where that is refused, the rate limit
/// alone keeps the scrub in the background.
fn lower_priority() {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: gettid, setpriority and ioprio_set take plain integers and affect only this thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT);
    }
}
