//! The layer's own promises, one per test: what a power cut keeps and what it takes back, for file
//! contents (write, truncate, punched hole, shared mapping) and directory entries (create, rename over,
//! unlink, mkdir), with and without the fsync that makes each durable; its limits; and a remount after a
//! cut. Each test mounts its own layer and skips, saying why, where FUSE is unavailable.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use raftmq_powerfail::{available, CutReport, Limits, PowerFailFs, STASH_DIR};

struct Env {
    _dir: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
}

/// A backing directory holding `files` (durable: they exist before the mount) and an empty mountpoint;
/// `None` (test skipped) where FUSE is unavailable.
fn env(files: &[(&str, &[u8])]) -> Option<Env> {
    if let Err(why) = available() {
        eprintln!("skipped: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    for (name, contents) in files {
        fs::write(backing.join(name), contents).unwrap();
    }
    Some(Env { _dir: dir, backing, mnt })
}

fn mount(e: &Env) -> PowerFailFs {
    PowerFailFs::mount(&e.backing, &e.mnt).unwrap()
}

fn fsync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

fn cut(fs: PowerFailFs) -> CutReport {
    let r = fs.cut_power().unwrap();
    assert!(r.failed.is_empty(), "{r:?}");
    r
}

/// The backing tree's names, without the stash (which a cut removes).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn unsynced_write_is_lost_and_synced_write_kept() {
    let Some(e) = env(&[("a", b"old contents"), ("b", b"old contents")]) else { return };
    let fs = mount(&e);
    for (name, sync) in [("a", false), ("b", true)] {
        let mut f = OpenOptions::new().write(true).open(e.mnt.join(name)).unwrap();
        f.write_all_at(b"NEW", 0).unwrap();
        f.write_all_at(&[7u8; 10_000], 20_000).unwrap();
        if sync {
            f.sync_data().unwrap();
        }
        f.flush().unwrap();
    }
    assert_eq!(&fs::read(e.mnt.join("a")).unwrap()[..12], b"NEW contents", "the mount reads what was written");
    let p = fs.pending();
    assert_eq!(p.files, 1, "{p:?}");
    let r = cut(fs);
    assert_eq!(r.files_rolled_back, 1);
    assert_eq!(fs::read(e.backing.join("a")).unwrap(), b"old contents", "size and bytes back to the last sync");
    let b = fs::read(e.backing.join("b")).unwrap();
    assert_eq!((&b[..3], b.len()), (&b"NEW"[..], 30_000));
    assert_eq!(names(&e.backing), ["a", "b"]);
}

#[test]
fn new_file_needs_its_directory_fsync() {
    let Some(e) = env(&[]) else { return };
    let fs = mount(&e);
    for d in ["lost", "kept"] {
        fs::create_dir(e.mnt.join(d)).unwrap();
    }
    fsync_dir(&e.mnt);
    for (d, dir_sync) in [("lost", false), ("kept", true)] {
        let mut f = File::create(e.mnt.join(d).join("f")).unwrap();
        f.write_all(b"payload").unwrap();
        f.sync_all().unwrap();
        if dir_sync {
            fsync_dir(&e.mnt.join(d));
        }
    }
    let r = cut(fs);
    assert_eq!(r.dir_ops_undone, 1, "{r:?}");
    assert!(names(&e.backing.join("lost")).is_empty(), "an fsynced file without its directory fsync is gone");
    assert_eq!(fs::read(e.backing.join("kept/f")).unwrap(), b"payload");
}

#[test]
fn a_durable_file_in_a_directory_whose_creation_is_not_durable_is_lost() {
    let Some(e) = env(&[]) else { return };
    let fs = mount(&e);
    fs::create_dir(e.mnt.join("d")).unwrap();
    let mut f = File::create(e.mnt.join("d/f")).unwrap();
    f.write_all(b"x").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fsync_dir(&e.mnt.join("d"));
    cut(fs);
    assert!(names(&e.backing).is_empty(), "{:?}", names(&e.backing));
}

