//! The embedded store: one sled database under the data directory.
//!
//! Each [`Table`] is a sled tree. A stored value is the expiry (8 bytes, big-endian,
//! `u64::MAX` for never) followed by the record bytes, so the sweeper can judge expiry without
//! decoding records. sled allows one process per database; a `LOCK` file taken before opening
//! turns a second process into a clear startup error instead of a sled I/O message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use fs2::FileExt;

use super::{Entry, Store, StoreError, Table};
use crate::clock::UnixTime;

const NEVER: u64 = u64::MAX;

/// The sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    /// One tree per [`Table`], indexed by the table's discriminant.
    trees: Vec<sled::Tree>,
    /// Held for the life of the store: the exclusive lock on `<data>/LOCK`.
    _lock: File,
    /// One flush at a time. sled 0.34 runs a flush on its own small thread pool, where it
    /// waits for log writes queued on that same pool: enough flushes at once take every
    /// thread and wait forever for writes that can no longer run (seen here: ten parallel
    /// token requests hung the store, every `sled-io` thread parked in `make_stable`).
    flushing: tokio::sync::Mutex<()>,
}

fn cannot(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Open {
        doing,
        path,
        source,
    }
}

/// The most memory sled's page cache may take. Its default (1 GiB) lets the proxy's memory
/// grow with the store for as long as records are kept (refresh tokens live for weeks); past
/// this much, pages are read back from the file (and the kernel's page cache).
///
/// It binds only once the store is large. sled 0.34 splits its cache into 256 shards by page
/// and never evicts a shard's last page, so a store of a few hundred pages stays whole in
/// memory under any capacity: with `SOAK_ONLY=sign-in bash bench/soak.sh 240`, a 256 KiB
/// capacity left the memory growth of sign-ins unchanged (574 KiB per minute against 534).
/// Past the cap, memory grows by about 100 bytes per record (sled's page table) instead of
/// about 1 000. BENCHMARKS.md, "Soak", has both measurements.
///
/// Memory comes to rest once records expire as fast as they are made: sled 0.34 merges a
/// leaf left with fewer than four entries into its neighbour and reuses the freed page's id,
/// so its page table (which never shrinks) stays as large as the most pages in use at once.
/// `cargo bench --bench store_memory` (BENCHMARKS.md, "The embedded store over weeks"): at
/// 1 000 sign-ins a day under the default lifetimes, 118 MiB with 219 000 records held, and
/// 112 KiB a day more over the five weeks after the store stopped growing.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledStore {
    /// Opens (creating if needed) the store under `data_dir`, refusing if another process
    /// holds it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        // Owner-only when created here: it holds the key files and the store.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(data_dir)
            .map_err(cannot("create data directory", data_dir))?;
        let lock = take_lock(&data_dir.join("LOCK"))?;
        let store_dir = data_dir.join("store");
        discard_unfinished_snapshots(&store_dir)?;
        let db = sled::Config::new()
            .path(&store_dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(source) => cannot("open the store in", data_dir)(source),
                other => StoreError::Sled(other),
            })?;
        let trees = Table::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            db,
            trees,
            _lock: lock,
            flushing: tokio::sync::Mutex::new(()),
        })
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        // `open` opens the trees in `Table::ALL` order, which is discriminant order; the
        // default tree is an unreachable fallback that keeps this panic-free.
        self.trees.get(table as usize).unwrap_or(&self.db)
    }
}

/// Removes the snapshots sled began and never finished (`snap.<lsn>.generating`).
///
/// sled writes a snapshot of its page table while it opens, to `snap.<lsn>.generating`, and
/// renames it to `snap.<lsn>` once it is complete and synced. A process killed in between
/// leaves the unfinished file, and sled 0.34 then reads it as the newest snapshot, finds
/// its checksum wrong and refuses to open ("Read corrupted data"): one `kill -9` at the
/// wrong moment of a start, and the store would not open again. The file is by sled's own
/// protocol incomplete and nothing refers to it, and the store is not open (the caller
/// holds the lock), so it is removed and sled opens from the last finished snapshot and its
/// log, as it does after any crash. (sled's issues #1527 and #1533 describe the same.)
fn discard_unfinished_snapshots(store_dir: &Path) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(store_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(cannot("read the store directory", store_dir)(e)),
    };
    for entry in entries {
        let path = entry
            .map_err(cannot("read the store directory", store_dir))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %path.display(), "removing a snapshot the store began and never finished (the process was stopped while it opened the store)");
            std::fs::remove_file(&path).map_err(cannot("remove", &path))?;
        }
    }
    Ok(())
}

fn take_lock(path: &PathBuf) -> Result<File, StoreError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(cannot("open", path))?;
    if file.try_lock_exclusive().is_err() {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(StoreError::Locked {
            path: path
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            pid: if pid.is_empty() {
                String::new()
            } else {
                format!(" (pid {pid})")
            },
        });
    }
    // Best effort: the pid only makes the message above more helpful.
    let _ = file.set_len(0);
    let _ = file.seek(SeekFrom::Start(0));
    let _ = write!(file, "{}", std::process::id());
    let _ = file.sync_all();
    Ok(file)
}

fn encode(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entry.value.len());
    out.extend_from_slice(&entry.expires_at.unwrap_or(NEVER).to_be_bytes());
    out.extend_from_slice(&entry.value);
    out
}

fn decode(raw: &[u8]) -> Option<Entry> {
    let (exp, value) = raw.split_at_checked(8)?;
    let exp = u64::from_be_bytes(exp.try_into().ok()?);
    Some(Entry {
        expires_at: (exp != NEVER).then_some(exp),
        value: value.to_vec(),
    })
}

fn expired(raw: &[u8], now: UnixTime) -> bool {
    raw.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .is_none_or(|exp| exp < now)
}

