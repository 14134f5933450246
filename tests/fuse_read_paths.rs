//! The file contract (DESIGN §4.2, docs/agent.md "Read paths") on each read path: FUSE
//! passthrough to a memfd per version (where the kernel offers it) and direct I/O. Pinned
//! handles, two versions open at once, grace, revoke, and what a handle whose version is gone
//! reads: ESTALE with direct I/O, end-of-file (0 bytes, never a byte of the value) with
//! passthrough. Readers include child processes (`cat`).

mod common_fuse;

use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use common_fuse::{TestMount, active, errno, fuse_available, revoked, wait_for};
use fyvault::agent::access::Policy;
use fyvault::agent::fs::{ReadPath, ReadPathChoice};
use fyvault::agent::view::Change;

/// A mount per read path this kernel can mount: direct I/O always, passthrough where offered.
fn mounts(test: &str) -> Vec<TestMount> {
    if !fuse_available(test) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for choice in [ReadPathChoice::DirectIo, ReadPathChoice::Passthrough] {
        match TestMount::with_read_path(Policy::default(), choice) {
            Some(m) => out.push(m),
            None if choice == ReadPathChoice::DirectIo => panic!("direct I/O must always mount"),
            None => eprintln!("{test}: this kernel offers no FUSE passthrough; direct I/O only"),
        }
    }
    out
}

/// What a handle whose version is no longer served reads, per read path.
fn assert_gone(m: &TestMount, r: io::Result<usize>, what: &str) {
    match (m.read_path(), r) {
        (ReadPath::DirectIo, Err(e)) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{what}"),
        (ReadPath::DirectIo, Ok(n)) => panic!("{what}: direct I/O read {n} bytes, not ESTALE"),
        (ReadPath::Passthrough, r) => {
            assert_eq!(r.expect(what), 0, "{what}: end-of-file, no byte")
        }
    }
}

fn cat(path: &std::path::Path) -> Vec<u8> {
    let out = Command::new("cat").arg(path).output().expect("run cat");
    assert!(out.status.success(), "cat {}", path.display());
    out.stdout
}

#[test]
fn auto_uses_passthrough_where_the_kernel_offers_it() {
    if !fuse_available("auto_uses_passthrough_where_the_kernel_offers_it") {
        return;
    }
    let forced = TestMount::with_read_path(Policy::default(), ReadPathChoice::Passthrough);
    let auto = TestMount::new(Policy::default());
    let direct = TestMount::with_read_path(Policy::default(), ReadPathChoice::DirectIo).unwrap();
    assert_eq!(direct.read_path(), ReadPath::DirectIo);
    let Some(forced) = forced else {
        assert_eq!(auto.read_path(), ReadPath::DirectIo, "no passthrough here");
        return;
    };
    assert_eq!(forced.read_path(), ReadPath::Passthrough);
    assert_eq!(
        auto.read_path(),
        ReadPath::Passthrough,
        "the kernel offers passthrough: auto must use it"
    );
    // And reads really bypass the agent: with the view changed behind the mount's back (no
    // wipe), a passthrough handle still reads its memfd, while direct I/O asks the view.
    for m in [&auto, &direct] {
        m.put("K", 1, b"value-one");
        let f = std::fs::File::open(m.file("K")).unwrap();
        m.state
            .view
            .apply_behind_caches(9, false, vec![revoked("K", 2)]);
        let mut buf = [0u8; 32];
        match m.read_path() {
            ReadPath::Passthrough => {
                let n = f.read_at(&mut buf, 0).unwrap();
                assert_eq!(
                    &buf[..n],
                    b"value-one",
                    "served by the kernel from the memfd"
                );
            }
            ReadPath::DirectIo => assert_eq!(errno(f.read_at(&mut buf, 0)), libc::ESTALE),
        }
    }
}

