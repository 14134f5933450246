//! `fyvault run --on-rotate restart|signal:NAME|exit`: the child runs under supervision.
//!
//! - The event stream is opened **before** the values are read, so a change between the read
//!   and the subscription is not missed. Events about one secret within 50 ms are handled
//!   once.
//! - `rotated`, `updated` or `revoked` for a secret the child holds: `restart` sends SIGTERM to
//!   the child and starts a new one at once with fresh values; the old one keeps running until
//!   it exits or `--stop-timeout` ends (then SIGKILL). While the grace period runs its old value
//!   stays valid, so it can finish its work. `signal:NAME` sends NAME to the child (its
//!   environment cannot change: it re-reads through the socket or the mount). `exit` stops
//!   the child like a restart would, then exits 75.
//! - SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to every child still
//!   running, except INT, QUIT and HUP sent by the terminal to the foreground process group:
//!   the child, in the same group, has received those itself.
//! - A lost event stream is reopened with backoff (100 ms to 5 s); on reopening, and on a
//!   `resync`, the versions are compared with what the child holds.
//! - When the current child exits, children still stopping are waited for, and the exit
//!   status is the current child's (128+N for a signal N).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::WaitStatus;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::events::{Event, EventStream};
use super::spawn::{self, Child, StartError};
use super::{EXIT_ROTATED, OnRotate, Plan, listing};

const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];
/// Events this close together cause one restart.
const COALESCE: Duration = Duration::from_millis(50);
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A signal this process received.
struct Received {
    sig: Signal,
    /// Sent by the kernel (the terminal) rather than by a process.
    from_terminal: bool,
}

/// Blocks the forwarded signals in this thread (and so in every thread started later) and
/// receives them on a thread of their own with `sigwaitinfo`, which tells who sent them.
/// Must run before any other thread starts.
fn listen_for_signals() -> anyhow::Result<mpsc::UnboundedReceiver<Received>> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.thread_block()?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("fyvault-run-signals".into())
        .spawn(move || {
            loop {
                // SAFETY: zeroed is a valid siginfo_t; sigwaitinfo writes into it and reads
                // `set`, a valid, initialized sigset_t.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                let n = unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) };
                let Ok(sig) = Signal::try_from(n) else {
                    continue; // EINTR
                };
                let from_terminal = info.si_code == libc::SI_KERNEL;
                if tx.send(Received { sig, from_terminal }).is_err() {
                    return;
                }
            }
        })?;
    Ok(rx)
}

pub(super) fn run(plan: Plan, mode: OnRotate) -> anyhow::Result<ExitCode> {
    let signals = listen_for_signals()?;
    crate::cli::get::runtime()?.block_on(supervise(plan, mode, signals))
}

