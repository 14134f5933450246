//! systemd credentials on the agent's socket (docs/delivery.md): a real vault, a real agent, its
//! real socket, and PID 1's client emulated byte for byte — bind the abstract name
//! `\0<hex>/unit/<unit>/<id>`, connect, `shutdown(SHUT_WR)`, read to EOF. An allowed unit gets
//! the exact value; a unit with no rule, a name that does not exist and a non-root peer get the
//! refusal that makes systemd fail the unit (more than its 1 MiB limit), each audited with
//! `via = systemd`; HTTP clients keep being served on the same socket at the same time.

mod agent_support;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use agent_support::vault::{Log, World};
use agent_support::{Events, as_nobody, get, ship_all};
use fyvault::agent::socket::credential::REFUSAL_LEN;
use fyvault::api::{AccessVia, AuditQuery};
use nix::sys::socket::{
    AddressFamily, Shutdown, SockFlag, SockType, UnixAddr, bind, connect, shutdown, socket,
};

/// What PID 1 does for `LoadCredential=ID:SOCK` of `unit`: the bytes it read.
fn pid1_load(sock: &Path, unit: &str, id: &str) -> Vec<u8> {
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let name = format!("{:016x}/unit/{unit}/{id}", rand::random::<u64>());
    bind(
        fd.as_raw_fd(),
        &UnixAddr::new_abstract(name.as_bytes()).unwrap(),
    )
    .unwrap();
    connect(fd.as_raw_fd(), &UnixAddr::new(sock).unwrap()).unwrap();
    shutdown(fd.as_raw_fd(), Shutdown::Write).unwrap();
    // SAFETY: `fd` is a connected stream socket we own; the File takes it over.
    let mut f = unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
    let mut out = Vec::new();
    f.read_to_end(&mut out).unwrap();
    out
}

/// The same client in Python, run as uid 65534: prints how many bytes it read.
const PY_PID1: &str = r#"
import socket, sys, os
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(b"\0" + os.urandom(8).hex().encode() + b"/unit/app.service/STRIPE_SK")
s.connect(sys.argv[1])
s.shutdown(socket.SHUT_WR)
n = 0
while True:
    b = s.recv(65536)
    if not b:
        break
    n += len(b)
print(n)
"#;

async fn in_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_credentials_by_unit() {
    let log = Log::default();
    let w = World::new("info", &log).await;
    w.push("STRIPE_SK", b"sk_live_\x00bytes\n").await;
    w.push("DB_URL", b"postgres://app@db/app").await;
    w.push("OTHER", b"not for app").await;
    let agent = w
        .start_agent(
            r#"
[credentials]
"db.url" = "DB_URL"

[[access.rule]]
secrets = ["STRIPE_SK", "DB_URL", "NEVER_PUSHED"]
units = ["app.service"]

[[access.rule]]
secrets = ["OTHER"]
units = ["app.service"]
users = [0]
"#,
        )
        .await;
    let sock = w.socket();
    let mut events = Events::open(&sock).await;

    // An allowed unit gets the exact bytes, by id and by a mapped id; HTTP at the same time.
    let (a, b, c, http) = tokio::join!(
        in_thread({
            let s = sock.clone();
            move || pid1_load(&s, "app.service", "STRIPE_SK")
        }),
        in_thread({
            let s = sock.clone();
            move || pid1_load(&s, "app.service", "db.url")
        }),
        in_thread({
            let s = sock.clone();
            move || pid1_load(&s, "other.service", "STRIPE_SK")
        }),
        get(&sock, "/v1/secrets/DB_URL"),
    );
    assert_eq!(a, b"sk_live_\x00bytes\n");
    assert_eq!(b, b"postgres://app@db/app");
    assert_eq!(c.len(), REFUSAL_LEN, "a unit with no rule: refused");
    assert!(c.starts_with(b"fyvault refused"));
    assert_eq!(http.status, 200);
    assert_eq!(http.text(), "postgres://app@db/app");

    // Root's blanket grant does not apply, nor a rule that also needs a uid; an absent name is
    // refused too (systemd would otherwise start the unit with an empty file).
    for id in ["OTHER", "NEVER_PUSHED", "not.mapped"] {
        let s = sock.clone();
        let got = in_thread(move || pid1_load(&s, "app.service", id)).await;
        assert_eq!(got.len(), REFUSAL_LEN, "{id}");
    }

    // A non-root peer with PID 1's address form is refused, whatever unit it names.
    // /usr/bin/python3 (executable by uid 65534; scripts/deps installs it).
    let py = Path::new("/usr/bin/python3");
    let nobody_ran = as_nobody(py, &["-c", PY_PID1, sock.to_str().unwrap()], &[]);
    if let Some(out) = &nobody_ran {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert_eq!(n, REFUSAL_LEN);
    }

    // The HTTP side is undisturbed: the event stream opened before still works.
    w.rotate("DB_URL", b"postgres://app@db2/app", 60).await;
    events.expect("rotated", "DB_URL").await;
    let h = get(&sock, "/v1/health").await;
    assert_eq!(h.status, 200);

    // Every answer and refusal is in the vault's trail with via = systemd and the unit.
    ship_all(&agent).await;
    let recs = w
        .admin
        .audit(
            &w.org,
            &AuditQuery {
                limit: Some(1000),
                ..AuditQuery::default()
            },
        )
        .await
        .unwrap()
        .records;
    let sd: Vec<_> = recs
        .iter()
        .filter(|r| r.via == Some(AccessVia::Systemd))
        .map(|r| {
            (
                r.action.as_str(),
                r.secret.as_deref().unwrap_or("-"),
                r.unit.as_deref().unwrap_or("-"),
            )
        })
        .collect();
    for want in [
        ("accessed", "STRIPE_SK", "app.service"),
        ("accessed", "DB_URL", "app.service"),
        ("denied", "STRIPE_SK", "other.service"),
        ("denied", "OTHER", "app.service"),
        ("missing", "NEVER_PUSHED", "app.service"),
    ] {
        assert!(sd.contains(&want), "{want:?} not in {sd:?}");
    }
    if nobody_ran.is_some() {
        assert!(
            recs.iter().any(|r| r.via == Some(AccessVia::Systemd)
                && r.action == "denied"
                && r.uid == Some(65534)),
            "the non-root peer's refusal is audited as that uid"
        );
    }
    agent.shutdown().await.unwrap();
}
