//! Group commit: every write of the store goes through one writer thread, which runs the writes
//! waiting at that moment together in one SQLite transaction and makes them durable with one
//! `COMMIT` — one WAL fsync (`synchronous=FULL`) for the whole group instead of one per write.
//!
//! - Each write runs in its own savepoint: a write that fails (a business refusal such as
//!   `NotOwner`, or a statement error) is rolled back alone; the others of its group commit.
//! - Writes run one after another in arrival order, exactly as before, so versions and
//!   revisions stay consecutive.
//! - A caller gets its answer only after the group's `COMMIT` returned: when a push is answered
//!   201, it is on disk. If the commit fails, every write of the group fails with that error and
//!   none of them is applied. Durability is unchanged; only the fsyncs are shared.
//!
//! While one group commits, the next one gathers; under load a group holds every write that
//! arrived during the previous fsync (at most [`MAX_GROUP`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::be;
use crate::vault::store::StoreError;

/// Most writes committed together.
pub(super) const MAX_GROUP: usize = 256;

/// One write waiting for the writer thread.
trait WriteJob: Send {
    /// Runs inside the group's transaction (in its own savepoint); true if it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: the write's own result, or `group_failed` when its group could not
    /// be committed (then nothing of it was applied).
    fn finish(self: Box<Self>, group_failed: Option<&str>);
}

struct Typed<T, F> {
    f: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for Typed<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let r = catch_unwind(AssertUnwindSafe(|| f(conn)))
            .unwrap_or_else(|_| Err(StoreError::Backend("a storage write panicked".into())));
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, group_failed: Option<&str>) {
        let out = match (self.result, group_failed) {
            // A write's own refusal stands (nothing of it was applied either way).
            (Some(Err(e)), _) => Err(e),
            (_, Some(why)) => Err(StoreError::Backend(why.to_owned())),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(StoreError::Backend("the write did not run".into())),
        };
        // The caller may have gone away (request cancelled): fine.
        let _ = self.reply.send(out);
    }
}

/// The sending side of the writer thread; the thread ends when every clone of the store is
/// dropped.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Box<dyn WriteJob>>,
}

impl Writer {
    /// Starts the writer thread over `conn` (the store's read-write connection).
    pub(super) fn start(conn: Arc<Mutex<Connection>>) -> Result<Writer, StoreError> {
        let (jobs, rx) = mpsc::channel::<Box<dyn WriteJob>>();
        std::thread::Builder::new()
            .name("fyvault-sqlite-writer".into())
            .spawn(move || writer_loop(&conn, &rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Runs `f` in the next group transaction; resolves once that group committed (or failed).
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Box::new(Typed {
            f: Some(f),
            result: None,
            reply,
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Backend("the storage writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the storage writer has stopped".into()))?
    }
}

fn writer_loop(conn: &Mutex<Connection>, rx: &mpsc::Receiver<Box<dyn WriteJob>>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        run_group(&conn, group);
    }
}

/// One transaction for the whole group, a savepoint per write, one commit.
fn run_group(conn: &Connection, mut group: Vec<Box<dyn WriteJob>>) {
    let failed = |group: Vec<Box<dyn WriteJob>>, why: String| {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        tracing::error!(error = %why, writes = group.len(), "storage: a group of writes failed");
        for job in group {
            job.finish(Some(&why));
        }
    };
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return failed(group, be(e).to_string());
    }
    for job in &mut group {
        if let Err(e) = conn.execute_batch("SAVEPOINT w") {
            return failed(group, be(e).to_string());
        }
        let ok = job.run(conn);
        if conn.is_autocommit() {
            // The statement error ended the whole transaction (SQLite does so for some I/O
            // and full-disk errors): nothing of the group is left to commit.
            return failed(
                group,
                "storage failure: the transaction was aborted by an I/O error".into(),
            );
        }
        let end = if ok {
            "RELEASE w"
        } else {
            "ROLLBACK TO w; RELEASE w"
        };
        if let Err(e) = conn.execute_batch(end) {
            return failed(group, be(e).to_string());
        }
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            for job in group {
                job.finish(None);
            }
        }
        Err(e) => failed(group, be(e).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (tempfile::TempDir, Writer, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);",
        )
        .unwrap();
        let w = Writer::start(Arc::new(Mutex::new(conn))).unwrap();
        (dir, w, path)
    }

    fn insert(k: i64) -> impl FnOnce(&Connection) -> Result<i64, StoreError> + Send + 'static {
        move |c: &Connection| {
            c.execute("INSERT INTO t (k, v) VALUES (?1, 'x')", [k])
                .map_err(be)?;
            Ok(k)
        }
    }

    fn count(path: &std::path::Path) -> i64 {
        // A connection of its own: sees only what was committed.
        Connection::open(path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_commit_and_are_visible_once_answered() {
        let (_d, w, path) = writer();
        let tasks: Vec<_> = (0..200)
            .map(|k| {
                let w = w.clone();
                tokio::spawn(async move { w.write(insert(k)).await })
            })
            .collect();
        for (k, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), Ok(k as i64));
        }
        assert_eq!(count(&path), 200);
        // Answered means committed: another connection sees it at once.
        assert_eq!(w.write(insert(1000)).await, Ok(1000));
        assert_eq!(count(&path), 201);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_is_rolled_back_alone() {
        let (_d, w, path) = writer();
        w.write(insert(1)).await.unwrap();
        let mut tasks = Vec::new();
        for k in 2..50 {
            let w1 = w.clone();
            tasks.push(tokio::spawn(async move { w1.write(insert(k)).await }));
            // Writes half-done and then refused (a row inserted, then an error), and a
            // duplicate key: neither leaves anything behind.
            let w2 = w.clone();
            tasks.push(tokio::spawn(async move {
                w2.write(move |c: &Connection| {
                    c.execute("INSERT INTO t (k, v) VALUES (?1, 'partial')", [k + 10_000])
                        .map_err(be)?;
                    Err::<i64, _>(StoreError::NotOwner)
                })
                .await
            }));
            let w3 = w.clone();
            tasks.push(tokio::spawn(async move { w3.write(insert(1)).await }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(StoreError::NotOwner) | Err(StoreError::Backend(_)) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(ok, 48);
        assert_eq!(count(&path), 49);
        let partial: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM t WHERE v = 'partial'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(partial, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_write_fails_alone_and_the_writer_goes_on() {
        let (_d, w, path) = writer();
        let r = w
            .write(|_c: &Connection| -> Result<(), StoreError> { panic!("boom") })
            .await;
        assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
        assert_eq!(w.write(insert(7)).await, Ok(7));
        assert_eq!(count(&path), 1);
    }
}
