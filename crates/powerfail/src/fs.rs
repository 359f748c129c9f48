//! The FUSE side of the layer: a pass-through of every request to the backing tree, with each change
//! reported to the undo journal (`journal.rs`) before it is made, and syncs reported after.
//!
//! Inode numbers are the layer's own, handed out on lookup and never reused (a reused backing inode number
//! must not meet a kernel inode, and its page cache, of the file that had it before). Nodes know their
//! parent and name, so a path is rebuilt per request; removed nodes stay reachable through open handles.
//! Every open file keeps a read-write descriptor of the backing file: writes are positional `pwrite`s on
//! it (the kernel resolves `O_APPEND`), reads `pread`s. Syncs never reach the backing disk: durability is
//! the journal's business only. One lock covers everything; fuser serves requests from one thread.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use crate::journal::{key_of, FileKey, Journal, STASH_DIR};
use crate::{CutReport, Limits, Pending};

/// How long the kernel may cache attributes and names. Only this layer changes the backing tree while it
/// is mounted, and the kernel's caches die with the mount at a cut.
const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = fuser::FUSE_ROOT_ID;

struct Node {
    key: FileKey,
    parent: u64,
    name: OsString,
    lookups: u64,
    open: u32,
    /// Removed (stashed): no path any more, reachable through open handles only.
    removed: bool,
}

struct Handle {
    ino: u64,
    key: FileKey,
    file: Arc<File>,
}

struct DirHandle {
    entries: Vec<(u64, FileType, OsString)>,
}

/// State shared by the FUSE thread and the [`crate::PowerFailFs`] handle.
pub(crate) struct Shared {
    root: PathBuf,
    limits: Limits,
    journal: Option<Journal>,
    nodes: HashMap<u64, Node>,
    by_key: HashMap<FileKey, u64>,
    next_ino: u64,
    files: HashMap<u64, Handle>,
    dirs: HashMap<u64, DirHandle>,
    next_fh: u64,
}

