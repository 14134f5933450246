//! The file contract on a real mount (DESIGN §4.2): reading, listing, `.env`, `.previous`,
//! rotation, pinned handles, revoke.

mod common_fuse;
mod common_interop;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common_fuse::{TestMount, active, errno, fuse_available, logs, revoked, wait_for};
use fyvault::agent::access::Policy;
use fyvault::agent::dotenv::{self, Form};
use fyvault::secret::Secret;

const HOUR: Duration = Duration::from_secs(3600);

fn mount(test: &str) -> Option<TestMount> {
    fuse_available(test).then(|| TestMount::new(Policy::new(Some(4242), vec![])))
}

#[test]
fn fuse_reads_exact_bytes_and_lists_names() {
    let Some(m) = mount("fuse_reads_exact_bytes_and_lists_names") else {
        return;
    };
    m.put("STRIPE_SK", 1, b"sk_live_123");
    m.put("BINARY", 1, b"\x00\xffraw\nno-newline-added");
    m.put("EMPTYISH", 1, b" ");

    assert_eq!(std::fs::read(m.file("STRIPE_SK")).unwrap(), b"sk_live_123");
    assert_eq!(
        std::fs::read(m.file("BINARY")).unwrap(),
        b"\x00\xffraw\nno-newline-added"
    );
    let out = Command::new("cat")
        .arg(m.file("STRIPE_SK"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"sk_live_123");

    // Reads at offsets (pread) see the same bytes.
    let f = std::fs::File::open(m.file("STRIPE_SK")).unwrap();
    let mut buf = [0u8; 4];
    let n = std::os::unix::fs::FileExt::read_at(&f, &mut buf, 3).unwrap();
    assert_eq!(&buf[..n], b"live");
    assert_eq!(
        std::os::unix::fs::FileExt::read_at(&f, &mut buf, 100).unwrap(),
        0
    );
    drop(f);

    let mut names: Vec<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".env",
            ".env.sh",
            ".previous",
            "BINARY",
            "EMPTYISH",
            "STRIPE_SK"
        ]
    );
    assert_eq!(
        std::fs::read_dir(m.path.join(".previous")).unwrap().count(),
        0
    );

    // Shape: 0440 root:policy-group, exact sizes; dirs 0555.
    let md = std::fs::metadata(m.file("STRIPE_SK")).unwrap();
    assert!(md.is_file());
    assert_eq!(md.mode() & 0o7777, 0o440);
    assert_eq!((md.uid(), md.gid()), (0, 4242));
    assert_eq!(md.len(), 11);
    let root = std::fs::metadata(&m.path).unwrap();
    assert!(root.is_dir());
    assert_eq!(root.mode() & 0o7777, 0o555);
    let ls = Command::new("ls").arg("-la").arg(&m.path).output().unwrap();
    let ls = String::from_utf8(ls.stdout).unwrap();
    assert!(
        ls.lines()
            .any(|l| l.starts_with("-r--r-----") && l.ends_with(" STRIPE_SK")),
        "{ls}"
    );

    // Mount options as promised.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(m.path.to_str().unwrap()))
        .expect("mount listed");
    let opts: Vec<&str> = line.split(' ').nth(3).unwrap().split(',').collect();
    for o in ["ro", "nosuid", "nodev", "noexec", "allow_other"] {
        assert!(opts.contains(&o), "{o} missing in {line}");
    }
    assert!(!opts.contains(&"default_permissions"), "{line}");
    assert!(line.starts_with("fyvault "), "{line}");
}

#[test]
fn fuse_refuses_names_outside_the_table() {
    let Some(m) = mount("fuse_refuses_names_outside_the_table") else {
        return;
    };
    m.put("REAL", 1, b"v");
    for (name, want) in [
        ("NOPE", libc::ENOENT),
        ("lowercase", libc::ENOENT),
        ("etc", libc::ENOENT),
        ("A-B", libc::ENOENT),
    ] {
        assert_eq!(errno(std::fs::metadata(m.file(name))), want, "{name}");
    }
    let long = "A".repeat(129);
    assert_eq!(errno(std::fs::metadata(m.file(&long))), libc::ENAMETOOLONG);
    assert_eq!(
        errno(std::fs::metadata(m.path.join("REAL/x"))),
        libc::ENOTDIR
    );
    // `..` goes to the host parent (the kernel resolves it), never into a secret.
    assert!(
        std::fs::metadata(m.path.join(".previous/../REAL"))
            .unwrap()
            .is_file()
    );
    assert_eq!(
        errno(std::fs::metadata(m.path.join(".previous/.env"))),
        libc::ENOENT
    );
}

