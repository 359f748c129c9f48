//! A power-loss harness: a pass-through FUSE filesystem that, when the power is "cut", loses every write
//! that was not made durable, per file and per directory.
//!
//! `kill -9` keeps the page cache, so a crash test built on it cannot tell a missing fsync from a present
//! one. [`PowerFailFs::mount`] mounts `backing` at `mountpoint`; every operation goes straight to the
//! backing tree (reads, sizes, `mmap` and `SEEK_DATA` behave as usual), while an in-memory undo journal
//! keeps what each change replaced until the change is durable:
//!
//! - file contents and size: durable after `fsync`/`fdatasync` of the file (`msync(MS_SYNC)` of a shared
//!   mapping sends one); the old bytes of every page changed since are kept until then;
//! - directory entries (create, mkdir, symlink, unlink, rmdir, rename): durable after an fsync of the
//!   directory (both directories of a rename). Following lazyfs and the pessimistic reading of POSIX, an
//!   fsync of a new file does **not** make its name durable.
//!
//! [`PowerFailFs::cut_power`] then takes back, in the backing tree, everything not durable (contents
//! first, then directory operations newest first), ignores whatever arrives afterwards and unmounts. A
//! fresh mount over the same backing directory sees what a machine would see after the power came back.
//! Dropping the handle (or [`PowerFailFs::unmount`]) is a clean shutdown: everything stands.
//!
//! ```no_run
//! # fn main() -> Result<(), raftmq_powerfail::PowerFailError> {
//! use std::path::Path;
//! if let Err(why) = raftmq_powerfail::available() {
//!     eprintln!("skipped: {why}");
//!     return Ok(());
//! }
//! let fs = raftmq_powerfail::PowerFailFs::mount(Path::new("/var/tmp/backing"), Path::new("/var/tmp/mnt"))?;
//! // ... run the writer on /var/tmp/mnt, kill -9 it ...
//! let report = fs.cut_power()?;
//! assert!(report.failed.is_empty(), "{report:?}");
//! // ... mount again over /var/tmp/backing and check what survived ...
//! # Ok(()) }
//! ```
//!
//! Processes using the mount must be gone (killed) before the cut: the layer fails every request after it
//! with EIO, and the unmount waits for the last open file on the mount (at most [`Limits::unmount_wait_max`]).
//! Run the FUSE server in the test process (it is a thread) and the writers in children. Not modelled:
//! hard links (refused with EPERM), torn writes inside a page (a write is kept or lost whole), reordering
//! of writes within one file between two syncs (they are all lost together), extended attributes.
//!
//! The binary `raftmq-powerfail mount <backing> <mountpoint>` serves the same layer from its own process;
//! it reads `cut` or `unmount` from standard input.

#![deny(missing_docs)]

mod fs;
mod journal;

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use journal::STASH_DIR;

/// The layer's limits. Each is checked before a change is made; a change that would exceed one fails
/// with ENOSPC and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of saved old contents (plus 32 bytes of bookkeeping per saved page) held at once.
    pub undo_bytes_max: u64,
    /// Directory operations not yet made durable by a directory fsync, at once.
    pub dir_ops_max: usize,
    /// Open file and directory handles on the mount (EMFILE beyond it).
    pub handles_max: usize,
    /// How long an unmount waits for the last user of the mount to go away.
    pub unmount_wait_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { undo_bytes_max: 1 << 30, dir_ops_max: 1 << 20, handles_max: 65_536, unmount_wait_max: Duration::from_secs(10) }
    }
}

/// What a power cut took back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose contents or size went back to their last sync.
    pub files_rolled_back: usize,
    /// Bytes written back (or zeroed) in them.
    pub bytes_restored: u64,
    /// Directory operations taken back.
    pub dir_ops_undone: usize,
    /// Steps that could not be applied (the tree was not as the change had left it), one line each.
    pub failed: Vec<String>,
}

/// How much is not durable at the moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    /// Files with changes since their last sync.
    pub files: usize,
    /// Bytes the journal holds for them.
    pub undo_bytes: u64,
    /// Directory operations waiting for a directory fsync.
    pub dir_ops: usize,
}

/// Errors of the harness itself (the filesystem's own errors go to its callers as errno values).
#[derive(Debug, thiserror::Error)]
pub enum PowerFailError {
    /// The machine cannot mount FUSE filesystems here; says why.
    #[error("FUSE is not available: {0}")]
    Unavailable(String),
    /// A file operation of the harness failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error, with its kind.
        #[source]
        source: io::Error,
    },
    /// The FUSE server thread did not stop after the unmount: a process still uses the mount.
    #[error("mount {0} still busy after the unmount (a process holds a file on it open)")]
    Busy(PathBuf),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PowerFailError + 'a {
    move |source| PowerFailError::Io { op, path: path.to_path_buf(), source }
}