pub(crate) fn lock(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

type R<T> = Result<T, i32>;

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Shared {
    pub fn new(root: PathBuf, limits: Limits) -> io::Result<Shared> {
        let key = key_of(&fs::metadata(&root)?);
        let journal = Journal::new(root.clone(), limits)?;
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node { key, parent: ROOT, name: OsString::new(), lookups: 1, open: 0, removed: false });
        let by_key = HashMap::from([(key, ROOT)]);
        Ok(Shared {
            root,
            limits,
            journal: Some(journal),
            nodes,
            by_key,
            next_ino: ROOT + 1,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
        })
    }

    pub fn pending(&self) -> Pending {
        self.journal.as_ref().map_or(Pending::default(), |j| Pending {
            files: j.files_pending(),
            undo_bytes: j.undo_bytes(),
            dir_ops: j.dir_ops_pending(),
        })
    }

    /// The power cut: roll back and refuse everything from now on.
    pub fn cut(&mut self) -> CutReport {
        self.files.clear();
        self.journal.take().map(Journal::rollback).unwrap_or_default()
    }

    /// After a clean unmount: every change stands.
    pub fn finish(&mut self) {
        self.files.clear();
        if let Some(j) = self.journal.take() {
            j.commit_all();
        }
    }

    fn journal(&mut self) -> R<&mut Journal> {
        self.journal.as_mut().ok_or(libc::EIO)
    }

    fn path(&self, ino: u64) -> R<PathBuf> {
        let mut names = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let n = self.nodes.get(&at).ok_or(libc::ENOENT)?;
            if n.removed {
                return Err(libc::ENOENT);
            }
            names.push(n.name.as_os_str());
            at = n.parent;
            if names.len() > 4096 {
                return Err(libc::ELOOP);
            }
        }
        let mut p = self.root.clone();
        for n in names.iter().rev() {
            p.push(n);
        }
        Ok(p)
    }

    fn child(&self, parent: u64, name: &OsStr) -> R<PathBuf> {
        if parent == ROOT && name == STASH_DIR {
            return Err(libc::EACCES);
        }
        if name.as_bytes().contains(&b'/') || name == ".." || name == "." {
            return Err(libc::EINVAL);
        }
        Ok(self.path(parent)?.join(name))
    }

    fn dir_key(&self, ino: u64) -> R<FileKey> {
        self.nodes.get(&ino).map(|n| n.key).ok_or(libc::ENOENT)
    }

    /// Checks the journal's room for one more directory operation on the entries `(dir key, path)` and
    /// has it hold a descriptor of each entry's directory.
    fn prepare(&mut self, entries: &[(FileKey, &Path)]) -> R<()> {
        let dirs: Vec<(FileKey, &Path)> = entries.iter().map(|(k, p)| (*k, p.parent().unwrap_or(p))).collect();
        self.journal()?.prepare_dir_op(&dirs).map_err(errno)
    }

    /// The node for a backing file found at `parent/name`, created on first sight; counts a lookup.
    fn remember(&mut self, parent: u64, name: &OsStr, m: &fs::Metadata) -> FileAttr {
        let key = key_of(m);
        let ino = match self.by_key.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = self.next_ino;
                self.next_ino += 1;
                self.nodes.insert(ino, Node { key, parent, name: name.to_owned(), lookups: 0, open: 0, removed: false });
                self.by_key.insert(key, ino);
                ino
            }
        };
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups += 1;
            if ino != ROOT {
                n.parent = parent;
                n.name = name.to_owned();
            }
        }
        attr(ino, m)
    }

    /// Marks the node of `key` removed: its name now belongs to nothing.
    fn forget_name(&mut self, key: FileKey) {
        if let Some(ino) = self.by_key.remove(&key) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.removed = true;
            }
            self.maybe_drop(ino);
        }
    }

    fn maybe_drop(&mut self, ino: u64) {
        if ino == ROOT {
            return;
        }
        if let Some(n) = self.nodes.get(&ino) {
            if n.lookups == 0 && n.open == 0 {
                let key = n.key;
                self.nodes.remove(&ino);
                if self.by_key.get(&key) == Some(&ino) {
                    self.by_key.remove(&key);
                }
            }
        }
    }

    fn new_fh(&mut self) -> R<u64> {
        if self.files.len() + self.dirs.len() >= self.limits.handles_max {
            return Err(libc::EMFILE);
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        Ok(fh)
    }

    fn handle(&self, fh: u64) -> R<(FileKey, Arc<File>)> {
        self.files.get(&fh).map(|h| (h.key, Arc::clone(&h.file))).ok_or(libc::EBADF)
    }

    fn open_handle(&mut self, ino: u64, file: File) -> R<u64> {
        let fh = self.new_fh()?;
        let key = key_of(&file.metadata().map_err(errno)?);
        self.files.insert(fh, Handle { ino, key, file: Arc::new(file) });
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.open += 1;
        }
        Ok(fh)
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> R<FileAttr> {
        let p = self.child(parent, name).map_err(|e| if e == libc::EACCES { libc::ENOENT } else { e })?;
        let m = fs::symlink_metadata(&p).map_err(errno)?;
        Ok(self.remember(parent, name, &m))
    }

    fn getattr(&self, ino: u64, fh: Option<u64>) -> R<FileAttr> {
        let m = match fh.and_then(|fh| self.files.get(&fh)) {
            Some(h) => h.file.metadata(),
            None => fs::symlink_metadata(self.path(ino)?),
        };
        Ok(attr(ino, &m.map_err(errno)?))
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
    ) -> R<FileAttr> {
        let path = self.path(ino).ok();
        if let Some(size) = size {
            let (key, file) = match fh.and_then(|fh| self.handle(fh).ok()) {
                Some(h) => h,
                None => {
                    let p = path.as_ref().ok_or(libc::ENOENT)?;
                    let f = OpenOptions::new().read(true).write(true).open(p).map_err(errno)?;
                    (key_of(&f.metadata().map_err(errno)?), Arc::new(f))
                }
            };
            self.journal()?.before_resize(key, &file, size).map_err(errno)?;
            file.set_len(size).map_err(errno)?;
        }
        if mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some() {
            let p = path.as_ref().ok_or(libc::ENOENT)?;
            if let Some(mode) = mode {
                fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777)).map_err(errno)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(p, uid, gid).map_err(errno)?;
            }
            if atime.is_some() || mtime.is_some() {
                set_times(p, atime, mtime)?;
            }
        }
        self.getattr(ino, fh)
    }

    fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32, umask: u32) -> R<FileAttr> {
        let p = self.child(parent, name)?;
        let dir = self.dir_key(parent)?;
        self.prepare(&[(dir, &p)])?;
        fs::DirBuilder::new().mode(mode & !umask & 0o7777).create(&p).map_err(errno)?;
        let m = fs::symlink_metadata(&p).map_err(errno)?;
        self.journal()?.created(dir, &p, key_of(&m), true);
        Ok(self.remember(parent, name, &m))
    }

    fn symlink(&mut self, parent: u64, name: &OsStr, target: &Path) -> R<FileAttr> {
        let p = self.child(parent, name)?;
        let dir = self.dir_key(parent)?;
        self.prepare(&[(dir, &p)])?;
        std::os::unix::fs::symlink(target, &p).map_err(errno)?;
        let m = fs::symlink_metadata(&p).map_err(errno)?;
        self.journal()?.created(dir, &p, key_of(&m), false);
        Ok(self.remember(parent, name, &m))
    }

    /// Creates (or, without `O_EXCL`, opens) `parent/name`; returns its attributes and, when `open`, a
    /// handle.
    fn create(&mut self, parent: u64, name: &OsStr, mode: u32, umask: u32, flags: i32, open: bool) -> R<(FileAttr, u64)> {
        let p = self.child(parent, name)?;
        let dir = self.dir_key(parent)?;
        self.prepare(&[(dir, &p)])?;
        let fresh = OpenOptions::new().read(true).write(true).create_new(true).mode(mode & !umask & 0o7777).open(&p);
        let file = match fresh {
            Ok(f) => {
                let m = f.metadata().map_err(errno)?;
                self.journal()?.created(dir, &p, key_of(&m), false);
                f
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && flags & libc::O_EXCL == 0 => {
                let f = open_backing(&p)?;
                if flags & libc::O_TRUNC != 0 {
                    self.truncate_open(&f)?;
                }
                f
            }
            Err(e) => return Err(errno(e)),
        };
        let m = file.metadata().map_err(errno)?;
        let attr = self.remember(parent, name, &m);
        let fh = if open { self.open_handle(attr.ino, file)? } else { 0 };
        Ok((attr, fh))
    }

    fn truncate_open(&mut self, f: &File) -> R<()> {
        let f = Arc::new(f.try_clone().map_err(errno)?);
        let key = key_of(&f.metadata().map_err(errno)?);
        self.journal()?.before_resize(key, &f, 0).map_err(errno)?;
        f.set_len(0).map_err(errno)
    }

    fn open(&mut self, ino: u64, flags: i32) -> R<u64> {
        let p = self.path(ino)?;
        let f = open_backing(&p)?;
        if flags & libc::O_TRUNC != 0 {
            self.truncate_open(&f)?;
        }
        self.open_handle(ino, f)
    }

    /// Moves `p` (in directory `parent`) to the stash; returns the stash path.
    fn stash(&mut self, p: &Path) -> R<PathBuf> {
        let stash = self.journal()?.stash_path();
        fs::rename(p, &stash).map_err(errno)?;
        Ok(stash)
    }

    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> R<()> {
        let p = self.child(parent, name)?;
        let dkey = self.dir_key(parent)?;
        self.prepare(&[(dkey, &p)])?;
        let m = fs::symlink_metadata(&p).map_err(errno)?;
        match (dir, m.is_dir()) {
            (false, true) => return Err(libc::EISDIR),
            (true, false) => return Err(libc::ENOTDIR),
            (true, true) if fs::read_dir(&p).map_err(errno)?.next().is_some() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        let stash = self.stash(&p)?;
        self.journal()?.removed(dkey, &p, &stash);
        self.forget_name(key_of(&m));
        Ok(())
    }

    fn rename(&mut self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: u32) -> R<()> {
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(libc::EINVAL);
        }
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let (fkey, tkey) = (self.dir_key(parent)?, self.dir_key(newparent)?);
        self.prepare(&[(fkey, &from), (tkey, &to)])?;
        let src = fs::symlink_metadata(&from).map_err(errno)?;
        if from == to {
            return Ok(());
        }
        if src.is_dir() && to.starts_with(&from) {
            return Err(libc::EINVAL);
        }
        let old = match fs::symlink_metadata(&to) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(errno(e)),
        };
        let mut replaced = None;
        if let Some(old) = &old {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(libc::EEXIST);
            }
            match (src.is_dir(), old.is_dir()) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if fs::read_dir(&to).map_err(errno)?.next().is_some() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            replaced = Some(self.stash(&to)?);
        }
        if let Err(e) = fs::rename(&from, &to) {
            if let Some(r) = &replaced {
                let _ = fs::rename(r, &to);
            }
            return Err(errno(e));
        }
        self.journal()?.renamed(fkey, &from, tkey, &to, replaced.as_deref());
        if let Some(old) = &old {
            self.forget_name(key_of(old));
        }
        if let Some(&ino) = self.by_key.get(&key_of(&src)) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.parent = newparent;
                n.name = newname.to_owned();
            }
        }
        Ok(())
    }

    fn read(&self, fh: u64, offset: i64, size: u32) -> R<Vec<u8>> {
        let (_, f) = self.handle(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset as u64 + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno(e)),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn write(&mut self, fh: u64, offset: i64, data: &[u8]) -> R<u32> {
        let (key, f) = self.handle(fh)?;
        let offset = u64::try_from(offset).map_err(|_| libc::EINVAL)?;
        self.journal()?.before_change(key, &f, offset, data.len() as u64).map_err(errno)?;
        f.write_all_at(data, offset).map_err(errno)?;
        Ok(data.len() as u32)
    }

    fn fallocate(&mut self, fh: u64, offset: i64, length: i64, mode: i32) -> R<()> {
        let (key, f) = self.handle(fh)?;
        let (off, len) = (u64::try_from(offset).map_err(|_| libc::EINVAL)?, u64::try_from(length).map_err(|_| libc::EINVAL)?);
        let known = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            return Err(libc::EOPNOTSUPP);
        }
        let j = self.journal()?;
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            j.before_change(key, &f, off, len).map_err(errno)?;
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            // May extend the size: the size before it is what a cut restores.
            j.before_resize(key, &f, off.saturating_add(len)).map_err(errno)?;
        }
        // SAFETY: fallocate on a valid descriptor; no memory is passed.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset, length) };
        if rc != 0 {
            return Err(errno(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn lseek(&self, fh: u64, offset: i64, whence: i32) -> R<i64> {
        let (_, f) = self.handle(fh)?;
        // SAFETY: lseek on a valid descriptor; the layer only does positional IO, so moving the offset is
        // harmless.
        let r = unsafe { libc::lseek(f.as_raw_fd(), offset, whence) };
        if r < 0 {
            return Err(errno(io::Error::last_os_error()));
        }
        Ok(r)
    }

    fn release(&mut self, fh: u64) {
        if let Some(h) = self.files.remove(&fh) {
            if let Some(n) = self.nodes.get_mut(&h.ino) {
                n.open = n.open.saturating_sub(1);
            }
            self.maybe_drop(h.ino);
        }
    }

    fn opendir(&mut self, ino: u64) -> R<u64> {
        let p = self.path(ino)?;
        let mut entries = vec![(ino, FileType::Directory, OsString::from(".")), (ino, FileType::Directory, OsString::from(".."))];
        for e in fs::read_dir(&p).map_err(errno)? {
            let e = e.map_err(errno)?;
            if ino == ROOT && e.file_name() == STASH_DIR {
                continue;
            }
            let kind = e.file_type().map(file_type).unwrap_or(FileType::RegularFile);
            entries.push((e.ino(), kind, e.file_name()));
        }
        let fh = self.new_fh()?;
        self.dirs.insert(fh, DirHandle { entries });
        Ok(fh)
    }
}

fn open_backing(p: &Path) -> R<File> {
    match OpenOptions::new().read(true).write(true).open(p) {
        Ok(f) => Ok(f),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::ETXTBSY) | Some(libc::EISDIR)) => {
            File::open(p).map_err(errno)
        }
        Err(e) => Err(errno(e)),
    }
}

