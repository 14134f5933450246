//! Templates and file modes on a real mount (docs/delivery.md): a template rendering two
//! secrets at `open`, pinned per handle across a rotation while new opens render the new value;
//! a caller denied one secret of a template gets EACCES (and a `denied` log line naming that
//! secret); a template using a secret that does not exist fails with ENOENT and a clear log
//! line; `stat` shows the owner, group and mode configured by `[[template]]` and `[[file]]`.

mod common_fuse;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use std::time::Duration;

use common_fuse::{TestMount, active, as_nobody, errno, fuse_available, logs};
use fyvault::agent::access::{Glob, Policy, Rule};
use fyvault::agent::delivery::{Delivery, FileRule, Shown, Templates};

fn template(name: &str, text: &str, shown: Shown) -> (String, PathBuf, String, Shown) {
    (
        name.into(),
        PathBuf::from(format!("/etc/fyvault/{name}.j2")),
        text.into(),
        shown,
    )
}

#[test]
fn templates_render_at_open_pin_per_handle_and_obey_the_gate() {
    if !fuse_available("templates_render_at_open_pin_per_handle_and_obey_the_gate") {
        return;
    }
    // uid 65534 may read DB_URL and API_KEY, not ROOT_ONLY.
    let rule = Rule {
        secrets: vec![Glob::new("DB_URL"), Glob::new("API_KEY")],
        users: vec![65534],
        ..Rule::default()
    };
    let m = TestMount::new(Policy::new(None, vec![rule]));
    let templates = Templates::load(vec![
        template(
            "app.conf",
            "db={{ DB_URL }}\nkey={{ API_KEY | json }}\n",
            Shown {
                owner: Some(65534),
                group: Some(0),
                mode: Some(0o400),
            },
        ),
        template(
            "mixed.conf",
            "{{ DB_URL }} {{ ROOT_ONLY }}\n",
            Shown::default(),
        ),
        template(
            "broken.conf",
            "{{ DB_URL }} {{ NEVER_PUSHED }}\n",
            Shown::default(),
        ),
    ])
    .unwrap();
    m.state.set_delivery(Delivery {
        templates,
        files: vec![FileRule {
            secrets: vec![Glob::new("TLS_*")],
            shown: Shown {
                owner: Some(65534),
                group: Some(65534),
                mode: Some(0o600),
            },
        }],
        ..Delivery::default()
    });
    m.put("DB_URL", 1, b"postgres://db1/app");
    m.put("API_KEY", 1, b"k\"1");
    m.put("ROOT_ONLY", 1, b"root");
    m.put("TLS_KEY", 1, b"-----BEGIN PRIVATE KEY-----\n");

    let app = m.file("app.conf");
    let want_v1 = "db=postgres://db1/app\nkey=\"k\\\"1\"\n";
    assert_eq!(std::fs::read_to_string(&app).unwrap(), want_v1);
    // Listed beside the secrets; stat shows the template's owner, group, mode and the size of
    // what this caller would read.
    let names: Vec<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"app.conf".to_owned()), "{names:?}");
    let md = std::fs::metadata(&app).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777, md.len()),
        (65534, 0, 0o400, want_v1.len() as u64)
    );
    // [[file]]: a secret file shows the configured owner/group/mode; others the default.
    let tls = std::fs::metadata(m.file("TLS_KEY")).unwrap();
    assert_eq!(
        (tls.uid(), tls.gid(), tls.mode() & 0o7777),
        (65534, 65534, 0o600)
    );
    let other = std::fs::metadata(m.file("DB_URL")).unwrap();
    assert_eq!((other.uid(), other.mode() & 0o7777), (0, 0o440));

    // An open handle keeps its rendering across a rotation (while the old version's grace
    // runs, as for a secret file); the next open renders anew.
    let mut held = std::fs::File::open(&app).unwrap();
    m.apply(vec![active(
        "DB_URL",
        2,
        b"postgres://db2/app",
        Some((1, b"postgres://db1/app", Duration::from_secs(600))),
    )]);
    let mut got = String::new();
    held.read_to_string(&mut got).unwrap();
    assert_eq!(got, want_v1, "the open handle is pinned");
    assert_eq!(
        std::fs::read_to_string(&app).unwrap(),
        "db=postgres://db2/app\nkey=\"k\\\"1\"\n"
    );
    drop(held);

    // Another uid reads the template when it may read every secret in it...
    let out = as_nobody(&["cat", app.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"db=postgres://db2/app\nkey=\"k\\\"1\"\n");
    // ...and gets EACCES when one is denied, logged as a denial naming that secret.
    let mixed = m.file("mixed.conf");
    let out = as_nobody(&["cat", mixed.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = logs();
    assert!(
        log.lines().any(|l| l.contains("access denied by policy")
            && l.contains("ROOT_ONLY")
            && l.contains("uid=65534")),
        "no denial naming ROOT_ONLY in:\n{log}"
    );
    assert!(!log.contains("postgres://db"), "a value reached the log");

    // A secret the template uses does not exist: ENOENT and a clear log line.
    assert_eq!(errno(std::fs::read(m.file("broken.conf"))), libc::ENOENT);
    assert!(
        logs()
            .lines()
            .any(|l| l.contains("template uses a secret that does not exist")
                && l.contains("NEVER_PUSHED")
                && l.contains("broken.conf")),
        "no log line for the missing secret"
    );
    // No template is ever writable.
    assert_eq!(
        errno(std::fs::OpenOptions::new().write(true).open(&app)),
        libc::EROFS
    );
}