fn start_error(e: StartError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn exit_code(status: WaitStatus) -> ExitCode {
    match status {
        WaitStatus::Exited(_, code) => ExitCode::from(code as u8),
        WaitStatus::Signaled(_, sig, _) => ExitCode::from(128u8.wrapping_add(sig as u8)),
        _ => ExitCode::FAILURE,
    }
}

/// Resolves at `at`, never when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next event, never when there is no stream.
async fn next_event(stream: &mut Option<EventStream>) -> Option<Event> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Names of held secrets whose version differs now (or that are gone). Empty when the agent
/// cannot be asked.
async fn changed_since(plan: &Plan, held: &BTreeMap<String, u64>) -> BTreeSet<String> {
    match listing(&plan.socket, &plan.only).await {
        Ok(now) => held
            .iter()
            .filter(|(name, version)| now.get(*name) != Some(version))
            .map(|(name, _)| name.clone())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Lets a child that got SIGTERM finish: SIGKILL once `timeout` has passed; forwarded
/// signals reach it meanwhile. Reaps it.
async fn drain(mut child: Child, timeout: Duration, mut forward: broadcast::Receiver<Signal>) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut killed = false;
    loop {
        tokio::select! {
            () = child.exited() => break,
            () = &mut deadline, if !killed => {
                eprintln!(
                    "fyvault run: pid {} did not stop within {timeout:?}; killing it",
                    child.pid()
                );
                child.signal(Signal::SIGKILL);
                killed = true;
            }
            Ok(sig) = forward.recv() => child.signal(sig),
        }
    }
    let _ = child.reap().await;
}

fn names(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

async fn supervise(
    plan: Plan,
    mode: OnRotate,
    mut signals: mpsc::UnboundedReceiver<Received>,
) -> anyhow::Result<ExitCode> {
    let socket = plan.socket.display().to_string();
    // Subscribed before reading: no change in between goes unseen.
    let mut stream = Some(EventStream::open(&plan.socket).await?);
    let (env, mut held) = plan.environment(true).await?;
    let mut current = spawn::spawn(&plan.program, &env).map_err(start_error)?;
    drop(env);
    let (forward, _) = broadcast::channel::<Signal>(16);
    let mut draining = Vec::new();
    let mut pending: Option<Instant> = None;
    let mut touched = BTreeSet::new();
    let mut reconnect_at: Option<Instant> = None;
    let mut backoff = RECONNECT_MIN;

    loop {
        tokio::select! {
            () = current.exited() => break,
            Some(r) = signals.recv() => {
                let own = matches!(r.sig, Signal::SIGINT | Signal::SIGQUIT | Signal::SIGHUP);
                if !(r.from_terminal && own) {
                    current.signal(r.sig);
                    let _ = forward.send(r.sig);
                }
            }
            ev = next_event(&mut stream) => match ev {
                Some(Event::Change { kind, data }) => {
                    let relevant = matches!(kind.as_str(), "rotated" | "updated" | "revoked");
                    if relevant && held.contains_key(&data.name) {
                        touched.insert(data.name);
                        pending.get_or_insert(Instant::now() + COALESCE);
                    }
                }
                Some(Event::Resync) => {
                    let changed = changed_since(&plan, &held).await;
                    if !changed.is_empty() {
                        touched.extend(changed);
                        pending.get_or_insert(Instant::now() + COALESCE);
                    }
                }
                None => {
                    eprintln!("fyvault run: lost the agent's event stream at {socket}; reconnecting");
                    stream = None;
                    reconnect_at = Some(Instant::now() + backoff);
                }
            },
            () = sleep_until(reconnect_at) => match EventStream::open(&plan.socket).await {
                Ok(s) => {
                    eprintln!("fyvault run: event stream at {socket} back");
                    stream = Some(s);
                    reconnect_at = None;
                    backoff = RECONNECT_MIN;
                    let changed = changed_since(&plan, &held).await;
                    if !changed.is_empty() {
                        touched.extend(changed);
                        pending.get_or_insert(Instant::now() + COALESCE);
                    }
                }
                Err(_) => {
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    reconnect_at = Some(Instant::now() + backoff);
                }
            },
            () = sleep_until(pending) => {
                pending = None;
                let what = names(&std::mem::take(&mut touched));
                match mode {
                    OnRotate::Restart => match plan.environment(false).await {
                        Ok((env, versions)) => {
                            current.signal(Signal::SIGTERM);
                            let new = spawn::spawn(&plan.program, &env).map_err(start_error)?;
                            drop(env);
                            eprintln!(
                                "fyvault run: {what} changed; pid {} started, pid {} stopping",
                                new.pid(),
                                current.pid()
                            );
                            let old = std::mem::replace(&mut current, new);
                            draining.push(tokio::spawn(drain(old, plan.stop_timeout, forward.subscribe())));
                            held = versions;
                        }
                        Err(e) => eprintln!(
                            "fyvault run: {what} changed but the new values cannot be read ({e:#}); \
                             the child keeps running"
                        ),
                    },
                    OnRotate::Signal(sig) => {
                        eprintln!("fyvault run: {what} changed; sending {sig} to pid {}", current.pid());
                        current.signal(sig);
                        if let Ok(now) = listing(&plan.socket, &plan.only).await {
                            held = held
                                .keys()
                                .filter_map(|k| now.get(k).map(|v| (k.clone(), *v)))
                                .collect();
                        }
                    }
                    OnRotate::Exit | OnRotate::Ignore => {
                        eprintln!("fyvault run: {what} changed; stopping pid {} and exiting", current.pid());
                        current.signal(Signal::SIGTERM);
                        drain(current, plan.stop_timeout, forward.subscribe()).await;
                        for d in draining {
                            let _ = d.await;
                        }
                        return Ok(ExitCode::from(EXIT_ROTATED));
                    }
                }
            }
        }
    }
    let status = current.reap().await;
    for d in draining {
        let _ = d.await;
    }
    Ok(exit_code(status))
}
