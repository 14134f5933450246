//! The file contract on a real mount (DESIGN §4.2): reading, listing, `.env`, `.previous`,
//! rotation, pinned handles, revoke.

mod common_fuse;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common_fuse::{TestMount, active, errno, fuse_available, revoked, wait_for};
use fyvault::agent::access::Policy;

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
        [".env", ".previous", "BINARY", "EMPTYISH", "STRIPE_SK"]
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

#[test]
fn fuse_open_handle_is_pinned_then_stale() {
    let Some(m) = mount("fuse_open_handle_is_pinned_then_stale") else {
        return;
    };
    m.put("PIN", 1, b"version-one");
    m.put("GONE", 1, b"to-be-revoked");
    let mut pinned = std::fs::File::open(m.file("PIN")).unwrap();
    let mut revoked_fd = std::fs::File::open(m.file("GONE")).unwrap();
    let mut first = [0u8; 8];
    pinned.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"version-");

    // Rotate with a short grace: the open fd still reads v1, a new open reads v2.
    m.apply(vec![active(
        "PIN",
        2,
        b"version-two-longer",
        Some((1, b"version-one", Duration::from_millis(300))),
    )]);
    let mut rest = Vec::new();
    pinned.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"one");
    assert_eq!(std::fs::read(m.file("PIN")).unwrap(), b"version-two-longer");

    // After the grace, the old handle is stale.
    wait_for("grace of PIN v1 over", || {
        std::fs::metadata(m.previous("PIN")).is_err()
    });
    let mut buf = [0u8; 4];
    let e = std::os::unix::fs::FileExt::read_at(&pinned, &mut buf, 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}");

    // Revoke: the file vanishes at once, the open handle is stale at once.
    let md_before = std::fs::metadata(m.file("GONE")).unwrap();
    assert_eq!(md_before.len(), 13);
    m.apply(vec![revoked("GONE", 2)]);
    assert_eq!(errno(std::fs::metadata(m.file("GONE"))), libc::ENOENT);
    assert_eq!(errno(std::fs::File::open(m.file("GONE"))), libc::ENOENT);
    let mut b = Vec::new();
    assert_eq!(errno(revoked_fd.read_to_end(&mut b)), libc::ESTALE);
    let names: Vec<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.contains(&"GONE".to_string()));
    // A revoked name may come back with a new version.
    m.put("GONE", 3, b"back");
    assert_eq!(std::fs::read(m.file("GONE")).unwrap(), b"back");
}

/// Values that exercise every quoting rule of `.env`.
const TRICKY: &[(&str, &str)] = &[
    ("A_PLAIN", "sk_live_abc123"),
    ("B_SPACES", "two words  and # not a comment"),
    ("C_DOLLAR", "pa$$word $HOME"),
    ("D_SQUOTE", "it's"),
    ("E_DQUOTE", "say \"hi\""),
    ("F_NEWLINE", "line1\nline2\n"),
    ("G_BACKSLASH", "C:\\path\\n"),
    ("H_MIXED", "a'b\"c\\d#e$f g\r\nh"),
    ("I_HASH", "#starts-with-hash"),
    ("J_UNICODE", "ünïcødé ✓"),
    ("K_TAB", "tab\there"),
];

#[test]
fn fuse_dotenv_round_trips_through_dotenv_readers() {
    let Some(m) = mount("fuse_dotenv_round_trips_through_dotenv_readers") else {
        return;
    };
    for (name, value) in TRICKY {
        m.put(name, 1, value.as_bytes());
    }
    m.put("Z_BINARY", 1, b"\xff\xfe");
    let env_path = m.file(".env");
    let content = std::fs::read(&env_path).unwrap();
    assert_eq!(
        std::fs::metadata(&env_path).unwrap().len(),
        content.len() as u64
    );
    let text = String::from_utf8(content.clone()).unwrap();
    assert!(text.starts_with("A_PLAIN='sk_live_abc123'\n"), "{text}");
    assert!(text.ends_with("# Z_BINARY: not representable in .env (read the file Z_BINARY)\n"));

    // python-dotenv (interpolation off: it has no escape for `${`).
    let script = "import json,sys\nfrom dotenv import dotenv_values\n\
                  print(json.dumps(dotenv_values(sys.argv[1], interpolate=False)))";
    match Command::new("python3")
        .args(["-c", script])
        .arg(&env_path)
        .output()
    {
        Ok(out) if out.status.success() => {
            let parsed: std::collections::BTreeMap<String, Option<String>> =
                serde_json::from_slice(&out.stdout).unwrap();
            for (name, value) in TRICKY {
                assert_eq!(
                    parsed.get(*name).cloned().flatten().as_deref(),
                    Some(*value),
                    "python-dotenv read {name} differently"
                );
            }
            assert_eq!(parsed.len(), TRICKY.len(), "{parsed:?}");
        }
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            eprintln!("SKIP python-dotenv check: module missing (pip install python-dotenv)");
        }
        other => panic!("python3 failed: {other:?}"),
    }

    // A POSIX shell reads back every value its quoting allows (single-quoted ones, and
    // double-quoted ones without `$`, backquote or line breaks).
    let shell_safe: Vec<&(&str, &str)> = TRICKY
        .iter()
        .filter(|(_, v)| {
            !v.contains('\'') && !v.contains('\\') && !v.contains('\n') && !v.contains('\r')
                || !(v.contains('$') || v.contains('`') || v.contains('\n') || v.contains('\r'))
        })
        .collect();
    assert!(shell_safe.len() >= 8, "{shell_safe:?}");
    let mut script = String::from("set -a; . \"$1\"; set +a;");
    for (name, _) in &shell_safe {
        script.push_str(&format!(" printf '%s\\0' \"${name}\";"));
    }
    let out = Command::new("bash")
        .args(["-c", &script, "bash"])
        .arg(&env_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    for (i, (name, value)) in shell_safe.iter().enumerate() {
        assert_eq!(got[i], value.as_bytes(), "bash read {name} differently");
    }
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

#[test]
fn fuse_stat_between_rotations_is_answered_from_the_kernel_cache() {
    let Some(m) = mount("fuse_stat_between_rotations_is_answered_from_the_kernel_cache") else {
        return;
    };
    m.put("CACHED", 1, b"12345");
    assert_eq!(std::fs::metadata(m.file("CACHED")).unwrap().len(), 5);
    // Change the view behind the mount's back (no invalidation): a cached size stays visible,
    // which shows the kernel really caches attributes...
    m.state
        .view
        .apply_behind_caches(100, false, vec![active("CACHED", 2, b"1234567", None)]);
    assert_eq!(std::fs::metadata(m.file("CACHED")).unwrap().len(), 5);
    // ...while going through the state invalidates it at once.
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
    let mut want: Vec<String> = vec![".previous".into(), ".env".into()];
    want.extend(names.iter().cloned());
    assert_eq!(listed.len(), want.len(), "entries listed");
    if let Some(i) = (0..want.len()).find(|i| listed[*i] != want[*i]) {
        panic!("entry {i}: listed {:?}, expected {:?}", listed[i], want[i]);
    }
    // `ls -l` style: every listed secret resolves.
    assert_eq!(std::fs::metadata(m.file("SECRET_02499")).unwrap().len(), 1);
}