#[test]
fn fuse_rotation_new_cat_sees_whole_value_and_stat_new_size() {
    let Some(m) = mount("fuse_rotation_new_cat_sees_whole_value_and_stat_new_size") else {
        return;
    };
    m.put("KEY", 1, b"short");
    assert_eq!(std::fs::metadata(m.file("KEY")).unwrap().len(), 5);
    assert_eq!(std::fs::read(m.file("KEY")).unwrap(), b"short");
    let long: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    m.apply(vec![active("KEY", 2, &long, Some((1, b"short", HOUR)))]);
    // Right away, no waiting: the size and the content are the new ones.
    assert_eq!(std::fs::metadata(m.file("KEY")).unwrap().len(), 20_000);
    let out = Command::new("cat").arg(m.file("KEY")).output().unwrap();
    assert_eq!(out.stdout, long);
    // And back to a shorter one.
    m.apply(vec![active("KEY", 3, b"mid-size", Some((2, &long, HOUR)))]);
    assert_eq!(std::fs::metadata(m.file("KEY")).unwrap().len(), 8);
    assert_eq!(std::fs::read(m.file("KEY")).unwrap(), b"mid-size");
    assert_eq!(std::fs::read(m.previous("KEY")).unwrap(), long);
    assert_eq!(std::fs::metadata(m.previous("KEY")).unwrap().len(), 20_000);
}

