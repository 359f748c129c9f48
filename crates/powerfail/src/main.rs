//! `raftmq-powerfail mount <backing> <mountpoint>`: serves the power-loss layer from its own process.
//!
//! Prints `mounted <mountpoint>` once the mount is in place, then reads commands from standard input:
//! `cut` cuts the power (prints `cut files=… bytes=… dir_ops=… failed=…` and exits), `pending` prints what
//! is not durable yet, `unmount` or the end of input unmounts cleanly. Exit codes: 0 done, 2 usage,
//! 3 FUSE unavailable, 1 any other failure. Kill the processes using the mount before `cut`.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use raftmq_powerfail::{available, PowerFailError, PowerFailFs};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, cmd, backing, mnt] = args.as_slice() else {
        eprintln!("usage: raftmq-powerfail mount <backing-dir> <mountpoint>");
        return ExitCode::from(2);
    };
    if cmd != "mount" {
        eprintln!("usage: raftmq-powerfail mount <backing-dir> <mountpoint>");
        return ExitCode::from(2);
    }
    if let Err(e) = available() {
        eprintln!("raftmq-powerfail: {e}");
        return ExitCode::from(3);
    }
    match run(Path::new(backing), Path::new(mnt)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftmq-powerfail: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(backing: &Path, mnt: &Path) -> Result<(), PowerFailError> {
    let fs = PowerFailFs::mount(backing, mnt)?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "mounted {}", fs.mountpoint().display()).and_then(|_| out.flush());
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "cut" => {
                let r = fs.cut_power()?;
                let _ = writeln!(
                    out,
                    "cut files={} bytes={} dir_ops={} failed={}",
                    r.files_rolled_back,
                    r.bytes_restored,
                    r.dir_ops_undone,
                    r.failed.len()
                );
                for f in &r.failed {
                    eprintln!("raftmq-powerfail: not taken back: {f}");
                }
                return Ok(());
            }
            "pending" => {
                let p = fs.pending();
                let _ = writeln!(out, "pending files={} undo_bytes={} dir_ops={}", p.files, p.undo_bytes, p.dir_ops);
                let _ = out.flush();
            }
            "unmount" => break,
            "" => {}
            other => eprintln!("raftmq-powerfail: unknown command {other:?} (cut, pending, unmount)"),
        }
    }
    fs.unmount()
}
