//! The embedded store: one sled database under the data directory.
//!
//! Each [`Table`] is a sled tree. A stored value is the expiry (8 bytes, big-endian,
//! `u64::MAX` for never) followed by the record bytes, so the sweeper can judge expiry without
//! decoding records. sled allows one process per database; a `LOCK` file taken before opening
//! turns a second process into a clear startup error instead of a sled I/O message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
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
/// this much, pages are read back from the file (and the kernel's page cache). Measured:
/// about 6 KiB of store per sign-in (bench/soak.sh), so this keeps some ten thousand
/// sign-ins in memory.
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
        let db = sled::Config::new()
            .path(data_dir.join("store"))
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

    async fn sweep(&self, now: UnixTime) -> Result<usize, StoreError> {
        let mut removed = 0;
        for tree in &self.trees {
            for item in tree.iter() {
                let (k, v) = item?;
                if expired(&v, now)
                    && tree
                        .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?
                        .is_ok()
                {
                    removed += 1;
                }
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
