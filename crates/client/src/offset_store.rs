//! Consumer offsets: the in-memory table the consume path updates, and where it is persisted — the broker
//! group (clustering; replicated by Raft on raftmq) or a local file per client and group (broadcasting, where
//! each consumer has its own progress).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::error::Result;
use crate::instance::ClientInstance;
use crate::message::MessageQueue;
use crate::pull::{query_consumer_offset, update_consumer_offset};

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    offset: i64,
    persisted: Option<i64>,
}

/// Where offsets are persisted.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// The broker group of each queue.
    Remote,
    /// A JSON file (`offsets.json`), written atomically.
    LocalFile(PathBuf),
}

/// Offsets of one consumer group.
pub(crate) struct OffsetStore {
    group: String,
    backend: Backend,
    table: Mutex<HashMap<MessageQueue, Entry>>,
    /// Serialises local-file writes.
    file_lock: tokio::sync::Mutex<()>,
}

#[derive(Serialize, Deserialize, Default)]
struct OffsetFile {
    /// `topic@brokerName@queueId` → offset.
    offsets: BTreeMap<String, i64>,
}

fn file_key(q: &MessageQueue) -> String {
    format!("{}@{}@{}", q.topic, q.broker_name, q.queue_id)
}

impl OffsetStore {
    pub(crate) fn new(group: &str, backend: Backend) -> OffsetStore {
        OffsetStore { group: group.to_string(), backend, table: Mutex::default(), file_lock: tokio::sync::Mutex::new(()) }
    }

    /// The default directory of broadcasting offsets: `$RAFTMQ_OFFSETS_DIR`, else `~/.rocketmq_offsets` (as the
    /// Java client), else the temp dir. The file is `<dir>/<clientId>/<group>/offsets.json`.
    pub(crate) fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("RAFTMQ_OFFSETS_DIR") {
            return PathBuf::from(d);
        }
        match std::env::var_os("HOME") {
            Some(h) => Path::new(&h).join(".rocketmq_offsets"),
            None => std::env::temp_dir().join("rocketmq_offsets"),
        }
    }

    /// Records that everything before `offset` is consumed. With `increase_only` a smaller value is ignored
    /// (concurrent consumption finishes out of order).
    pub(crate) fn update(&self, q: &MessageQueue, offset: i64, increase_only: bool) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let e = t.entry(q.clone()).or_default();
        if !increase_only || offset > e.offset {
            e.offset = offset;
        }
    }

    /// The offset in memory.
    #[cfg(test)]
    pub(crate) fn read_memory(&self, q: &MessageQueue) -> Option<i64> {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).get(q).map(|e| e.offset)
    }

    /// The persisted offset (broker or file); `None` when the group has none for `q`. Also loads it into memory.
    pub(crate) async fn read_persisted(&self, client: &ClientInstance, q: &MessageQueue) -> Result<Option<i64>> {
        let found = match &self.backend {
            Backend::Remote => query_consumer_offset(client, &self.group, q).await?,
            Backend::LocalFile(path) => read_file(path)?.offsets.get(&file_key(q)).copied(),
        };
        if let Some(o) = found {
            let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
            t.insert(q.clone(), Entry { offset: o, persisted: Some(o) });
        }
        Ok(found)
    }

    /// Persists the offsets of `queues` that changed since they were last persisted.
    pub(crate) async fn persist(&self, client: &ClientInstance, queues: &[MessageQueue]) {
        let changed: Vec<(MessageQueue, i64)> = {
            let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
            queues.iter().filter_map(|q| t.get(q).filter(|e| e.persisted != Some(e.offset)).map(|e| (q.clone(), e.offset))).collect()
        };
        if changed.is_empty() {
            return;
        }
        match &self.backend {
            Backend::Remote => {
                for (q, offset) in changed {
                    match update_consumer_offset(client, &self.group, &q, offset).await {
                        Ok(()) => self.mark_persisted(&q, offset),
                        Err(e) => warn!(group = %self.group, queue = ?q, offset, error = %e, "offset commit failed; will retry"),
                    }
                }
            }
            Backend::LocalFile(path) => {
                let _guard = self.file_lock.lock().await;
                let result = merge_into_file(path, &changed);
                match result {
                    Ok(()) => changed.iter().for_each(|(q, o)| self.mark_persisted(q, *o)),
                    Err(e) => warn!(path = %path.display(), error = %e, "writing broadcast offsets failed; will retry"),
                }
            }
        }
    }

    fn mark_persisted(&self, q: &MessageQueue, offset: i64) {
        if let Some(e) = self.table.lock().unwrap_or_else(|e| e.into_inner()).get_mut(q) {
            e.persisted = Some(offset);
        }
        debug!(group = %self.group, queue = ?q, offset, "offset persisted");
    }

    /// Forgets `q` (after it was persisted, when the queue moved to another consumer).
    pub(crate) fn remove(&self, q: &MessageQueue) {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).remove(q);
    }
}

fn merge_into_file(path: &Path, changed: &[(MessageQueue, i64)]) -> std::io::Result<()> {
    let mut file = read_file(path).unwrap_or_default();
    for (q, o) in changed {
        file.offsets.insert(file_key(q), *o);
    }
    write_file_atomically(path, &file)
}

fn read_file(path: &Path) -> std::io::Result<OffsetFile> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(OffsetFile::default()),
        Err(e) => Err(e),
    }
}

/// Write to a temp file, fsync, rename over, fsync the directory: a crash leaves the old or the new file.
fn write_file_atomically(path: &Path, file: &OffsetFile) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: i32) -> MessageQueue {
        MessageQueue { topic: "t".into(), broker_name: "b".into(), queue_id: id }
    }

    #[test]
    fn increase_only_updates_ignore_smaller_offsets() {
        let s = OffsetStore::new("g", Backend::Remote);
        s.update(&q(0), 10, true);
        s.update(&q(0), 7, true);
        assert_eq!(s.read_memory(&q(0)), Some(10));
        s.update(&q(0), 7, false);
        assert_eq!(s.read_memory(&q(0)), Some(7));
    }

    #[test]
    fn offset_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c1/g/offsets.json");
        let mut f = OffsetFile::default();
        f.offsets.insert(file_key(&q(3)), 42);
        write_file_atomically(&path, &f).unwrap();
        assert_eq!(read_file(&path).unwrap().offsets.get("t@b@3"), Some(&42));
        assert!(read_file(&dir.path().join("missing.json")).unwrap().offsets.is_empty());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(read_file(&path).is_err(), "a corrupt file is an error, not silently offset 0");
    }
}
