//! Config validation: every mistake is one line naming the key; private files with loose modes
//! are refused; the real binary refuses a bad config before binding anything.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use fyvault::agent::config;
use fyvault::agent::fs::ReadPathChoice;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for f in ["agent.token", "env.key"] {
            let p = dir.path().join(f);
            std::fs::write(&p, "x\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Fixture { dir }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn base(&self) -> String {
        let d = self.dir.path().display();
        format!(
            "vault_url = \"http://127.0.0.1:9\"\n\
             org_id = \"org_1\"\n\
             environment = \"production\"\n\
             token_file = \"{d}/agent.token\"\n\
             key_file = \"{d}/env.key\"\n\
             socket = \"{d}/agent.sock\"\n\
             mount = \"{d}/mnt\"\n\
             state_dir = \"{d}/state\"\n"
        )
    }

    fn write(&self, text: &str) -> PathBuf {
        let p = self.path("agent.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn err(&self, text: &str) -> String {
        let e = config::load(&self.write(text)).expect_err("config must be refused");
        let s = e.to_string();
        assert_eq!(s.lines().count(), 1, "one line: {s}");
        assert!(s.starts_with("agent.toml: "), "{s}");
        s
    }
}

#[test]
fn valid_config_with_defaults_and_rules() {
    let f = Fixture::new();
    let text = format!(
        "{}grace_seconds = 10\ngroup = \"\"\n\
         [[access.rule]]\nsecrets = [\"STRIPE_*\"]\nusers = [\"root\", 65534]\n\
         [[access.rule]]\nsecrets = [\"*\"]\nunits = [\"app.service\"]\n\
         executables = [\"/bin/sh\"]\n",
        f.base()
    );
    let c = config::load(&f.write(&text)).unwrap();
    assert_eq!(c.org_id, "org_1");
    assert_eq!(c.environment, "production");
    assert_eq!(c.grace_cap, Some(std::time::Duration::from_secs(10)));
    assert_eq!(c.policy.group, None);
    assert_eq!(c.policy.rules.len(), 2);
    assert_eq!(c.policy.rules[0].users, vec![0, 65534]);
    assert_eq!(c.mount, Some(f.path("mnt")));
    // /bin/sh is resolved like /proc/PID/exe shows it.
    assert_eq!(
        c.policy.rules[1].executables,
        vec![std::fs::canonicalize("/bin/sh").unwrap()]
    );

    // Defaults.
    let c = config::load(&f.write(&f.base().replace(
        &format!("socket = \"{}/agent.sock\"\n", f.dir.path().display()),
        "fuse = false\n",
    )))
    .unwrap();
    assert_eq!(c.socket, Path::new(config::DEFAULT_SOCKET));
    assert_eq!(c.mount, None);
    assert_eq!(c.fuse_read_path, ReadPathChoice::Auto);
    assert_eq!(c.fuse_threads, fyvault::agent::mount::FUSE_THREADS);
    let c = config::load(&f.write(&format!(
        "{}fuse_read_path = \"direct_io\"\nfuse_threads = 2\n",
        f.base()
    )))
    .unwrap();
    assert_eq!(c.fuse_read_path, ReadPathChoice::DirectIo);
    assert_eq!(c.fuse_threads, 2);
    assert_eq!(
        c.sync_wait,
        std::time::Duration::from_secs(config::DEFAULT_SYNC_WAIT_SECONDS)
    );
}

#[test]
fn missing_group_is_a_warning_not_an_error() {
    let f = Fixture::new();
    let c =
        config::load(&f.write(&format!("{}group = \"no-such-group-fyv\"\n", f.base()))).unwrap();
    assert_eq!(c.policy.group, None);
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].contains("group"), "{:?}", c.warnings);
    let c = config::load(&f.write(&format!("{}group = \"root\"\n", f.base()))).unwrap();
    assert_eq!(c.policy.group, Some(0));
}

