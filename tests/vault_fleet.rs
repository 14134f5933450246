//! The vault (`fyvault server`, a subprocess) serving a fleet: a low soft open-file limit is
//! raised so 1,500 agents fit and still wake on a push; long-polls past the cap get a 503 the
//! real agent backs off from (never sooner than its Retry-After) and recovers after, while
//! providers keep getting in.

mod agent_support;
#[path = "../benches/support/longpoll.rs"]
mod longpoll;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::time::Duration;

use agent_support::vault::{Log, World};
use agent_support::{DEADLINE, eventually, get};
use fyvault::vault::clock::parse_rfc3339;
use longpoll::Conn;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

const AGENTS: usize = 1500;

fn addr(w: &World) -> SocketAddr {
    format!("127.0.0.1:{}", w.vault.port).parse().unwrap()
}

fn agent_token(w: &World) -> String {
    String::from_utf8(std::fs::read(&w.token_file).unwrap())
        .unwrap()
        .trim()
        .to_owned()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn count(log: &Log, needle: &str) -> usize {
    log.lock().unwrap().matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_started_at_a_soft_limit_of_1024_holds_1500_agents_and_wakes_them_all() {
    // This process needs an fd per simulated agent too.
    let mine = fyvault::vault::limits::raise_nofile().unwrap();
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        mine.soft > AGENTS as u64 + 200 && hard > AGENTS as u64 + 200,
        "this test needs a hard open-file limit above {} (have {hard})",
        AGENTS + 200
    );
    let log = Log::default();
    let w = World::new_with("info", &log, move |cmd| {
        // SAFETY: between fork and exec only the setrlimit system call runs (async-signal-safe,
        // no allocation): the vault starts with soft limit 1,024 as under a default systemd.
        unsafe {
            cmd.pre_exec(move || {
                setrlimit(Resource::RLIMIT_NOFILE, 1024, hard).map_err(std::io::Error::from)
            });
        }
    })
    .await;
    assert!(
        log.lock().unwrap().contains("before=1024"),
        "the vault logs the limit it raised: {}",
        log.lock().unwrap()
    );
    let token = agent_token(&w);
    let vault = addr(&w);
    let mut polls = Vec::with_capacity(AGENTS);
    for _ in 0..AGENTS {
        let (org, env, token) = (w.org.clone(), w.env.clone(), token.clone());
        let mut c = Conn::connect(vault).await.expect("connect");
        polls.push(tokio::spawn(async move {
            c.send_sync(&org, &env, 0, 120, &token).await.unwrap();
            c.read_answer().await
        }));
    }
    let pid = w.vault.pid();
    eventually("the vault to hold every agent's connection", || async {
        (open_fds(pid) >= AGENTS).then_some(())
    })
    .await;
    // A provider still gets in, and its push wakes every agent.
    let version = tokio::time::timeout(DEADLINE, w.push("FLEET_KEY", b"v1"))
        .await
        .expect("the push is answered");
    assert_eq!(version, 1);
    let mut woken = 0;
    for p in polls {
        let a = tokio::time::timeout(DEADLINE, p)
            .await
            .expect("every agent is answered")
            .unwrap()
            .expect("an answer, not a closed connection");
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.revision(), Some(1));
        woken += 1;
    }
    assert_eq!(woken, AGENTS);
    assert_eq!(count(&log, "accept failed"), 0, "{}", log.lock().unwrap());
}