#[test]
fn rename_over_a_file_needs_the_directory_fsync() {
    for dir_sync in [false, true] {
        let Some(e) = env(&[("dst", b"old")]) else { return };
        let fs = mount(&e);
        let tmp = e.mnt.join("dst.tmp");
        let mut f = File::create(&tmp).unwrap();
        f.write_all(b"new").unwrap();
        f.sync_all().unwrap();
        drop(f);
        fs::rename(&tmp, e.mnt.join("dst")).unwrap();
        assert_eq!(fs::read(e.mnt.join("dst")).unwrap(), b"new");
        if dir_sync {
            fsync_dir(&e.mnt);
        }
        cut(fs);
        let want: &[u8] = if dir_sync { b"new" } else { b"old" };
        assert_eq!(fs::read(e.backing.join("dst")).unwrap(), want, "dir fsync {dir_sync}");
        assert_eq!(names(&e.backing), ["dst"], "dir fsync {dir_sync}: no temp file left, no stash");
    }
}

#[test]
fn unlink_needs_the_directory_fsync() {
    for dir_sync in [false, true] {
        let Some(e) = env(&[("f", b"keep me")]) else { return };
        let fs = mount(&e);
        fs::remove_file(e.mnt.join("f")).unwrap();
        assert!(!e.mnt.join("f").exists());
        if dir_sync {
            fsync_dir(&e.mnt);
        }
        cut(fs);
        if dir_sync {
            assert!(names(&e.backing).is_empty());
        } else {
            assert_eq!(fs::read(e.backing.join("f")).unwrap(), b"keep me", "unlink without dir fsync is undone");
        }
    }
}

#[test]
fn truncate_is_undone_without_fsync() {
    for sync in [false, true] {
        let old: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8 + 1).collect();
        let Some(e) = env(&[("f", &old)]) else { return };
        let fs = mount(&e);
        let f = OpenOptions::new().write(true).open(e.mnt.join("f")).unwrap();
        f.set_len(5000).unwrap();
        f.set_len(9000).unwrap();
        if sync {
            f.sync_all().unwrap();
        }
        drop(f);
        cut(fs);
        let now = fs::read(e.backing.join("f")).unwrap();
        if sync {
            assert_eq!(now.len(), 9000);
            assert_eq!(now[..5000], old[..5000]);
            assert!(now[5000..].iter().all(|&b| b == 0));
        } else {
            assert!(now == old, "truncate without fsync: old size and bytes back");
        }
    }
}

#[test]
fn punched_hole_is_undone_without_fsync() {
    let old: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 13) as u8 + 1).collect();
    let Some(e) = env(&[("f", &old)]) else { return };
    let fs = mount(&e);
    let f = OpenOptions::new().read(true).write(true).open(e.mnt.join("f")).unwrap();
    // SAFETY: fallocate on a valid descriptor.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 1000, 40_000) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let mut buf = vec![1u8; 100];
    f.read_exact_at(&mut buf, 2000).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "the mount reads the hole");
    drop(f);
    cut(fs);
    assert!(fs::read(e.backing.join("f")).unwrap() == old);
}

#[test]
fn shared_mapping_writes_survive_with_msync_only() {
    for msync in [false, true] {
        let Some(e) = env(&[("f", &[0u8; 16384])]) else { return };
        let fs = mount(&e);
        let f = OpenOptions::new().read(true).write(true).open(e.mnt.join("f")).unwrap();
        // SAFETY: the file is not changed by anything else while mapped.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.unwrap();
        map[100..105].copy_from_slice(b"mmap!");
        map[9000] = 42;
        if msync {
            map.flush().unwrap();
            assert_eq!(fs.pending().files, 0, "msync(MS_SYNC) reached the layer as an fsync");
        }
        drop(map);
        drop(f);
        cut(fs);
        let now = fs::read(e.backing.join("f")).unwrap();
        assert_eq!(now.len(), 16384);
        if msync {
            assert_eq!((&now[100..105], now[9000]), (&b"mmap!"[..], 42));
        } else {
            assert!(now.iter().all(|&b| b == 0), "unsynced mapping writes are lost");
        }
    }
}