#[test]
fn each_mistake_is_one_line_naming_the_key() {
    let f = Fixture::new();
    let base = f.base();
    let cases: Vec<(String, &str)> = vec![
        (format!("{base}colour = \"blue\"\n"), "colour"),
        (base.replace("org_1", "org/1"), ": org_id: "),
        (base.replace("production", "Prod"), ": environment: "),
        (
            base.replace("http://127.0.0.1:9", "http://vault.example.com"),
            ": vault_url: ",
        ),
        (
            base.replace("http://127.0.0.1:9", "not a url"),
            ": vault_url: ",
        ),
        (
            base.replace("/agent.sock", "/nope/agent.sock"),
            ": socket: ",
        ),
        (format!("{base}grace_seconds = \"5\"\n"), "grace_seconds"),
        (format!("{base}fuse_threads = 0\n"), ": fuse_threads: "),
        (
            format!("{base}fuse_read_path = \"cached\"\n"),
            "fuse_read_path",
        ),
        (
            format!("{base}sync_wait_seconds = 0\n"),
            ": sync_wait_seconds: ",
        ),
        (
            format!(
                "{base}[[access.rule]]\nsecrets = [\"A\"]\nusers = [\"root\"]\n[[access.rule]]\nsecrets = [\"A\"]\nusers = [\"no-such-user-fyv\"]\n"
            ),
            ": access.rule[2].users: no such user \"no-such-user-fyv\"",
        ),
        (
            format!("{base}[[access.rule]]\nsecrets = [\"A\"]\ngroups = [\"no-such-group-fyv\"]\n"),
            ": access.rule[1].groups: no such group",
        ),
        (
            format!("{base}[[access.rule]]\nsecrets = [\"stripe_*\"]\nusers = [0]\n"),
            ": access.rule[1].secrets: ",
        ),
        (
            format!("{base}[[access.rule]]\nusers = [0]\n"),
            ": access.rule[1].secrets: missing",
        ),
        (
            format!("{base}[[access.rule]]\nsecrets = [\"A\"]\n"),
            ": access.rule[1]: names no users",
        ),
        (
            format!("{base}[[access.rule]]\nsecrets = [\"A\"]\nexecutables = [\"node\"]\n"),
            ": access.rule[1].executables: ",
        ),
        (
            format!("{base}[[access.rule]]\nsecrets = [\"A\"]\nunits = [\"app\"]\n"),
            ": access.rule[1].units: ",
        ),
        (
            format!("{base}[[access.rule]]\nsecrets = [\"A\"]\nusers = [0]\nuser = [1]\n"),
            "access.rule[1].user",
        ),
        (
            format!("{base}[[access.rule]]\nsecrets = [\"A\"]\nusers = [-1]\n"),
            "access.rule[1].users",
        ),
        (
            base.replace("org_id = \"org_1\"\n", ""),
            ": org_id: missing field",
        ),
    ];
    for (text, expect) in cases {
        let e = f.err(&text);
        eprintln!("{e}");
        assert!(e.contains(expect), "expected {expect:?} in: {e}");
    }
}

#[test]
fn private_files_must_be_private_and_present() {
    let f = Fixture::new();
    let base = f.base();
    for (file, key) in [("agent.token", "token_file"), ("env.key", "key_file")] {
        let p = f.path(file);
        for mode in [0o640, 0o604, 0o620, 0o644] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = f.err(&base);
            assert!(e.contains(&format!(": {key}: ")), "{e}");
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
            assert!(e.contains("chmod 600"), "{e}");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        config::load(&f.write(&base)).expect("0400 is fine");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let e = f.err(&base.replace("/agent.token", "/missing.token"));
    assert!(e.contains(": token_file: cannot read"), "{e}");
    let e = f.err(&base.replace("/env.key", "/"));
    assert!(e.contains(": key_file: "), "{e}");
}

#[test]
fn the_binary_refuses_a_bad_config_with_one_line() {
    let f = Fixture::new();
    let cfg = f.write(&format!("{}colour = 1\n", f.base()));
    let out = Command::new(env!("CARGO_BIN_EXE_fyvault"))
        .arg("agent")
        .arg("--config")
        .arg(&cfg)
        .env("FYVAULT_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("agent.toml") && lines[0].contains("colour"),
        "{err}"
    );
    assert!(!f.path("agent.sock").exists(), "nothing bound");
}

#[test]
fn the_packaged_example_parses() {
    // The example names hosts and users of a real deployment; check its syntax and keys by
    // swapping in paths and names that exist here.
    let f = Fixture::new();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/agent.toml"))
            .unwrap();
    let d = f.dir.path().display().to_string();
    let text = example
        .replace(
            "https://vault.example.com",
            "https://vault.example.com:8443",
        )
        .replace("/etc/fyvault/agent.token", &format!("{d}/agent.token"))
        .replace("/etc/fyvault/production.key", &format!("{d}/env.key"))
        .replace("\"deploy\", ", "\"root\", ");
    let c = config::load(&f.write(&text)).unwrap();
    assert_eq!(c.policy.rules.len(), 2);
    assert_eq!(c.vault_url.as_str(), "https://vault.example.com:8443/");
}