#[test]
fn fuse_previous_during_and_after_grace() {
    let Some(m) = mount("fuse_previous_during_and_after_grace") else {
        return;
    };
    m.put("LONG", 1, b"old-long");
    m.put("SHORT", 1, b"old-short");
    m.apply(vec![
        active("LONG", 2, b"new-long", Some((1, b"old-long", HOUR))),
        active(
            "SHORT",
            2,
            b"new-short",
            Some((1, b"old-short", Duration::from_millis(200))),
        ),
    ]);
    assert_eq!(std::fs::read(m.file("LONG")).unwrap(), b"new-long");
    assert_eq!(std::fs::read(m.previous("LONG")).unwrap(), b"old-long");
    let listed: Vec<String> = std::fs::read_dir(m.path.join(".previous"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(listed.contains(&"LONG".to_string()), "{listed:?}");

    // SHORT's grace ends: its previous file vanishes, the current one stays.
    wait_for(".previous/SHORT gone", || {
        std::fs::metadata(m.previous("SHORT")).is_err()
    });
    assert_eq!(errno(std::fs::read(m.previous("SHORT"))), libc::ENOENT);
    assert_eq!(std::fs::read(m.file("SHORT")).unwrap(), b"new-short");
    let listed: Vec<String> = std::fs::read_dir(m.path.join(".previous"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, ["LONG"]);
    // A rotation without a previous ends LONG's grace too.
    m.apply(vec![active("LONG", 3, b"newest", None)]);
    assert_eq!(errno(std::fs::metadata(m.previous("LONG"))), libc::ENOENT);
}

// Pinned handles, grace and revoke on each read path: `tests/fuse_read_paths.rs`.

/// `.env` and `.env.sh` through the mount: the bytes `dotenv::render` gives, read by the real
/// parsers (python-dotenv, Node's dotenv, bash and dash) as docs/fuse.md promises.
#[test]
fn fuse_env_files_read_back_through_real_parsers() {
    let Some(m) = mount("fuse_env_files_read_back_through_real_parsers") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("canary");
    let cases = common_interop::value_classes(&canary);
    for c in &cases {
        m.put(&c.name, 1, &c.value);
    }
    let secrets: Vec<(&str, Secret)> = cases
        .iter()
        .map(|c| (c.name.as_str(), Secret::copy_from(&c.value)))
        .collect();
    for (file, form) in [(".env", Form::Dotenv), (".env.sh", Form::Shell)] {
        let path = m.file(file);
        let content = std::fs::read(&path).unwrap();
        let want = dotenv::render(form, secrets.iter().map(|(n, s)| (*n, s)));
        assert!(
            content == want.expose(),
            "{file} differs from the rendering"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            content.len() as u64
        );
    }
    common_interop::check_dotenv_file(&m.file(".env"), &cases);
    common_interop::check_shell_file(&m.file(".env.sh"), &cases);
    assert!(!canary.exists(), "a value ran a command");
}

#[test]
fn fuse_dotenv_is_a_snapshot_that_goes_stale() {
    let Some(m) = mount("fuse_dotenv_is_a_snapshot_that_goes_stale") else {
        return;
    };
    m.put("ONE", 1, b"1");
    m.put("TWO", 1, b"2");
    let mut f = std::fs::File::open(m.file(".env")).unwrap();
    m.put("THREE", 1, b"3");
    // The open snapshot does not change; a new open sees the new secret.
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "ONE='1'\nTWO='2'\n");
    assert_eq!(
        std::fs::read_to_string(m.file(".env")).unwrap(),
        "ONE='1'\nTHREE='3'\nTWO='2'\n"
    );
    // Revoking an included secret makes the snapshot stale.
    m.apply(vec![revoked("ONE", 2)]);
    let mut b = [0u8; 4];
    let e = std::os::unix::fs::FileExt::read_at(&f, &mut b, 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE));
    assert_eq!(
        std::fs::metadata(m.file(".env")).unwrap().len(),
        "THREE='3'\nTWO='2'\n".len() as u64
    );
}

#[test]
fn fuse_policy_reload_shows_the_new_group_at_once() {
    let Some(m) = mount("fuse_policy_reload_shows_the_new_group_at_once") else {
        return;
    };
    m.put("GROUPED", 1, b"value");
    // Attributes are cached by the kernel now (file and directory)...
    assert_eq!(std::fs::metadata(m.file("GROUPED")).unwrap().gid(), 4242);
    assert_eq!(std::fs::metadata(&m.path).unwrap().gid(), 4242);
    // ...and a policy reload drops them before it returns.
    m.state.set_policy(Policy::new(Some(4343), vec![]));
    assert_eq!(std::fs::metadata(m.file("GROUPED")).unwrap().gid(), 4343);
    assert_eq!(std::fs::metadata(&m.path).unwrap().gid(), 4343);
    assert_eq!(std::fs::metadata(m.path.join(".env")).unwrap().gid(), 4343);
}

/// Secret files' attributes are never cached by the kernel (its cache is shared by all
/// callers, and size and time are for callers the policy admits): even a change made behind
/// the mount's back (no invalidation) shows at the next `stat`.
#[test]
fn fuse_stat_always_asks_the_agent() {
    let Some(m) = mount("fuse_stat_always_asks_the_agent") else {
        return;
    };
    m.put("CACHED", 1, b"12345");
    assert_eq!(std::fs::metadata(m.file("CACHED")).unwrap().len(), 5);
    m.state
        .view
        .apply_behind_caches(100, false, vec![active("CACHED", 2, b"1234567", None)]);
    assert_eq!(std::fs::metadata(m.file("CACHED")).unwrap().len(), 7);
    m.apply(vec![active("CACHED", 3, b"123456789", None)]);
    assert_eq!(std::fs::metadata(m.file("CACHED")).unwrap().len(), 9);
}

#[test]
fn fuse_large_directory_lists_every_name_once() {
    let Some(m) = mount("fuse_large_directory_lists_every_name_once") else {
        return;
    };
    // Many more entries than fit in one READDIR reply (about 4 KiB each).
    let names: Vec<String> = (0..2500).map(|i| format!("SECRET_{i:05}")).collect();
    m.apply(names.iter().map(|n| active(n, 1, b"v", None)).collect());
    let listed: Vec<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut want: Vec<String> = vec![".previous".into(), ".env".into(), ".env.sh".into()];
    want.extend(names.iter().cloned());
    assert_eq!(listed.len(), want.len(), "entries listed");
    if let Some(i) = (0..want.len()).find(|i| listed[*i] != want[*i]) {
        panic!("entry {i}: listed {:?}, expected {:?}", listed[i], want[i]);
    }
    // `ls -l` style: every listed secret resolves.
    assert_eq!(std::fs::metadata(m.file("SECRET_02499")).unwrap().len(), 1);
}

/// `isatty` (an ioctl) and `SEEK_DATA`/`SEEK_HOLE` get a regular file's answers, and fuser logs
/// no "Not Implemented" warning for them.
#[test]
fn fuse_ioctl_and_lseek_are_answered_quietly() {
    use std::os::fd::AsRawFd;
    let Some(m) = mount("fuse_ioctl_and_lseek_are_answered_quietly") else {
        return;
    };
    m.put("IOCTL", 1, b"hello");
    let f = std::fs::File::open(m.file("IOCTL")).unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: plain system calls on a descriptor this test owns.
    let (tty, tty_errno) = unsafe { (libc::isatty(fd), *libc::__errno_location()) };
    assert_eq!((tty, tty_errno), (0, libc::ENOTTY));
    // SAFETY: as above.
    let data = unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) };
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) };
    assert_eq!((data, hole), (0, 5));
    let log = logs();
    assert!(!log.contains("Not Implemented"), "{log}");
}