#[test]
fn appended_and_preallocated_sizes_go_back() {
    let Some(e) = env(&[("f", b"abc")]) else { return };
    let fs = mount(&e);
    let mut f = OpenOptions::new().append(true).open(e.mnt.join("f")).unwrap();
    f.write_all(b"def").unwrap();
    // SAFETY: fallocate on a valid descriptor.
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) }, 0);
    assert_eq!(fs::metadata(e.mnt.join("f")).unwrap().len(), 1 << 20);
    drop(f);
    cut(fs);
    assert_eq!(fs::read(e.backing.join("f")).unwrap(), b"abc");
}

#[test]
fn cut_then_remount_sees_the_durable_state_and_works() {
    let Some(e) = env(&[]) else { return };
    let fs = mount(&e);
    fs::create_dir(e.mnt.join("log")).unwrap();
    fsync_dir(&e.mnt);
    let mut f = File::create(e.mnt.join("log/seg")).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    fsync_dir(&e.mnt.join("log"));
    f.write_all(b" and lost").unwrap();
    drop(f);
    cut(fs);
    let fs = mount(&e);
    assert_eq!(fs::read(e.mnt.join("log/seg")).unwrap(), b"durable", "a new mount reads the backing, not an old cache");
    fs::write(e.mnt.join("log/seg"), b"rewritten").unwrap();
    fs.unmount().unwrap();
    assert_eq!(fs::read(e.backing.join("log/seg")).unwrap(), b"rewritten", "a clean unmount keeps everything");
    assert!(!e.backing.join(STASH_DIR).exists());
}

#[test]
fn clean_unmount_carries_out_removals() {
    let Some(e) = env(&[("gone", b"x"), ("over", b"old")]) else { return };
    let fs = mount(&e);
    fs::remove_file(e.mnt.join("gone")).unwrap();
    fs::write(e.mnt.join("t"), b"new").unwrap();
    fs::rename(e.mnt.join("t"), e.mnt.join("over")).unwrap();
    assert_eq!(names(&e.mnt), ["over"], "the stash is hidden");
    drop(fs);
    assert_eq!(names(&e.backing), ["over"]);
    assert_eq!(fs::read(e.backing.join("over")).unwrap(), b"new");
}