#[test]
fn pinned_handles_grace_and_revoke_on_every_read_path() {
    for m in mounts("pinned_handles_grace_and_revoke_on_every_read_path") {
        let path = m.read_path();
        m.put("PIN", 1, b"version-one");
        m.put("GONE", 1, b"to-be-revoked");
        let mut pinned = std::fs::File::open(m.file("PIN")).unwrap();
        let mut revoked_fd = std::fs::File::open(m.file("GONE")).unwrap();
        let mut first = [0u8; 8];
        pinned.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"version-", "{path:?}");

        // Rotation with a short grace: the open handle keeps v1, new opens get v2 (also from
        // another process), `.previous` shows v1; handles on both versions read their own.
        let mut changes = m.state.view.subscribe();
        m.apply(vec![active(
            "PIN",
            2,
            b"version-two-longer",
            Some((1, b"version-one", Duration::from_millis(400))),
        )]);
        let mut rest = Vec::new();
        pinned.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"one", "{path:?}");
        assert_eq!(cat(&m.file("PIN")), b"version-two-longer", "{path:?}");
        let current = std::fs::File::open(m.file("PIN")).unwrap();
        let previous = std::fs::File::open(m.previous("PIN")).unwrap();
        let mut buf = [0u8; 64];
        let n = current.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"version-two-longer", "{path:?}");
        let n = previous.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"version-one", "{path:?}");
        assert_eq!(cat(&m.previous("PIN")), b"version-one", "{path:?}");

        // The grace ends: both v1 handles are done; the v2 handle reads on. Lookups judge the
        // deadline by the clock; the memfd of v1 is wiped when the agent's expiry task applies
        // the end (on its timer, at the deadline): wait for that change to be published.
        wait_for("grace of PIN v1 over", || {
            std::fs::metadata(m.previous("PIN")).is_err()
        });
        wait_for("the expiry of PIN v1 applied", || {
            std::iter::from_fn(|| changes.try_recv().ok()).any(|c| {
                c == Change::PreviousExpired {
                    name: "PIN".into(),
                    version: 1,
                }
            })
        });
        assert_gone(&m, pinned.read_at(&mut buf, 0), "pinned v1 after grace");
        assert_gone(
            &m,
            previous.read_at(&mut buf, 0),
            ".previous v1 after grace",
        );
        let n = current.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"version-two-longer", "{path:?}");

        // Revoke: the name is gone at once and the open handle reads nothing of the value.
        m.apply(vec![revoked("GONE", 2)]);
        assert_eq!(errno(std::fs::metadata(m.file("GONE"))), libc::ENOENT);
        assert_eq!(errno(std::fs::File::open(m.file("GONE"))), libc::ENOENT);
        let mut b = Vec::new();
        assert_gone(&m, revoked_fd.read_to_end(&mut b), "revoked handle");
        assert!(b.is_empty(), "{path:?}: no byte of a revoked value");
        assert_gone(
            &m,
            revoked_fd.read_at(&mut buf, 0),
            "revoked handle, from 0",
        );
        // A revoked name may come back with a new version.
        m.put("GONE", 3, b"back");
        assert_eq!(std::fs::read(m.file("GONE")).unwrap(), b"back", "{path:?}");
        drop((pinned, revoked_fd, current, previous));
        wait_for("all handles released", || m.state.view.open_handles() == 0);
    }
}

/// Passthrough's memfds: none until a version is first opened; the current version's is kept
/// for later opens; a previous version's lives only while a handle holds it (DESIGN §4.2 holds
/// throughout: each handle reads its own version).
#[test]
fn memfds_are_made_at_first_open_and_kept_only_while_current_or_held() {
    let test = "memfds_are_made_at_first_open_and_kept_only_while_current_or_held";
    let Some(m) = mounts(test)
        .into_iter()
        .find(|m| m.read_path() == ReadPath::Passthrough)
    else {
        eprintln!("{test}: no passthrough here; skipped");
        return;
    };
    m.put("A", 1, b"one");
    m.put("B", 1, b"bee");
    assert!(std::fs::read_dir(&m.path).unwrap().count() >= 2);
    assert_eq!(m.memfds(), 0, "a sync or a listing makes no memfd");

    assert_eq!(cat(&m.file("A")), b"one");
    wait_for("A's handle released", || m.state.view.open_handles() == 0);
    assert_eq!(m.memfds(), 1, "the current version's memfd is kept");
    assert_eq!(cat(&m.file("A")), b"one");
    wait_for("A's handle released", || m.state.view.open_handles() == 0);
    assert_eq!(m.memfds(), 1, "and reused");

    // Rotation with a long grace: v1 is idle and no longer current, so its memfd goes at once.
    m.apply(vec![active(
        "A",
        2,
        b"two",
        Some((1, b"one", Duration::from_secs(600))),
    )]);
    assert_eq!(
        m.memfds(),
        0,
        "an idle, no longer current version keeps no memfd"
    );

    // `.previous` opened: a memfd for v1 again, held by its handle, gone with it.
    let previous = std::fs::File::open(m.previous("A")).unwrap();
    let current = std::fs::File::open(m.file("A")).unwrap();
    let mut buf = [0u8; 16];
    let n = previous.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"one");
    let n = current.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"two");
    assert_eq!(m.memfds(), 2);
    drop(previous);
    wait_for("v1's memfd released with its last handle", || {
        m.memfds() == 1
    });
    let n = current.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"two", "the current handle reads on");
    drop(current);
    wait_for("all handles released", || m.state.view.open_handles() == 0);
    assert_eq!(m.memfds(), 1, "the current version's memfd stays");
    assert_eq!(
        cat(&m.previous("A")),
        b"one",
        "v1 still readable in its grace"
    );
}