/// Whether a [`PowerFailFs`] can be mounted here; `Err` says why not (no `/dev/fuse`, not root and no
/// `fusermount3`). Tests skip with that reason.
pub fn available() -> Result<(), PowerFailError> {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Err(PowerFailError::Unavailable(format!("cannot open /dev/fuse: {e}")));
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && !fusermount3_found() {
        return Err(PowerFailError::Unavailable("not root, and no fusermount3 on PATH (Debian package fuse3)".into()));
    }
    Ok(())
}

fn fusermount3_found() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("fusermount3").is_file()))
}

/// A mounted power-loss layer. Dropping it unmounts cleanly (no power cut).
pub struct PowerFailFs {
    mountpoint: PathBuf,
    shared: Arc<Mutex<fs::Shared>>,
    thread: Option<JoinHandle<io::Result<()>>>,
    unmounter: Option<fuser::SessionUnmounter>,
    unmount_wait_max: Duration,
}

impl PowerFailFs {
    /// Mounts the layer over `backing` (an existing directory) at `mountpoint` (an existing, empty
    /// directory) with default [`Limits`]. Returns once the mount is in place.
    ///
    /// # Errors
    /// [`PowerFailError::Unavailable`] where FUSE cannot be used, `Io` when a directory is missing or the
    /// mount fails.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<PowerFailFs, PowerFailError> {
        Self::mount_with(backing, mountpoint, Limits::default())
    }

    /// [`PowerFailFs::mount`] with explicit limits.
    ///
    /// # Errors
    /// As [`PowerFailFs::mount`].
    pub fn mount_with(backing: &Path, mountpoint: &Path, limits: Limits) -> Result<PowerFailFs, PowerFailError> {
        available()?;
        let backing = backing.canonicalize().map_err(io_err("resolve", backing))?;
        let mnt = mountpoint.canonicalize().map_err(io_err("resolve", mountpoint))?;
        let shared = Arc::new(Mutex::new(fs::Shared::new(backing.clone(), limits).map_err(io_err("prepare", &backing))?));
        let layer = fs::PassThrough::new(Arc::clone(&shared));
        let options = [
            fuser::MountOption::FSName("raftmq-powerfail".into()),
            fuser::MountOption::Subtype("powerfail".into()),
            fuser::MountOption::RW,
        ];
        let mut session = fuser::Session::new(layer, &mnt, &options).map_err(io_err("mount", &mnt))?;
        let unmounter = session.unmount_callable();
        let thread = std::thread::Builder::new()
            .name("powerfail-fuse".into())
            .spawn(move || session.run())
            .map_err(io_err("spawn FUSE thread for", &mnt))?;
        Ok(PowerFailFs {
            mountpoint: mnt,
            shared,
            thread: Some(thread),
            unmounter: Some(unmounter),
            unmount_wait_max: limits.unmount_wait_max,
        })
    }

    /// Where the layer is mounted (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// What is not durable at the moment.
    pub fn pending(&self) -> Pending {
        fs::lock(&self.shared).pending()
    }

    /// Cuts the power and unmounts: [`PowerFailFs::cut`], then [`PowerFailFs::unmount`]. Kill the
    /// processes using the mount first.
    ///
    /// # Errors
    /// [`PowerFailError::Busy`] when the unmount does not complete because the mount is still in use
    /// (the rollback has happened all the same).
    pub fn cut_power(mut self) -> Result<CutReport, PowerFailError> {
        let report = self.cut();
        self.stop()?;
        Ok(report)
    }

    /// The moment of the power failure, for writers that live in this process and cannot be killed:
    /// every change not yet durable is taken back in the backing tree, and from now on every request to
    /// the mount fails with EIO (a sync after the cut fails, so nothing written before it can be
    /// acknowledged after it). The mount stays in place, so a writer still running creates no stray files
    /// under the mountpoint; stop it, then [`PowerFailFs::unmount`]. A second call returns an empty report.
    pub fn cut(&self) -> CutReport {
        fs::lock(&self.shared).cut()
    }

    /// Unmounts: after [`PowerFailFs::cut`] the backing tree stays as the cut left it; otherwise everything
    /// written stands, as after an orderly shutdown.
    ///
    /// # Errors
    /// [`PowerFailError::Busy`] as for [`PowerFailFs::cut_power`].
    pub fn unmount(mut self) -> Result<(), PowerFailError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), PowerFailError> {
        let Some(thread) = self.thread.take() else { return Ok(()) };
        // A lazy unmount detaches the tree at once; the connection ends when its last user is gone, and
        // then the session thread returns.
        if let Ok(c) = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 with a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if let Some(mut u) = self.unmounter.take() {
            let _ = u.unmount();
        }
        let deadline = Instant::now() + self.unmount_wait_max;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return Err(PowerFailError::Busy(self.mountpoint.clone()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = thread.join();
        fs::lock(&self.shared).finish();
        Ok(())
    }
}

impl Drop for PowerFailFs {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "powerfail unmount");
        }
    }
}
