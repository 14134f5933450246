//! Access on a real mount: the policy decides at `open`/`access` for every uid (mode bits do
//! not), denials are EACCES and reported, names are visible to all, and every write-type
//! operation fails.

mod common_fuse;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use common_fuse::{TestMount, as_nobody, errno, fuse_available, logs};
use fyvault::agent::access::{Glob, Policy, Rule};

#[test]
fn fuse_other_uid_denied_by_default_allowed_by_rule() {
    if !fuse_available("fuse_other_uid_denied_by_default_allowed_by_rule") {
        return;
    }
    let m = TestMount::new(Policy::new(Some(4242), vec![]));
    m.put("DENIED_FOR_NOBODY", 1, b"top-secret");
    m.put("GRANTED_LATER", 1, b"shared-value");
    let denied = m.file("DENIED_FOR_NOBODY");
    let denied_s = denied.to_str().unwrap();

    // Root reads.
    assert_eq!(std::fs::read(&denied).unwrap(), b"top-secret");
    // Another uid: denied at open, EACCES, and the denial is reported.
    let out = as_nobody(&["cat", denied_s]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    let log = logs();
    assert!(
        log.lines().any(|l| l.contains("access denied by policy")
            && l.contains("DENIED_FOR_NOBODY")
            && l.contains("uid=65534")),
        "no denial log line in:\n{log}"
    );
    assert!(!log.contains("top-secret"), "a value reached the log");
    // access(2) applies the same check.
    let out = as_nobody(&["test", "-r", denied_s]);
    assert!(!out.status.success(), "test -r should fail for nobody");
    assert!(
        Command::new("test")
            .args(["-r", denied_s])
            .status()
            .unwrap()
            .success()
    );

    // Names are not secret: the listing shows them to anyone.
    let out = as_nobody(&["ls", "-a", m.path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("DENIED_FOR_NOBODY") && listing.contains("GRANTED_LATER"));
    // Nothing else: a refused caller gets the same answer for an existing name as for a
    // missing one, and no size or time — even right after root's stat filled the kernel's
    // caches (entry and attributes) for that name.
    let root_size = std::fs::metadata(&denied).unwrap().len();
    assert_eq!(root_size, b"top-secret".len() as u64);
    let missing = m.file("NEVER_PUSHED");
    let missing_s = missing.to_str().unwrap();
    for args in [
        ["stat", "-c", "%s %Y", denied_s],
        ["stat", "-c", "%s %Y", missing_s],
        ["cat", "--", missing_s, "/dev/null"],
    ] {
        let out = as_nobody(&args);
        assert!(!out.status.success(), "{args:?} succeeded: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        {
            assert!(err.contains("Permission denied"), "{args:?}: {err}");
        }
    }
    let stat_errno = |p: &str| {
        Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .args(["/usr/bin/python3", "-c"])
            .arg(format!(
                "import os\ntry:\n os.stat({p:?})\nexcept OSError as e:\n print(e.errno)"
            ))
            .output()
            .unwrap()
    };
    for p in [denied_s, missing_s] {
        let out = stat_errno(p);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            libc::EACCES.to_string(),
            "stat {p} as nobody: {out:?}"
        );
    }
    // Root still gets ENOENT for a missing name.
    assert_eq!(
        std::fs::metadata(&missing).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    // .env for nobody: empty (nothing granted), not an error.
    let env = m.file(".env");
    let out = as_nobody(&["cat", env.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let out = as_nobody(&["stat", "-c", "%s", env.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");

    // A rule grants GRANTED_* to uid 65534: allowed now, the rest still denied.
    m.state.set_policy(Policy::new(
        Some(4242),
        vec![Rule {
            secrets: vec![Glob::new("GRANTED_*")],
            users: vec![65534],
            ..Rule::default()
        }],
    ));
    let out = as_nobody(&["cat", m.file("GRANTED_LATER").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"shared-value");
    assert!(!as_nobody(&["cat", denied_s]).status.success());
    let out = as_nobody(&["cat", env.to_str().unwrap()]);
    assert_eq!(out.stdout, b"GRANTED_LATER='shared-value'\n");
    let out = as_nobody(&["stat", "-c", "%s", env.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "GRANTED_LATER='shared-value'\n".len().to_string()
    );
    // Root's .env has both.
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "DENIED_FOR_NOBODY='top-secret'\nGRANTED_LATER='shared-value'\n"
    );

    // Members of the policy group may read everything.
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "4242",
            "--clear-groups",
            "--",
        ])
        .args(["cat", denied_s])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"top-secret");
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn last_errno(rc: libc::c_int) -> i32 {
    assert_eq!(rc, -1, "the call succeeded");
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

#[test]
fn fuse_every_write_type_operation_fails() {
    if !fuse_available("fuse_every_write_type_operation_fails") {
        return;
    }
    // As mounted by the agent: the kernel refuses most write operations itself (read-only
    // mount), so this alone would pass whatever the filesystem does.
    every_write_type_operation_fails(&TestMount::new(Policy::default()), &|e| {
        e == libc::EROFS || e == libc::EACCES
    });
}

/// The filesystem's own refusal, without the kernel's help: on a mount without the read-only
/// flag the kernel forwards every write-type operation, and each must be EROFS from us.
#[test]
fn fuse_filesystem_itself_refuses_every_write_type_operation() {
    if !fuse_available("fuse_filesystem_itself_refuses_every_write_type_operation") {
        return;
    }
    let m = TestMount::kernel_writable(Policy::default());
    let options = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.contains(m.path.to_str().unwrap()))
        .map(|l| l.split(' ').nth(5).unwrap_or_default().to_owned())
        .unwrap();
    assert!(
        options.starts_with("rw"),
        "not writable for the kernel: {options}"
    );
    every_write_type_operation_fails(&m, &|e| e == libc::EROFS);
}

fn every_write_type_operation_fails(m: &TestMount, ro: &dyn Fn(i32) -> bool) {
    m.put("KEY", 1, b"value");
    let key = m.file("KEY");
    let new = m.file("NEW");
    let prev_dir = m.path.join(".previous");
    let mut checked = Vec::new();
    let mut check = |what: &str, e: i32, ok: &dyn Fn(i32) -> bool| {
        assert!(ok(e), "{what}: unexpected errno {e}");
        checked.push(what.to_owned());
    };

    use std::fs::OpenOptions;
    let e = errno(OpenOptions::new().write(true).open(&key));
    check("open O_WRONLY", e, ro);
    let e = errno(OpenOptions::new().read(true).write(true).open(&key));
    check("open O_RDWR", e, ro);
    let e = errno(OpenOptions::new().read(true).append(true).open(&key));
    check("open O_APPEND", e, ro);
    let e = errno(OpenOptions::new().write(true).create_new(true).open(&new));
    check("create", e, ro);
    let e = errno(OpenOptions::new().write(true).truncate(true).open(&key));
    check("open O_TRUNC", e, ro);
    check("mkdir", errno(std::fs::create_dir(m.file("DIR"))), ro);
    check("unlink", errno(std::fs::remove_file(&key)), ro);
    check("rmdir", errno(std::fs::remove_dir(&prev_dir)), ro);
    check("rename", errno(std::fs::rename(&key, &new)), ro);
    check("link", errno(std::fs::hard_link(&key, &new)), ro);
    check(
        "symlink",
        errno(std::os::unix::fs::symlink("/etc/passwd", &new)),
        ro,
    );
    use std::os::unix::fs::PermissionsExt;
    check(
        "chmod",
        errno(std::fs::set_permissions(
            &key,
            std::fs::Permissions::from_mode(0o644),
        )),
        ro,
    );
    check(
        "chown",
        errno(std::os::unix::fs::chown(&key, Some(1), Some(1))),
        ro,
    );
    check(
        "truncate",
        errno(nix::unistd::truncate(&key, 0).map_err(std::io::Error::from)),
        ro,
    );
    let f = std::fs::File::open(&key).unwrap();
    check(
        "utimes",
        errno(f.set_modified(std::time::SystemTime::UNIX_EPOCH)),
        ro,
    );
    check(
        "mknod",
        errno(
            nix::sys::stat::mknod(
                &new,
                nix::sys::stat::SFlag::S_IFIFO,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                0,
            )
            .map_err(std::io::Error::from),
        ),
        ro,
    );
    let (path, name, value) = (c(&key), c(Path::new("user.x")), b"v");
    // SAFETY: valid NUL-terminated strings and a valid buffer for the duration of each call.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check("setxattr", last_errno(rc), ro);
    // SAFETY: as above.
    let rc = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    check("removexattr", last_errno(rc), &|e| {
        ro(e) || e == libc::ENODATA
    });
    // Reading extended attributes works and finds none.
    let mut buf = [0u8; 16];
    // SAFETY: valid strings and a buffer of the given length.
    let rc = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(last_errno(rc as libc::c_int), libc::ENODATA);
    // A read-only descriptor cannot write, extend or receive copies (EBADF from the kernel
    // before the filesystem is asked); the filesystem itself would answer EROFS.
    let badf_or_ro = |e: i32| ro(e) || e == libc::EBADF;
    check(
        "write on read-only fd",
        errno(std::io::Write::write(&mut &f, b"x")),
        &badf_or_ro,
    );
    check(
        "fallocate",
        errno(
            nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, 100)
                .map_err(std::io::Error::from),
        ),
        &badf_or_ro,
    );
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), b"data").unwrap();
    let src_f = std::fs::File::open(src.path()).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: two open descriptors, null offsets (use the file positions).
    let rc = unsafe {
        libc::copy_file_range(
            src_f.as_raw_fd(),
            std::ptr::null_mut(),
            f.as_raw_fd(),
            std::ptr::null_mut(),
            4,
            0,
        )
    };
    check(
        "copy_file_range",
        last_errno(rc as libc::c_int),
        &badf_or_ro,
    );
    drop(f);

    assert!(checked.len() >= 14, "{checked:?}");
    // Nothing changed.
    assert_eq!(std::fs::read(&key).unwrap(), b"value");
    assert!(std::fs::metadata(&new).is_err());
    let md = std::fs::metadata(&key).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mode(&md) & 0o7777, 0o440);
}
