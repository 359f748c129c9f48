//! The undo journal: for everything written through the layer that is not durable yet, what it replaced.
//!
//! Two kinds of promise are tracked, as a Linux filesystem makes them (the pessimistic reading lazyfs
//! takes, not ext4's habit of committing everything in one journal transaction):
//!
//! - **File contents and size** become durable with an fsync or fdatasync of that file. Before the first
//!   change to a page since then, the page's old bytes are saved (an all-zero page only as a marker), and
//!   the size the file had then is kept; the file's sync drops its record.
//! - **Directory entries** (create, mkdir, symlink, unlink, rmdir, rename) become durable with an fsync of
//!   the directory holding them (both directories for a rename). An fsync of a file does not make its own
//!   name durable. A removed file or directory is moved to a stash directory in the backing tree instead
//!   of being deleted, so that undoing the removal can put it back with its contents; it is deleted for
//!   real once the removal is durable (or at a clean unmount).
//!
//! [`Journal::rollback`] is the power cut: file contents first (through descriptors, so renames do not
//! matter), then directory operations newest first. An entry is found through a descriptor of its
//! directory (one per directory with pending operations), so a later rename of that directory does not
//! lose it. Each step checks that the tree is as the operation left it and reports the steps it could
//! not apply instead of guessing. The journal never fsyncs the
//! backing files: the machine does not really lose power, so only the journal decides what survives.
//!
//! Called by the FUSE layer (`fs.rs`) under its lock; no FUSE types here.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use crate::{CutReport, Limits};

/// Granularity of saved file contents.
pub(crate) const PAGE: u64 = 4096;
/// Bookkeeping bytes charged per saved page on top of its contents, so zero-page markers count too.
const PAGE_OVERHEAD: u64 = 32;
/// Name of the stash directory in the backing root where removed inodes wait until their removal is
/// durable; the layer hides it, and a clean unmount or a cut empties and removes it.
pub const STASH_DIR: &str = ".powerfail-stash";

/// Identity of a backing file: `(st_dev, st_ino)`. Stable across renames.
pub(crate) type FileKey = (u64, u64);

/// The key of a backing file's metadata.
pub(crate) fn key_of(m: &fs::Metadata) -> FileKey {
    (m.dev(), m.ino())
}

/// The not yet durable changes to one file's contents.
struct FileUndo {
    /// A descriptor of the backing file (read-write), valid whatever its name is at the cut.
    file: Arc<File>,
    /// The size at the last sync (or when the layer first saw the file).
    durable_size: u64,
    /// Page number → its bytes at the last sync, clipped to `durable_size` (`None`: all zeros).
    pages: BTreeMap<u64, Option<Box<[u8]>>>,
}

/// A directory entry's place: a descriptor of its directory (valid whatever that directory is called by
/// the time of the cut) and its name in it.
#[derive(Debug, Clone)]
struct Place {
    dir: Arc<File>,
    name: OsString,
}

impl Place {
    /// A path that reaches the entry through the directory's descriptor.
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd())).join(&self.name)
    }
}

/// A directory change and how to take it back.
#[derive(Debug)]
enum DirOp {
    /// A file, directory or symlink appeared at `at` (undo: remove it, if it is still that inode).
    Created { at: Place, key: FileKey, is_dir: bool },
    /// `at` was removed; its inode waits at `stash` (undo: move it back).
    Removed { at: Place, stash: PathBuf },
    /// `from` was renamed to `to`; what `to` named before waits at `replaced` (undo: both moves back).
    Renamed { from: Place, to: Place, replaced: Option<PathBuf> },
}

struct DirEntryOp {
    op: DirOp,
    /// Directories whose fsync is still missing for this operation to be durable.
    pending: Vec<FileKey>,
}

/// Everything not yet durable. See the module doc.
pub(crate) struct Journal {
    root: PathBuf,
    limits: Limits,
    files: HashMap<FileKey, FileUndo>,
    dir_ops: Vec<DirEntryOp>,
    /// Descriptors of the directories that pending operations refer to.
    dir_fds: HashMap<FileKey, Arc<File>>,
    undo_bytes: u64,
    next_stash: u64,
}

