//! Persistence: one RocksDB instance per member, one column family per concern.
//!
//! | column family | key                         | value                          |
//! |---------------|-----------------------------|--------------------------------|
//! | `log`         | log index, u64 big-endian   | bincode `Entry`                |
//! | `raft_meta`   | `vote`, `committed`, `purged`, `sm/*` | bincode              |
//! | `state`       | user key                    | bincode [`KeyValue`](crate::KeyValue) |
//! | `history`     | revision (u64 BE) ++ index (u32 BE) | bincode [`Event`](crate::Event) with prev value |
//! | `lease`       | lease id (u64 BE)           | bincode lease record           |
//!
//! The data dir holds a `FORMAT` file naming the layout version, a lock file
//! held while the member runs, and the RocksDB files under `db/`.

pub mod log_store;
pub mod mvcc;
pub mod snapshot;
pub mod state_machine;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fs2::FileExt;
use rocksdb::{ColumnFamilyDescriptor, Options, DB};

use crate::error::StoreError;

/// Column family of the Raft log.
pub const CF_LOG: &str = "log";
/// Column family of Raft metadata (vote, committed, purged) and of the state
/// machine's own metadata (applied log id, membership, revision).
pub const CF_RAFT_META: &str = "raft_meta";
/// Column family of the current keys.
pub const CF_STATE: &str = "state";
/// Column family of the revision-ordered history that watches replay.
pub const CF_HISTORY: &str = "history";
/// Column family of leases.
pub const CF_LEASE: &str = "lease";

const ALL_CFS: [&str; 5] = [CF_LOG, CF_RAFT_META, CF_STATE, CF_HISTORY, CF_LEASE];

/// The layout version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_FILE: &str = "FORMAT";
const LOCK_FILE: &str = "orch.lock";
const DB_DIR: &str = "db";

fn format_line() -> String {
    format!("orch-raft-store {FORMAT_VERSION}\n")
}

/// An open data dir: the RocksDB handle and the lock that keeps other
/// processes out while this member runs.
pub struct DataDir {
    /// The database.
    pub db: Arc<DB>,
    path: PathBuf,
    _lock: fs::File,
}

impl DataDir {
    /// The data dir's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens (or creates, when `path` is missing or empty) a member's data dir.
///
/// Refuses, without changing anything on disk, a dir that is not an orch data
/// dir or of another format version, a dir locked by a running member, and a
/// database RocksDB reports as corrupt.
pub fn open_data_dir(path: &Path) -> Result<DataDir, StoreError> {
    let display = path.display().to_string();
    let is_new = check_format(path)?;
    if is_new {
        fs::create_dir_all(path)
            .map_err(|e| StoreError::storage(format!("creating {display}"), e))?;
    }
    let lock = lock_dir(path)?;
    if is_new {
        let mut file = fs::File::create(path.join(FORMAT_FILE))
            .map_err(|e| StoreError::storage("writing FORMAT", e))?;
        file.write_all(format_line().as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| StoreError::storage("writing FORMAT", e))?;
    }
    let db = open_db(&path.join(DB_DIR), is_new)?;
    Ok(DataDir {
        db: Arc::new(db),
        path: path.to_path_buf(),
        _lock: lock,
    })
}

/// Returns true for a new (missing or empty) dir, Ok(false) for a dir of our
/// format, an error otherwise.
fn check_format(path: &Path) -> Result<bool, StoreError> {
    let display = path.display().to_string();
    if !path.exists() {
        return Ok(true);
    }
    let format_path = path.join(FORMAT_FILE);
    match fs::read_to_string(&format_path) {
        Ok(content) if content == format_line() => Ok(false),
        Ok(content) => Err(StoreError::UnknownFormat {
            path: display,
            detail: format!(
                "FORMAT says {:?}, this orch reads {:?}",
                content.trim(),
                format_line().trim()
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut entries = fs::read_dir(path)
                .map_err(|e| StoreError::storage(format!("listing {display}"), e))?;
            if entries.next().is_none() {
                Ok(true)
            } else {
                Err(StoreError::UnknownFormat {
                    path: display,
                    detail: "directory is not empty and has no FORMAT file; not an orch data dir"
                        .into(),
                })
            }
        }
        Err(e) => Err(StoreError::storage(
            format!("reading {}", format_path.display()),
            e,
        )),
    }
}

fn lock_dir(path: &Path) -> Result<fs::File, StoreError> {
    let lock_path = path.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::storage(format!("opening {}", lock_path.display()), e))?;
    file.try_lock_exclusive()
        .map_err(|_| StoreError::DataDirLocked {
            path: path.display().to_string(),
        })?;
    Ok(file)
}

fn open_db(path: &Path, create: bool) -> Result<DB, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(create);
    opts.create_missing_column_families(create);
    opts.set_paranoid_checks(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_keep_log_file_num(4);
    opts.increase_parallelism(2);
    let cfs = ALL_CFS.iter().map(|name| {
        let mut cf_opts = Options::default();
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        ColumnFamilyDescriptor::new(*name, cf_opts)
    });
    DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("lock") {
            StoreError::DataDirLocked {
                path: path.display().to_string(),
            }
        } else if msg.contains("Corruption")
            || msg.contains("does not exist")
            || msg.contains("Invalid argument")
        {
            StoreError::corrupt(format!("opening RocksDB at {}", path.display()), msg)
        } else {
            StoreError::storage(format!("opening RocksDB at {}", path.display()), msg)
        }
    })
}

/// Reads and decodes one `raft_meta` value (the type's default when absent),
/// from the live database or from a RocksDB snapshot of it.
pub fn read_meta<T: serde::de::DeserializeOwned + Default>(
    db: &DB,
    snapshot: Option<&rocksdb::Snapshot<'_>>,
    key: &[u8],
) -> Result<T, StoreError> {
    let family = cf(db, CF_RAFT_META);
    let bytes = match snapshot {
        Some(snapshot) => snapshot.get_cf(family, key),
        None => db.get_cf(family, key),
    }
    .map_err(|e| StoreError::storage("reading metadata", e))?;
    match bytes {
        Some(bytes) => crate::codec::decode(&bytes, "metadata"),
        None => Ok(T::default()),
    }
}

/// Looks up a column family that [`open_data_dir`] always creates.
pub fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .unwrap_or_else(|| panic!("column family {name} is created at open"))
}