#[test]
fn undo_bytes_max_refuses_a_write_with_enospc_and_changes_nothing() {
    let old = vec![9u8; 8 * 4096];
    let Some(e) = env(&[("f", &old)]) else { return };
    // Room for exactly two saved data pages (4096 + 32 bytes each).
    let limits = Limits { undo_bytes_max: 2 * (4096 + 32), ..Limits::default() };
    let fs = PowerFailFs::mount_with(&e.backing, &e.mnt, limits).unwrap();
    let f = OpenOptions::new().write(true).open(e.mnt.join("f")).unwrap();
    f.write_all_at(&[1u8; 8192], 0).unwrap();
    let err = f.write_all_at(&[1u8; 10], 3 * 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert_eq!(fs::read(e.mnt.join("f")).unwrap()[3 * 4096], 9, "the refused write changed nothing");
    f.sync_data().unwrap();
    f.write_all_at(&[1u8; 10], 3 * 4096).unwrap();
    drop(f);
    cut(fs);
    let now = fs::read(e.backing.join("f")).unwrap();
    assert_eq!((now[0], now[3 * 4096]), (1, 9));
}

#[test]
fn dir_ops_max_refuses_with_enospc() {
    let Some(e) = env(&[]) else { return };
    let limits = Limits { dir_ops_max: 3, ..Limits::default() };
    let fs = PowerFailFs::mount_with(&e.backing, &e.mnt, limits).unwrap();
    for i in 0..3 {
        File::create(e.mnt.join(format!("f{i}"))).unwrap();
    }
    let err = File::create(e.mnt.join("f3")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert_eq!(err.kind(), ErrorKind::StorageFull);
    fsync_dir(&e.mnt);
    File::create(e.mnt.join("f3")).unwrap();
    cut(fs);
    assert_eq!(names(&e.backing), ["f0", "f1", "f2"]);
}

#[test]
fn handles_max_refuses_with_emfile() {
    let Some(e) = env(&[("a", b"1"), ("b", b"2"), ("c", b"3")]) else { return };
    let limits = Limits { handles_max: 2, ..Limits::default() };
    let fs = PowerFailFs::mount_with(&e.backing, &e.mnt, limits).unwrap();
    let a = File::open(e.mnt.join("a")).unwrap();
    let b = File::open(e.mnt.join("b")).unwrap();
    let err = File::open(e.mnt.join("c")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
    drop(a);
    // The kernel sends the release of a closed file in the background: wait for it (bounded).
    let mut read = fs::read(e.mnt.join("c"));
    for _ in 0..200 {
        if read.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        read = fs::read(e.mnt.join("c"));
    }
    assert_eq!(read.unwrap(), b"3", "a closed handle frees its place");
    drop(b);
    fs.unmount().unwrap();
}

#[test]
fn cut_with_a_file_still_open_rolls_back_and_reports_busy_after_unmount_wait_max() {
    let Some(e) = env(&[("f", b"old")]) else { return };
    let limits = Limits { unmount_wait_max: std::time::Duration::from_millis(200), ..Limits::default() };
    let fs = PowerFailFs::mount_with(&e.backing, &e.mnt, limits).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(e.mnt.join("f")).unwrap();
    f.write_all_at(b"new", 0).unwrap();
    let err = fs.cut_power().unwrap_err();
    assert!(matches!(err, raftmq_powerfail::PowerFailError::Busy(_)), "{err}");
    assert_eq!(fs::read(e.backing.join("f")).unwrap(), b"old", "rolled back all the same");
    // Without a writeback cache every write reaches the layer, which refuses it now.
    assert_eq!(f.write_at(b"late", 0).unwrap_err().raw_os_error(), Some(libc::EIO), "after the cut every request fails");
    drop(f);
    assert_eq!(fs::read(e.backing.join("f")).unwrap(), b"old", "nothing written after the cut");
}

/// Random sequences of writes, truncates, punched holes, creates, unlinks, renames and file or directory
/// fsyncs in two directories, checked after the cut against a model of the rules: each inode keeps the
/// contents of its last fsync (empty if it was created through the mount and never synced), and each
/// directory the names of its last fsync. Seeds are printed on failure.
#[test]
fn random_operations_match_the_durability_model() {
    use std::collections::BTreeMap;
    let seeds = 40u64;
    for seed in 0..seeds {
        let Some(e) = env(&[]) else { return };
        let mut inodes: Vec<(Vec<u8>, Vec<u8>)> = Vec::new(); // (current, durable)
        let mut cur: [BTreeMap<String, usize>; 2] = Default::default();
        for (d, ns) in cur.iter_mut().enumerate() {
            fs::create_dir(e.backing.join(format!("d{d}"))).unwrap();
            let init: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8 + d as u8 + 1).collect();
            fs::write(e.backing.join(format!("d{d}/f0")), &init).unwrap();
            ns.insert("f0".into(), inodes.len());
            inodes.push((init.clone(), init));
        }
        let mut dur = cur.clone();
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut rnd = |n: u64| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let fs = mount(&e);
        let mut log = Vec::new();
        for _ in 0..40 {
            let d = rnd(2) as usize;
            let name = format!("f{}", rnd(4));
            let path = e.mnt.join(format!("d{d}")).join(&name);
            let existing = cur[d].get(&name).copied();
            let op = rnd(8);
            log.push(format!("d{d}/{name} op {op}"));
            match (op, existing) {
                (0, Some(i)) => {
                    let (off, len, v) = (rnd(12_000) as usize, rnd(6000) as usize + 1, rnd(255) as u8 + 1);
                    OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&vec![v; len], off as u64).unwrap();
                    let c = &mut inodes[i].0;
                    if c.len() < off + len {
                        c.resize(off + len, 0);
                    }
                    c[off..off + len].fill(v);
                }
                (1, Some(i)) => {
                    let len = rnd(15_000) as usize;
                    OpenOptions::new().write(true).open(&path).unwrap().set_len(len as u64).unwrap();
                    inodes[i].0.resize(len, 0);
                }
                (2, Some(i)) => {
                    File::open(&path).unwrap().sync_all().unwrap();
                    inodes[i].1 = inodes[i].0.clone();
                }
                (3, Some(i)) => {
                    let (off, len) = (rnd(12_000) as usize, rnd(8000) as usize + 1);
                    let f = OpenOptions::new().write(true).open(&path).unwrap();
                    // SAFETY: fallocate on a valid descriptor.
                    let rc = unsafe {
                        libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off as i64, len as i64)
                    };
                    assert_eq!(rc, 0);
                    let c = &mut inodes[i].0;
                    let end = (off + len).min(c.len());
                    if off < end {
                        c[off..end].fill(0);
                    }
                }
                (4, None) => {
                    File::create(&path).unwrap();
                    cur[d].insert(name, inodes.len());
                    inodes.push((Vec::new(), Vec::new()));
                }
                (5, Some(_)) => {
                    fs::remove_file(&path).unwrap();
                    cur[d].remove(&name);
                }
                (6, Some(i)) => {
                    let to = format!("f{}", rnd(4));
                    if to != name {
                        fs::rename(&path, e.mnt.join(format!("d{d}")).join(&to)).unwrap();
                        cur[d].remove(&name);
                        cur[d].insert(to, i);
                    }
                }
                (7, _) => {
                    fsync_dir(&e.mnt.join(format!("d{d}")));
                    dur[d] = cur[d].clone();
                }
                _ => {}
            }
        }
        let r = fs.cut_power().unwrap();
        assert!(r.failed.is_empty(), "seed {seed}: {r:?}\n{log:?}");
        for (d, ns) in dur.iter().enumerate() {
            let dir = e.backing.join(format!("d{d}"));
            let want: Vec<&String> = ns.keys().collect();
            assert_eq!(names(&dir).iter().collect::<Vec<_>>(), want, "seed {seed}: names in d{d}\n{log:?}");
            for (name, &i) in ns {
                let got = fs::read(dir.join(name)).unwrap();
                assert!(got == inodes[i].1, "seed {seed}: d{d}/{name} has {} bytes, want {}\n{log:?}", got.len(), inodes[i].1.len());
            }
        }
    }
}