/// How many records a sweep reads before it lets the runtime's other tasks run: one to two
/// milliseconds' work with sled's cache full (a whole sweep of 210 000 records took 0.3–0.5 s,
/// `cargo bench --bench store_memory`).
const SWEEP_SLICE: usize = 1_000;

/// Sweeps one slice of `tree`: up to [`SWEEP_SLICE`] records after `after` (from the start
/// when `None`). Returns how many it removed and the last key it read, `None` at the end.
fn sweep_slice(
    tree: &sled::Tree,
    after: Option<&sled::IVec>,
    now: UnixTime,
) -> Result<(usize, Option<sled::IVec>), StoreError> {
    let records = match after {
        None => tree.iter(),
        Some(key) => tree.range::<&[u8], _>((Bound::Excluded(key.as_ref()), Bound::Unbounded)),
    };
    let (mut removed, mut read, mut last) = (0, 0, None);
    for item in records.take(SWEEP_SLICE) {
        let (k, v) = item?;
        if expired(&v, now)
            && tree
                .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?
                .is_ok()
        {
            removed += 1;
        }
        read += 1;
        last = Some(k);
    }
    Ok((removed, last.filter(|_| read == SWEEP_SLICE)))
}

#[async_trait]
impl Store for SledStore {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        Ok(self.tree(table).get(key)?.and_then(|v| decode(&v)))
    }

    async fn put(&self, table: Table, key: &[u8], entry: Entry) -> Result<(), StoreError> {
        self.tree(table).insert(key, encode(&entry))?;
        Ok(())
    }

    async fn take(&self, table: Table, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        Ok(self.tree(table).remove(key)?.and_then(|v| decode(&v)))
    }

    async fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        expected: Option<&Entry>,
        new: Option<Entry>,
    ) -> Result<bool, StoreError> {
        let old = expected.map(encode);
        let new = new.as_ref().map(encode);
        let swapped = self.tree(table).compare_and_swap(key, old, new)?.is_ok();
        Ok(swapped)
    }

    async fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Entry)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree(table).scan_prefix(prefix) {
            let (k, v) = item?;
            if let Some(e) = decode(&v) {
                out.push((k.to_vec(), e));
            }
        }
        Ok(out)
    }

    /// Reads every record, so it takes time in proportion to the store: 0.3–0.5 s at
    /// 210 000 records once sled's cache is full. It runs on the runtime that
    /// accepts connections, so it reads a slice at a time and lets the accept loop run in
    /// between. (A thread of its own was tried: its allocations in a malloc arena of their
    /// own left 41 MiB more resident after 30 simulated days of `store_memory`.)
    async fn sweep(&self, now: UnixTime) -> Result<usize, StoreError> {
        let mut removed = 0;
        for tree in &self.trees {
            let mut after = None;
            loop {
                let (swept, last) = sweep_slice(tree, after.as_ref(), now)?;
                removed += swept;
                let Some(last) = last else { break };
                after = Some(last);
                tokio::task::yield_now().await;
            }
        }
        Ok(removed)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flushing.lock().await;
        self.db.flush_async().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_snapshot_left_unfinished_by_a_kill_does_not_keep_the_store_from_opening() {
        let dir = tempfile::tempdir().unwrap();
        let record = Entry {
            expires_at: None,
            value: b"kept".to_vec(),
        };
        {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .put(Table::Clients, b"k", record.clone())
                .await
                .unwrap();
            store.flush().await.unwrap();
        }
        // What a process killed while sled wrote its snapshot leaves: the file before its
        // rename, newer than any finished one, its checksum wrong.
        let unfinished = dir
            .path()
            .join("store")
            .join("snap.7FFFFFFFFFFFFFFF.generating");
        std::fs::write(&unfinished, [0x5a; 100]).unwrap();
        let store = SledStore::open(dir.path()).expect("the store opens");
        assert_eq!(store.get(Table::Clients, b"k").await.unwrap(), Some(record));
        assert!(!unfinished.exists());
    }

    /// The sweep runs on the runtime that accepts connections; a sweep of a large store must
    /// not hold it. On a one-thread runtime tasks run in the order they were woken: a sweep
    /// that never yielded would finish before the task spawned after it starts.
    #[tokio::test(flavor = "current_thread")]
    async fn a_sweep_leaves_the_runtimes_thread_to_requests() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let records = 3 * SWEEP_SLICE as u32 + 7;
        for i in 0..records {
            let entry = Entry {
                expires_at: Some(u64::from(i % 2)),
                value: vec![0; 100],
            };
            store
                .put(Table::Tokens, &i.to_be_bytes(), entry)
                .await
                .unwrap();
        }
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sweeping = tokio::spawn({
            let (store, order) = (store.clone(), order.clone());
            async move {
                let removed = store.sweep(1).await.unwrap();
                order.lock().unwrap().push("swept");
                removed
            }
        });
        let request = tokio::spawn({
            let order = order.clone();
            async move { order.lock().unwrap().push("request served") }
        });
        assert_eq!(sweeping.await.unwrap(), records.div_ceil(2) as usize);
        request.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["request served", "swept"]);
    }

    #[test]
    fn entry_round_trip() {
        for e in [
            Entry {
                expires_at: None,
                value: b"x".to_vec(),
            },
            Entry {
                expires_at: Some(5),
                value: vec![],
            },
        ] {
            assert_eq!(decode(&encode(&e)), Some(e));
        }
        assert!(decode(b"short").is_none());
        assert!(expired(
            &encode(&Entry {
                expires_at: Some(4),
                value: vec![]
            }),
            5
        ));
        assert!(!expired(
            &encode(&Entry {
                expires_at: None,
                value: vec![]
            }),
            5
        ));
    }
}