/// The next `n` long-polls the vault refuses over its cap: when the vault logged each (its
/// own timestamp, ms since the epoch) and the Retry-After it named.
async fn refusals(log: &Log, n: usize) -> Vec<(i64, u64)> {
    const LINE: &str = "long-poll refused over the cap";
    let logged = |log: &Log| -> Vec<(i64, u64)> {
        let text = log.lock().unwrap().clone();
        text.lines()
            .filter(|l| l.contains(LINE))
            .map(|l| {
                let at = l.split_whitespace().next().unwrap();
                let at = parse_rfc3339(at).unwrap_or_else(|| panic!("a timestamp: {l}"));
                let v = l
                    .split("retry_after_s=")
                    .nth(1)
                    .expect("the figure is logged");
                (at, v.split_whitespace().next().unwrap().parse().unwrap())
            })
            .collect()
    };
    let skip = logged(log).len();
    eventually("the agent's next refusals", || async {
        let all = logged(log);
        (all.len() >= skip + n).then(|| all[skip..skip + n].to_vec())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_over_the_cap_get_a_503_the_agent_backs_off_from_and_recovers_after() {
    let log = Log::default();
    // Refusals ask for 1–2 s (debug lines name each figure), so the test sees several.
    let w = World::new_with("info,fyvault::vault::routes::agent=debug", &log, |cmd| {
        cmd.args(["--max-long-polls", "1", "--long-poll-retry-after", "2"]);
    })
    .await;
    w.push("A", b"a1").await;
    let token = agent_token(&w);
    let vault = addr(&w);

    // A simulated agent takes the only long-poll slot (since=1, the current revision); a
    // probe that would wait is then refused. (Should the probe park first, the holder is the
    // one refused: start over.)
    let (_holder, a, mut probe) = eventually("a long-poll over the cap to be refused", || async {
        let mut holder = Conn::connect(vault).await.unwrap();
        holder
            .send_sync(&w.org, &w.env, 1, 120, &token)
            .await
            .unwrap();
        let mut c = Conn::connect(vault).await.unwrap();
        c.send_sync(&w.org, &w.env, 1, 1, &token).await.unwrap();
        let a = c.read_answer().await.unwrap();
        (a.status == 503).then_some((holder, a, c))
    })
    .await;
    // A JSON 503, a jittered Retry-After, and the connection closed.
    assert_eq!(a.json()["error"]["code"], "too_many_long_polls");
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(a.header("connection"), Some("close"));
    assert!(
        probe.closed_within(DEADLINE).await,
        "the refused connection is closed"
    );

    // The real agent: its first sync (no wait) works; its long-polls are refused, and it
    // retries with a growing, jittered delay instead of a tight loop.
    let agent = w.start_agent("").await;
    let sock = agent.socket().to_owned();
    assert_eq!(get(&sock, "/v1/secrets/A").await.body, b"a1");
    let health = eventually("the agent to report the refusal", || async {
        let h = get(&sock, "/v1/health").await.json();
        (h["status"] == "degraded").then_some(h)
    })
    .await;
    assert!(
        health["reason"].as_str().unwrap_or("").contains("503"),
        "{health}"
    );
    // It honours each refusal's Retry-After: its next long-poll comes no sooner. (World's
    // agent backs off 50 ms doubling to 500 ms with full jitter: left to its own schedule it
    // would come back within 0.5 s, sooner than any figure the vault names here.)
    let refusals = refusals(&log, 4).await;
    for pair in refusals.windows(2) {
        let ((at, asked), (next, _)) = (pair[0], pair[1]);
        assert!(
            next - at >= asked as i64 * 1000,
            "back after {} ms when asked to wait {asked} s: {refusals:?}",
            next - at
        );
    }

    // A provider gets in at the cap: its push is answered, wakes the holder (whose slot then
    // frees), and reaches the agent once it parks again.
    assert_eq!(
        tokio::time::timeout(DEADLINE, w.push("B", b"b1"))
            .await
            .unwrap(),
        1
    );
    let served = tokio::time::timeout(DEADLINE, async {
        while get(&sock, "/v1/secrets/B").await.body != b"b1" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "the agent never got B: {}",
        log.lock().unwrap()
    );
    eventually("the agent to be ready again", || async {
        (get(&sock, "/v1/health").await.json()["status"] == "ready").then_some(())
    })
    .await;
    agent.shutdown().await.unwrap();
}