#[test]
fn cut_while_a_writer_is_open_keeps_the_mount_failing_requests_until_unmount() {
    let Some(e) = env(&[("f", b"old")]) else { return };
    let fs = mount(&e);
    let f = OpenOptions::new().read(true).write(true).open(e.mnt.join("f")).unwrap();
    f.write_all_at(b"new", 0).unwrap();
    let r = fs.cut();
    assert_eq!(r.files_rolled_back, 1, "{r:?}");
    assert_eq!(fs::read(e.backing.join("f")).unwrap(), b"old");
    assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(libc::EIO), "a sync after the cut fails");
    let err = File::create(e.mnt.join("stray")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(fs.cut(), CutReport::default(), "a second cut has nothing to take back");
    drop(f);
    fs.unmount().unwrap();
    assert_eq!(names(&e.mnt), Vec::<String>::new(), "nothing was created under the mountpoint");
    assert_eq!(names(&e.backing), ["f"]);
}

#[test]
fn a_lost_entry_is_found_in_its_directory_after_that_directory_was_durably_renamed() {
    let Some(e) = env(&[]) else { return };
    let fs = mount(&e);
    fs::create_dir(e.mnt.join("d")).unwrap();
    fsync_dir(&e.mnt);
    fs::write(e.mnt.join("d/f"), b"never durable").unwrap();
    fs::rename(e.mnt.join("d"), e.mnt.join("e")).unwrap();
    fsync_dir(&e.mnt);
    cut(fs);
    assert_eq!(names(&e.backing), ["e"], "the rename was made durable");
    assert!(names(&e.backing.join("e")).is_empty(), "the file's entry never was");
}
