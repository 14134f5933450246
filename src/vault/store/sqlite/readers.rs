//! A small pool of read-only connections. In WAL mode a reader neither waits for the writer
//! (even during its fsync) nor blocks it, and each read transaction sees every commit made
//! before it started — so a read issued after a write was answered sees that write.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags};

use super::be;
use crate::vault::store::StoreError;

/// Read connections: enough for the cores that run blocking tasks, at most 4.
fn pool_size() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4)
}

pub(super) struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl Readers {
    pub(super) fn open(path: &Path) -> Result<Readers, StoreError> {
        let conns = (0..pool_size())
            .map(|_| {
                // Opened read-write (WAL readers use the shared-memory index), but refusing
                // every write.
                let c = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(be)?;
                c.busy_timeout(std::time::Duration::from_secs(10))
                    .map_err(be)?;
                c.execute_batch("PRAGMA query_only=ON").map_err(be)?;
                super::tune(&c)?;
                Ok(Mutex::new(c))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Readers {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `f` on a free connection (or waits for one). Blocking.
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.take();
        f(&guard)
    }

    fn take(&self) -> MutexGuard<'_, Connection> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.conns.len();
        for i in 0..n {
            if let Ok(g) = self.conns[(start + i) % n].try_lock() {
                return g;
            }
        }
        self.conns[start % n]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}