fn enospc(what: &str) -> io::Error {
    warn!(what, "powerfail journal limit reached; refusing the operation");
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl Journal {
    /// A journal over the backing tree `root` (canonical). Creates the stash directory, emptying one a
    /// previous layer left behind (it never cut power, so its removals stand).
    pub fn new(root: PathBuf, limits: Limits) -> io::Result<Journal> {
        let stash = root.join(STASH_DIR);
        if stash.exists() {
            fs::remove_dir_all(&stash)?;
        }
        fs::create_dir(&stash)?;
        Ok(Journal { root, limits, files: HashMap::new(), dir_ops: Vec::new(), dir_fds: HashMap::new(), undo_bytes: 0, next_stash: 0 })
    }

    /// Saved bytes (contents plus per-page bookkeeping) at the moment.
    pub fn undo_bytes(&self) -> u64 {
        self.undo_bytes
    }

    /// Files with changes that are not durable.
    pub fn files_pending(&self) -> usize {
        self.files.len()
    }

    /// Directory operations that are not durable.
    pub fn dir_ops_pending(&self) -> usize {
        self.dir_ops.len()
    }

    fn record_for(&mut self, key: FileKey, file: &Arc<File>) -> io::Result<&mut FileUndo> {
        Ok(match self.files.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let durable_size = file.metadata()?.len();
                e.insert(FileUndo { file: Arc::clone(file), durable_size, pages: BTreeMap::new() })
            }
        })
    }

    /// Saves what `[offset, offset + len)` of the file holds before it is overwritten (a write, a punched
    /// hole). Fails with ENOSPC when the journal would exceed `undo_bytes_max`; then nothing may change.
    pub fn before_change(&mut self, key: FileKey, file: &Arc<File>, offset: u64, len: u64) -> io::Result<()> {
        let max = self.limits.undo_bytes_max;
        let used = self.undo_bytes;
        let rec = self.record_for(key, file)?;
        let end = offset.saturating_add(len).min(rec.durable_size);
        if offset >= end {
            return Ok(());
        }
        let first = offset / PAGE;
        let last = (end - 1) / PAGE;
        let missing: Vec<u64> = (first..=last).filter(|p| !rec.pages.contains_key(p)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let data = data_ranges(&rec.file, first * PAGE, (last + 1) * PAGE)?;
        let mut saved = Vec::with_capacity(missing.len());
        let mut cost = 0u64;
        for p in missing {
            let from = p * PAGE;
            let to = (from + PAGE).min(rec.durable_size);
            let bytes = if data.iter().any(|&(a, b)| a < to && b > from) {
                let mut buf = vec![0u8; (to - from) as usize];
                read_fully_at(&rec.file, &mut buf, from)?;
                if buf.iter().all(|&b| b == 0) {
                    None
                } else {
                    Some(buf.into_boxed_slice())
                }
            } else {
                None
            };
            cost += PAGE_OVERHEAD + bytes.as_ref().map_or(0, |b| b.len() as u64);
            if used + cost > max {
                return Err(enospc("undo_bytes_max"));
            }
            saved.push((p, bytes));
        }
        rec.pages.extend(saved);
        self.undo_bytes += cost;
        Ok(())
    }

    /// Records the size before a change of it (truncate, or an allocation that extends the file): a
    /// shrink saves the bytes it cuts off.
    pub fn before_resize(&mut self, key: FileKey, file: &Arc<File>, new_len: u64) -> io::Result<()> {
        let rec = self.record_for(key, file)?;
        let durable = rec.durable_size;
        if new_len < durable {
            // Whole pages, so the part of the first page below `new_len` is saved too.
            let from = new_len / PAGE * PAGE;
            self.before_change(key, file, from, durable - from)?;
        }
        Ok(())
    }

    /// An fsync or fdatasync of the file: its contents and size are durable.
    pub fn file_synced(&mut self, key: FileKey) {
        if let Some(rec) = self.files.remove(&key) {
            let cost: u64 = rec.pages.values().map(|b| PAGE_OVERHEAD + b.as_ref().map_or(0, |b| b.len() as u64)).sum();
            self.undo_bytes -= cost;
        }
    }

    /// Whether one more directory operation fits (`dir_ops_max`), with a descriptor at hand of each
    /// directory it touches (key, path); call before changing the tree.
    pub fn prepare_dir_op(&mut self, dirs: &[(FileKey, &Path)]) -> io::Result<()> {
        if self.dir_ops.len() >= self.limits.dir_ops_max {
            return Err(enospc("dir_ops_max"));
        }
        for (key, path) in dirs {
            if !self.dir_fds.contains_key(key) {
                let f = File::open(path)?;
                self.dir_fds.insert(*key, Arc::new(f));
            }
        }
        Ok(())
    }

    /// A fresh path in the stash for a removed file or directory (absolute).
    pub fn stash_path(&mut self) -> PathBuf {
        self.next_stash += 1;
        self.root.join(STASH_DIR).join(self.next_stash.to_string())
    }

    /// The place of `path` (absolute) in directory `dir`, prepared by [`Journal::prepare_dir_op`].
    fn place(&mut self, dir: FileKey, path: &Path) -> Option<Place> {
        let name = path.file_name()?.to_owned();
        let dir = match self.dir_fds.get(&dir) {
            Some(f) => Arc::clone(f),
            None => {
                // Not prepared (a bug of the caller): open it now.
                let f = Arc::new(File::open(path.parent()?).ok()?);
                self.dir_fds.insert(dir, Arc::clone(&f));
                f
            }
        };
        Some(Place { dir, name })
    }

    fn push(&mut self, op: Option<DirOp>, pending: Vec<FileKey>, what: &Path) {
        match op {
            Some(op) => self.dir_ops.push(DirEntryOp { op, pending }),
            None => warn!(path = %what.display(), "directory operation not journaled: no descriptor of its directory"),
        }
    }

    /// `path` (absolute) was created in directory `dir`.
    pub fn created(&mut self, dir: FileKey, path: &Path, key: FileKey, is_dir: bool) {
        let op = self.place(dir, path).map(|at| DirOp::Created { at, key, is_dir });
        self.push(op, vec![dir], path);
    }

    /// `path` (absolute) was removed from directory `dir` by moving it to `stash`.
    pub fn removed(&mut self, dir: FileKey, path: &Path, stash: &Path) {
        let op = self.place(dir, path).map(|at| DirOp::Removed { at, stash: stash.to_path_buf() });
        self.push(op, vec![dir], path);
    }

    /// `from` in `from_dir` was renamed to `to` in `to_dir`, the old `to` moved to `replaced`.
    pub fn renamed(&mut self, from_dir: FileKey, from: &Path, to_dir: FileKey, to: &Path, replaced: Option<&Path>) {
        let op = match (self.place(from_dir, from), self.place(to_dir, to)) {
            (Some(from), Some(to)) => Some(DirOp::Renamed { from, to, replaced: replaced.map(Path::to_path_buf) }),
            _ => None,
        };
        let mut pending = vec![from_dir];
        if to_dir != from_dir {
            pending.push(to_dir);
        }
        self.push(op, pending, from);
    }

    /// An fsync of directory `dir`: the operations on its entries are durable once no other directory
    /// they touch waits for its fsync. Removals that became durable delete their stashed inode.
    pub fn dir_synced(&mut self, dir: FileKey) {
        let mut kept = Vec::with_capacity(self.dir_ops.len());
        for mut e in std::mem::take(&mut self.dir_ops) {
            e.pending.retain(|d| *d != dir);
            if e.pending.is_empty() {
                self.finalize(e.op);
            } else {
                kept.push(e);
            }
        }
        self.dir_ops = kept;
        // Descriptors no pending operation refers to any more.
        self.dir_fds.retain(|_, f| Arc::strong_count(f) > 1);
    }

    fn finalize(&self, op: DirOp) {
        let stash = match op {
            DirOp::Removed { stash, .. } => stash,
            DirOp::Renamed { replaced: Some(r), .. } => r,
            _ => return,
        };
        remove_any(&stash);
    }

    /// A clean unmount: everything stands. Removals are carried out for real.
    pub fn commit_all(mut self) {
        for e in std::mem::take(&mut self.dir_ops) {
            self.finalize(e.op);
        }
        let _ = fs::remove_dir_all(self.root.join(STASH_DIR));
    }

    /// The power cut: takes back every change that is not durable. See the module doc.
    pub fn rollback(mut self) -> CutReport {
        let mut report = CutReport::default();
        for (key, rec) in std::mem::take(&mut self.files) {
            match restore_file(&rec) {
                Ok(bytes) => {
                    report.files_rolled_back += 1;
                    report.bytes_restored += bytes;
                }
                Err(e) => report.failed.push(format!("restore contents of inode {}: {e}", key.1)),
            }
        }
        for e in std::mem::take(&mut self.dir_ops).into_iter().rev() {
            match self.undo(&e.op) {
                Ok(()) => report.dir_ops_undone += 1,
                Err(why) => report.failed.push(format!("undo {:?}: {why}", e.op)),
            }
        }
        let _ = fs::remove_dir_all(self.root.join(STASH_DIR));
        for f in &report.failed {
            warn!(failure = %f, "power cut could not take back a change");
        }
        report
    }

    fn undo(&self, op: &DirOp) -> Result<(), String> {
        match op {
            DirOp::Created { at, key, is_dir } => {
                let p = at.path();
                let m = fs::symlink_metadata(&p).map_err(|e| format!("{:?}: {e}", at.name))?;
                if key_of(&m) != *key {
                    return Err(format!("{:?} is another inode now", at.name));
                }
                let r = if *is_dir { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                r.map_err(|e| format!("remove {:?}: {e}", at.name))
            }
            DirOp::Removed { at, stash } => move_back(stash, &at.path()),
            DirOp::Renamed { from, to, replaced } => {
                move_back(&to.path(), &from.path())?;
                match replaced {
                    Some(r) => move_back(r, &to.path()),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Renames `from` to `to` when `to` is free.
fn move_back(from: &Path, to: &Path) -> Result<(), String> {
    if fs::symlink_metadata(to).is_ok() {
        return Err(format!("{} exists", to.display()));
    }
    fs::rename(from, to).map_err(|e| format!("rename {} to {}: {e}", from.display(), to.display()))
}

fn remove_any(p: &Path) {
    let r = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(_) => return,
    };
    if let Err(e) = r {
        warn!(path = %p.display(), error = %e, "could not delete a stashed inode");
    }
}

/// Puts a file back as it was at its last sync; returns the bytes written back.
fn restore_file(rec: &FileUndo) -> io::Result<u64> {
    rec.file.set_len(rec.durable_size)?;
    let mut bytes = 0;
    let mut zeros: Option<(u64, u64)> = None;
    for (&p, saved) in &rec.pages {
        let from = p * PAGE;
        let to = (from + PAGE).min(rec.durable_size);
        if from >= to {
            continue;
        }
        match saved {
            Some(b) => {
                rec.file.write_all_at(&b[..(to - from) as usize], from)?;
                bytes += to - from;
            }
            None => {
                // Coalesce runs of zero pages into one hole.
                zeros = match zeros {
                    Some((a, b)) if b == from => Some((a, to)),
                    Some(run) => {
                        zero_range(&rec.file, run.0, run.1)?;
                        Some((from, to))
                    }
                    None => Some((from, to)),
                };
                bytes += to - from;
            }
        }
    }
    if let Some((a, b)) = zeros {
        zero_range(&rec.file, a, b)?;
    }
    Ok(bytes)
}

/// Makes `[from, to)` read as zeros: a punched hole, or written zeros where holes are unsupported.
fn zero_range(file: &File, from: u64, to: u64) -> io::Result<()> {
    // SAFETY: fallocate on a valid descriptor; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            from as libc::off_t,
            (to - from) as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let zeros = vec![0u8; (to - from) as usize];
    file.write_all_at(&zeros, from)
}

fn read_fully_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break, // past the end: zeros, as the buffer already holds
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The ranges of `[from, to)` that may hold data (SEEK_DATA / SEEK_HOLE); all of it where the backing
/// filesystem cannot tell. Holes read as zeros, so their pages are saved as markers without reading.
fn data_ranges(file: &File, from: u64, to: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        // SAFETY: lseek on a valid descriptor; the layer only uses positional IO on it.
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(out),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                    out.push((at, to));
                    Ok(out)
                }
                _ => Err(err),
            };
        }
        let data = (data as u64).max(at);
        if data >= to {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 { to } else { (hole as u64).clamp(data + 1, to) };
        out.push((data, hole));
        at = hole;
    }
    Ok(out)
}