fn set_times(p: &Path, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> R<()> {
    let ts = |t: Option<TimeOrNow>| match t {
        None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        Some(TimeOrNow::Now) => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long }
        }
    };
    let times = [ts(atime), ts(mtime)];
    let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    // SAFETY: a valid path and a two-element timespec array, as utimensat requires.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(errno(io::Error::last_os_error()));
    }
    Ok(())
}

fn file_type(t: fs::FileType) -> FileType {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_socket() {
        FileType::Socket
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH
    }
}

fn attr(ino: u64, m: &fs::Metadata) -> FileAttr {
    FileAttr {
        ino,
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.ctime(), m.ctime_nsec()),
        kind: file_type(m.file_type()),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

/// The fuser filesystem: locks the shared state per request; after a cut, fails everything with EIO.
pub(crate) struct PassThrough {
    shared: Arc<Mutex<Shared>>,
}

impl PassThrough {
    pub fn new(shared: Arc<Mutex<Shared>>) -> Self {
        PassThrough { shared }
    }

    /// The state, or EIO once the power is cut.
    fn live(&self) -> R<MutexGuard<'_, Shared>> {
        let s = lock(&self.shared);
        if s.journal.is_none() {
            return Err(libc::EIO);
        }
        Ok(s)
    }
}

macro_rules! reply_with {
    ($reply:expr, $r:expr, |$v:ident| $ok:expr) => {
        match $r {
            Ok($v) => $ok,
            Err(e) => $reply.error(e),
        }
    };
}

