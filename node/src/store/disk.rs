//! The durable copy of the zone's resources: one redb file in the data dir.
//!
//! Every write is one redb transaction committed with immediate durability (fsync) before the
//! caller is answered. Records are the JSON encoding of `Versioned<Resource>` (tombstones
//! included), keyed by the resource key; the file also holds the highest HLC timestamp this node
//! has seen so a restart never issues a smaller one.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// File name of the store inside the data dir.
pub const FILE_NAME: &str = "store.redb";

/// A store error; start-up turns it into a clear message, the API into a 503.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The database file cannot be opened (corrupt, unreadable, locked by another process).
    #[error("cannot open the store {path}: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb said.
        message: String,
    },
    /// A read or write failed.
    #[error("store {op} failed: {message}")]
    Io {
        /// Which operation.
        op: &'static str,
        /// What redb said.
        message: String,
    },
}

fn io(op: &'static str) -> impl Fn(&dyn std::fmt::Display) -> DiskError {
    move |e| DiskError::Io {
        op,
        message: e.to_string(),
    }
}

/// The redb-backed record store.
pub struct Disk {
    db: Database,
}

impl Disk {
    /// Opens (or creates) `<dir>/store.redb`. A corrupt or unreadable file is an error, never
    /// an empty store. The file holds Secrets and CA keys: it is made mode 0600 (owner only),
    /// and a directory created here 0700.
    pub fn open(dir: &Path) -> Result<Disk, DiskError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let path = dir.join(FILE_NAME);
        let open_error = |message: String| DiskError::Open {
            path: path.clone(),
            message,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| open_error(e.to_string()))?;
        let db = Database::create(&path).map_err(|e| open_error(e.to_string()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| open_error(e.to_string()))?;
        // Make sure both tables exist and the file is readable end to end.
        let txn = db.begin_write().map_err(|e| open_error(e.to_string()))?;
        {
            txn.open_table(RECORDS)
                .map_err(|e| open_error(e.to_string()))?;
            txn.open_table(META)
                .map_err(|e| open_error(e.to_string()))?;
        }
        txn.commit().map_err(|e| open_error(e.to_string()))?;
        let disk = Disk { db };
        disk.load().map_err(|e| open_error(e.to_string()))?;
        Ok(disk)
    }

    /// Every record, in key order.
    pub fn load(&self) -> Result<Vec<(String, Vec<u8>)>, DiskError> {
        let txn = self.db.begin_read().map_err(|e| io("read")(&e))?;
        let table = txn.open_table(RECORDS).map_err(|e| io("read")(&e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| io("read")(&e))? {
            let (k, v) = row.map_err(|e| io("read")(&e))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, DiskError> {
        let txn = self.db.begin_read().map_err(|e| io("read")(&e))?;
        let table = txn.open_table(META).map_err(|e| io("read")(&e))?;
        Ok(table
            .get(key)
            .map_err(|e| io("read")(&e))?
            .map(|v| v.value().to_vec()))
    }

    /// Writes records (`None` removes one) and metadata in one fsynced transaction.
    pub fn write<V: AsRef<[u8]>>(
        &self,
        records: &[(String, Option<V>)],
        meta: &[(&str, Vec<u8>)],
    ) -> Result<(), DiskError> {
        let txn = self.db.begin_write().map_err(|e| io("write")(&e))?;
        {
            let mut table = txn.open_table(RECORDS).map_err(|e| io("write")(&e))?;
            for (key, value) in records {
                match value {
                    Some(v) => {
                        table
                            .insert(key.as_str(), v.as_ref())
                            .map_err(|e| io("write")(&e))?;
                    }
                    None => {
                        table.remove(key.as_str()).map_err(|e| io("write")(&e))?;
                    }
                }
            }
            let mut table = txn.open_table(META).map_err(|e| io("write")(&e))?;
            for (key, value) in meta {
                table
                    .insert(*key, value.as_slice())
                    .map_err(|e| io("write")(&e))?;
            }
        }
        txn.commit().map_err(|e| io("commit")(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_store_file_is_for_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let _disk = super::Disk::open(&data).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data.join(super::FILE_NAME)), 0o600);
        assert_eq!(mode(&data), 0o700);
    }

    use super::*;

    #[test]
    fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = Disk::open(dir.path()).unwrap();
            disk.write(
                &[
                    ("a".into(), Some(b"1".to_vec())),
                    ("b".into(), Some(b"2".to_vec())),
                ],
                &[("hlc", b"42".to_vec())],
            )
            .unwrap();
            disk.write::<Vec<u8>>(&[("a".into(), None)], &[]).unwrap();
        }
        let disk = Disk::open(dir.path()).unwrap();
        assert_eq!(disk.load().unwrap(), vec![("b".to_string(), b"2".to_vec())]);
        assert_eq!(disk.meta("hlc").unwrap(), Some(b"42".to_vec()));
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), vec![0x5au8; 8192]).unwrap();
        let err = Disk::open(dir.path()).err().expect("must fail");
        let text = err.to_string();
        assert!(
            text.contains("cannot open the store") && text.contains(FILE_NAME),
            "{text}"
        );
    }
}
