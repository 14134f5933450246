//! A real program checks a key file the agent serves (docs/delivery.md, `[[file]]`): a
//! PostgreSQL server (its own fresh cluster, as the `postgres` user) takes
//! `/MOUNT/PG_TLS_KEY` as its `ssl_key_file`. PostgreSQL refuses a key file whose mode gives
//! group or world access; with `[[file]]` showing `owner = postgres, mode = 0600` it starts, and
//! a client's connection is encrypted with that key. Skips without `/dev/fuse` or PostgreSQL
//! (fails instead under `FYVAULT_REQUIRE_FUSE=1` / `FYVAULT_REQUIRE_POSTGRES=1`).

mod common_fuse;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common_fuse::{TestMount, fuse_available, skip};
use fyvault::agent::access::{Glob, Policy, Rule};
use fyvault::agent::delivery::{Delivery, FileRule, Shown};

/// The newest PostgreSQL server's bin directory, if one is installed.
fn pg_bin(test: &str) -> Option<PathBuf> {
    let newest = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
        d.filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("postgres").is_file())
            .max()
    });
    if newest.is_none() {
        if std::env::var("FYVAULT_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("{test}: FYVAULT_REQUIRE_POSTGRES=1 but no PostgreSQL server is installed");
        }
        skip::skip(
            test,
            "PostgreSQL is not installed (FYVAULT_DEPS_POSTGRES=1 scripts/deps)",
        );
    }
    newest
}

fn user_ids(name: &str) -> (u32, u32) {
    let u = nix::unistd::User::from_name(name).unwrap().expect("user");
    (u.uid.as_raw(), u.gid.as_raw())
}

fn as_postgres(bin: &Path, prog: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin.join(prog));
    c
}

/// A postgres server we started (through `runuser`, which does not pass signals on); stopped
/// when dropped: SIGINT (fast shutdown) to the server's own pid, from its `postmaster.pid`.
struct Server {
    runuser: Child,
    data: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let _ = self.runuser.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts postgres with `key` as its ssl_key_file: the server, or its log when it exits.
fn start(bin: &Path, data: &Path, cert: &Path, key: &Path, port: u16) -> Result<Server, String> {
    let log = data.with_extension("log");
    let _ = std::fs::remove_file(&log);
    let child = as_postgres(bin, "postgres")
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "ssl=on", "-c"])
        .arg(format!("ssl_cert_file={}", cert.display()))
        .arg("-c")
        .arg(format!("ssl_key_file={}", key.display()))
        .arg("-c")
        .arg(format!(
            "unix_socket_directories={}",
            data.parent().unwrap().display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server {
        runuser: child,
        data: data.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.runuser.try_wait().unwrap() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            std::mem::forget(server);
            return Err(format!("postgres exited ({status}): {text}"));
        }
        let ready = as_postgres(bin, "pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .unwrap();
        if ready.success() {
            return Ok(server);
        }
        assert!(Instant::now() < deadline, "postgres never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn postgres_takes_a_key_file_served_by_the_agent() {
    let test = "postgres_takes_a_key_file_served_by_the_agent";
    if !fuse_available(test) {
        return;
    }
    let Some(bin) = pg_bin(test) else { return };
    let (pg_uid, pg_gid) = user_ids("postgres");

    // A fresh cluster of our own (trust on loopback), owned by postgres.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    nix::unistd::chown(&data, Some(pg_uid.into()), Some(pg_gid.into())).unwrap();
    nix::unistd::chown(dir.path(), Some(pg_uid.into()), Some(pg_gid.into())).unwrap();
    let out = as_postgres(&bin, "initdb")
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The certificate is public (a file); the key is a secret served by the agent.
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("server.crt");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).unwrap();
    let rule = Rule {
        secrets: vec![Glob::new("PG_TLS_KEY")],
        users: vec![pg_uid],
        ..Rule::default()
    };
    let m = TestMount::new(Policy::new(None, vec![rule]));
    m.put("PG_TLS_KEY", 1, ck.signing_key.serialize_pem().as_bytes());
    let key = m.file("PG_TLS_KEY");
    let shown = |mode| Delivery {
        files: vec![FileRule {
            secrets: vec![Glob::new("PG_TLS_KEY")],
            shown: Shown {
                owner: Some(pg_uid),
                group: Some(pg_gid),
                mode: Some(mode),
            },
        }],
        ..Delivery::default()
    };
    let port = free_port();

    // World-readable as shown by stat: PostgreSQL refuses the key (what it checks is what
    // `stat` shows, though the agent alone decides who reads).
    m.state.set_delivery(shown(0o644));
    let err = start(&bin, &data, &cert, &key, port)
        .err()
        .expect("postgres must refuse a key file with group or world access");
    assert!(err.contains("group or world access"), "{err}");

    // Owner postgres, 0600: it starts, and serves TLS with that key.
    m.state.set_delivery(shown(0o600));
    let server = start(&bin, &data, &cert, &key, port).unwrap_or_else(|e| panic!("{e}"));
    let psql = bin.join("psql");
    let out = Command::new(&psql)
        .args(["-X", "-A", "-t", "-c"])
        .arg("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .arg(format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
    drop(server);
}