impl Filesystem for PassThrough {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        reply_with!(reply, self.live().and_then(|mut s| s.lookup(parent, name)), |a| reply.entry(&TTL, &a, 0));
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        let mut s = lock(&self.shared);
        if let Some(n) = s.nodes.get_mut(&ino) {
            n.lookups = n.lookups.saturating_sub(nlookup);
        }
        s.maybe_drop(ino);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, fh: Option<u64>, reply: ReplyAttr) {
        reply_with!(reply, self.live().and_then(|s| s.getattr(ino, fh)), |a| reply.attr(&TTL, &a));
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let r = self.live().and_then(|mut s| s.setattr(ino, mode, uid, gid, size, atime, mtime, fh));
        reply_with!(reply, r, |a| reply.attr(&TTL, &a));
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        let r = self.live().and_then(|s| fs::read_link(s.path(ino)?).map_err(errno));
        reply_with!(reply, r, |t| reply.data(t.as_os_str().as_bytes()));
    }

    fn mknod(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, umask: u32, _rdev: u32, reply: ReplyEntry) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            reply.error(libc::EPERM);
            return;
        }
        let r = self.live().and_then(|mut s| s.create(parent, name, mode, umask, libc::O_EXCL, false));
        reply_with!(reply, r, |a| reply.entry(&TTL, &a.0, 0));
    }

    fn mkdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        reply_with!(reply, self.live().and_then(|mut s| s.mkdir(parent, name, mode, umask)), |a| reply.entry(&TTL, &a, 0));
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        reply_with!(reply, self.live().and_then(|mut s| s.remove(parent, name, false)), |_v| reply.ok());
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        reply_with!(reply, self.live().and_then(|mut s| s.remove(parent, name, true)), |_v| reply.ok());
    }

    fn symlink(&mut self, _req: &Request<'_>, parent: u64, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        reply_with!(reply, self.live().and_then(|mut s| s.symlink(parent, link_name, target)), |a| reply.entry(&TTL, &a, 0));
    }

    fn rename(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: u32, reply: ReplyEmpty) {
        reply_with!(reply, self.live().and_then(|mut s| s.rename(parent, name, newparent, newname, flags)), |_v| reply.ok());
    }

    fn link(&mut self, _req: &Request<'_>, _ino: u64, _newparent: u64, _newname: &OsStr, reply: ReplyEntry) {
        // Hard links would give one inode several names to undo; nothing here needs them.
        reply.error(libc::EPERM);
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        reply_with!(reply, self.live().and_then(|mut s| s.open(ino, flags)), |fh| reply.opened(fh, fuser::consts::FOPEN_KEEP_CACHE));
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        reply_with!(reply, self.live().and_then(|s| s.read(fh, offset, size)), |b| reply.data(&b));
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        reply_with!(reply, self.live().and_then(|mut s| s.write(fh, offset, data)), |n| reply.written(n));
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _flags: i32, _lock_owner: Option<u64>, _flush: bool, reply: ReplyEmpty) {
        lock(&self.shared).release(fh);
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        // fdatasync counts as fsync: the size is data too (a file that grew must be readable to its end).
        let r = self.live().and_then(|mut s| {
            let (key, _) = s.handle(fh)?;
            s.journal()?.file_synced(key);
            Ok(())
        });
        reply_with!(reply, r, |_v| reply.ok());
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        reply_with!(reply, self.live().and_then(|mut s| s.opendir(ino)), |fh| reply.opened(fh, 0));
    }

    fn readdir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let Some(d) = s.dirs.get(&fh) else { return reply.error(libc::EBADF) };
        for (i, (ino, kind, name)) in d.entries.iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(*ino, i as i64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _flags: i32, reply: ReplyEmpty) {
        lock(&self.shared).dirs.remove(&fh);
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let r = self.live().and_then(|mut s| {
            let key = s.dir_key(ino)?;
            s.journal()?.dir_synced(key);
            Ok(())
        });
        reply_with!(reply, r, |_v| reply.ok());
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let r = self.live().and_then(|s| {
            let c = CString::new(s.root.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
            // SAFETY: statvfs fills the zeroed struct we pass for a valid path.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
                return Err(errno(io::Error::last_os_error()));
            }
            Ok(st)
        });
        reply_with!(reply, r, |st| reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32
        ));
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply_with!(reply, self.live(), |_v| reply.ok());
    }

    fn create(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        let r = self.live().and_then(|mut s| s.create(parent, name, mode, umask, flags, true));
        reply_with!(reply, r, |v| reply.created(&TTL, &v.0, 0, v.1, fuser::consts::FOPEN_KEEP_CACHE));
    }

    fn fallocate(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, offset: i64, length: i64, mode: i32, reply: ReplyEmpty) {
        reply_with!(reply, self.live().and_then(|mut s| s.fallocate(fh, offset, length, mode)), |_v| reply.ok());
    }

    fn lseek(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, offset: i64, whence: i32, reply: ReplyLseek) {
        reply_with!(reply, self.live().and_then(|s| s.lseek(fh, offset, whence)), |o| reply.offset(o));
    }
}
