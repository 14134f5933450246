//! `fyvault run [--only GLOB]... [--on-rotate MODE] [--stop-timeout SECONDS] -- CMD [ARGS]`:
//! runs CMD with the secrets the caller may read from the local agent added to its
//! environment. Values go only into the new process's environment block (never on an argv,
//! never in a file), from one zeroizing buffer.
//!
//! `--on-rotate ignore` (the default) replaces this process with CMD (`execve`). Any other mode
//! supervises the child (see `supervise`): on a `rotated`, `updated` or `revoked` event for a
//! secret the child holds it restarts the child with fresh values, sends it a signal, or stops
//! it and exits. Exit codes: the child's (128+N when a signal N ended it), 69 when the agent
//! cannot be reached, 126/127 when CMD cannot be run, 75 after `--on-rotate exit` stopped the
//! child, 1 for anything else.

mod events;
mod spawn;
mod supervise;

use std::collections::BTreeMap;
use std::ffi::{CStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;

use crate::agent::access::Glob;
use crate::agent::socket::wire::SecretList;
use crate::cli::get::{AgentUnreachable, SocketArg, request};
use crate::secret::Secret;

/// Exit code when the agent cannot be reached (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code after `--on-rotate exit` stopped the child (`EX_TEMPFAIL`: start me again).
pub const EXIT_ROTATED: u8 = 75;
/// The environment variable that tells SDKs (and `fyvault get`) where the agent is.
const SOCKET_VAR: &str = "FYVAULT_SOCKET";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Only the secrets whose names match this glob (`*`, `?`); repeatable. Default: every
    /// secret you may read.
    #[arg(long = "only", value_name = "GLOB")]
    pub only: Vec<String>,
    /// What a rotation, update or revoke of a secret the child holds does: `ignore` (replace
    /// this process with CMD, no supervision), `restart`, `signal:NAME` (e.g. `signal:HUP`),
    /// `exit`.
    #[arg(long, value_name = "MODE", default_value = "ignore", value_parser = OnRotate::parse)]
    pub on_rotate: OnRotate,
    /// Seconds a stopped child gets between SIGTERM and SIGKILL (fractions allowed).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub stop_timeout: Duration,
    #[command(flatten)]
    pub socket: SocketArg,
    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD",
        value_parser = clap::value_parser!(OsString)
    )]
    pub command: Vec<OsString>,
}

/// `--on-rotate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRotate {
    Ignore,
    Restart,
    Signal(Signal),
    Exit,
}

impl OnRotate {
    fn parse(s: &str) -> Result<OnRotate, String> {
        match s {
            "ignore" => Ok(OnRotate::Ignore),
            "restart" => Ok(OnRotate::Restart),
            "exit" => Ok(OnRotate::Exit),
            _ => match s.strip_prefix("signal:") {
                Some(name) => parse_signal(name).map(OnRotate::Signal),
                None => Err("expected restart, signal:NAME, exit or ignore".into()),
            },
        }
    }
}

/// `HUP`, `SIGHUP`, `hup` or `1`.
fn parse_signal(name: &str) -> Result<Signal, String> {
    let bad = || format!("{name:?} is not a signal name (e.g. HUP, USR1, TERM)");
    if let Ok(n) = name.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>().map_err(|_| bad())
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds (0 to 86400)"))
}

/// One secret read from the agent for the child.
struct Held {
    name: String,
    version: u64,
    value: Secret,
}

/// Names and current versions of the secrets the caller may read that `only` selects.
async fn listing(socket: &Path, only: &[Glob]) -> anyhow::Result<BTreeMap<String, u64>> {
    let answer = request(socket, "/v1/secrets").await?;
    if !answer.status.is_success() {
        return Err(answer.error());
    }
    let list: SecretList =
        serde_json::from_slice(&answer.body).context("the agent's answer is not a listing")?;
    Ok(list
        .secrets
        .into_iter()
        .filter(|s| only.is_empty() || only.iter().any(|g| g.matches(&s.name)))
        .map(|s| (s.name, s.version))
        .collect())
}

/// Reads every selected secret. A secret revoked between the listing and its read is left
/// out. With `require_matches`, a `--only` glob that selects nothing is an error.
async fn read_secrets(
    socket: &Path,
    only: &[Glob],
    require_matches: bool,
) -> anyhow::Result<Vec<Held>> {
    let names = listing(socket, only).await?;
    if require_matches {
        for g in only {
            if !names.keys().any(|n| g.matches(n)) {
                bail!(
                    "--only {}: no secret you may read matches (`fyvault ls` shows them)",
                    g.as_str()
                );
            }
        }
    }
    let mut held = Vec::with_capacity(names.len());
    for (name, listed) in names {
        let mut answer = request(socket, &format!("/v1/secrets/{name}")).await?;
        if answer.status == hyper::StatusCode::NOT_FOUND {
            continue;
        }
        if !answer.status.is_success() {
            return Err(answer.error().context(format!("reading {name}")));
        }
        let version = answer
            .headers
            .get("fyvault-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(listed);
        let value = Secret::from(std::mem::take(&mut answer.body));
        held.push(Held {
            name,
            version,
            value,
        });
    }
    Ok(held)
}

/// The child's environment: this process's, with `FYVAULT_SOCKET` and the secrets set (they
/// win over inherited variables of the same name), as `KEY=VALUE\0` entries in one zeroizing
/// buffer allocated once at its final size (no reallocation leaves a copy behind).
pub(crate) struct EnvBlock {
    buf: Secret,
    /// Start of each entry in `buf`.
    starts: Vec<usize>,
}

impl EnvBlock {
    fn build(socket: &Path, secrets: &[Held]) -> anyhow::Result<EnvBlock> {
        for s in secrets {
            if s.value.expose().contains(&0) {
                bail!(
                    "{} holds a NUL byte, which an environment variable cannot carry (read it \
                     with `fyvault get` or an SDK instead)",
                    s.name
                );
            }
        }
        let ours =
            |k: &[u8]| k == SOCKET_VAR.as_bytes() || secrets.iter().any(|s| s.name.as_bytes() == k);
        let inherited: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !ours(k.as_bytes()))
            .collect();
        let socket = socket.as_os_str().as_bytes();
        let size = inherited
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>()
            + SOCKET_VAR.len()
            + socket.len()
            + 2
            + secrets
                .iter()
                .map(|s| s.name.len() + s.value.len() + 2)
                .sum::<usize>();
        let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(size));
        let mut starts = Vec::with_capacity(inherited.len() + secrets.len() + 1);
        let mut push = |k: &[u8], v: &[u8]| {
            starts.push(buf.len());
            buf.extend_from_slice(k);
            buf.push(b'=');
            buf.extend_from_slice(v);
            buf.push(0);
        };
        for (k, v) in &inherited {
            push(k.as_bytes(), v.as_bytes());
        }
        push(SOCKET_VAR.as_bytes(), socket);
        for s in secrets {
            push(s.name.as_bytes(), s.value.expose());
        }
        debug_assert_eq!(buf.len(), size);
        Ok(EnvBlock {
            buf: Secret::from(buf),
            starts,
        })
    }

    /// Each entry, borrowed from the buffer (no copy).
    pub(crate) fn entries(&self) -> Vec<&CStr> {
        let buf = self.buf.expose();
        self.starts
            .iter()
            .map(|&start| {
                let end = start
                    + buf[start..]
                        .iter()
                        .position(|&b| b == 0)
                        .expect("every entry ends with NUL");
                CStr::from_bytes_with_nul(&buf[start..=end]).expect("one NUL per entry")
            })
            .collect()
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let program = match spawn::Program::resolve(&args.command) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fyvault run: {e}");
            return Ok(ExitCode::from(e.exit_code()));
        }
    };
    let plan = Plan {
        socket: args.socket.socket,
        only: args.only.iter().map(|g| Glob::new(g)).collect(),
        program,
        stop_timeout: args.stop_timeout,
    };
    let result = match args.on_rotate {
        OnRotate::Ignore => exec_in_place(&plan),
        mode => supervise::run(plan, mode),
    };
    match result {
        Err(e) => match e.downcast_ref::<AgentUnreachable>() {
            Some(u) => {
                eprintln!("fyvault run: {u}");
                Ok(ExitCode::from(EXIT_UNAVAILABLE))
            }
            None => Err(e),
        },
        ok => ok,
    }
}

/// What to run, with what.
struct Plan {
    socket: std::path::PathBuf,
    only: Vec<Glob>,
    program: spawn::Program,
    stop_timeout: Duration,
}

impl Plan {
    /// The child's environment with the secrets as they are now.
    async fn environment(&self, first: bool) -> anyhow::Result<(EnvBlock, BTreeMap<String, u64>)> {
        let held = read_secrets(&self.socket, &self.only, first).await?;
        let versions = held.iter().map(|h| (h.name.clone(), h.version)).collect();
        Ok((EnvBlock::build(&self.socket, &held)?, versions))
    }
}

/// `--on-rotate ignore`: becomes CMD. Returns only when that fails.
fn exec_in_place(plan: &Plan) -> anyhow::Result<ExitCode> {
    let (env, _) = crate::cli::get::runtime()?.block_on(plan.environment(true))?;
    let e = spawn::exec(&plan.program, &env);
    eprintln!("fyvault run: {e}");
    Ok(ExitCode::from(e.exit_code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_rotate_modes() {
        assert_eq!(OnRotate::parse("restart"), Ok(OnRotate::Restart));
        assert_eq!(OnRotate::parse("ignore"), Ok(OnRotate::Ignore));
        assert_eq!(OnRotate::parse("exit"), Ok(OnRotate::Exit));
        for s in ["signal:HUP", "signal:SIGHUP", "signal:hup", "signal:1"] {
            assert_eq!(
                OnRotate::parse(s),
                Ok(OnRotate::Signal(Signal::SIGHUP)),
                "{s}"
            );
        }
        assert_eq!(
            OnRotate::parse("signal:USR2"),
            Ok(OnRotate::Signal(Signal::SIGUSR2))
        );
        assert!(OnRotate::parse("signal:NOPE").is_err());
        assert!(OnRotate::parse("reload").is_err());
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn env_block_sets_secrets_over_inherited() {
        let held = vec![
            Held {
                name: "PATH_SECRET_TEST".into(),
                version: 1,
                value: Secret::copy_from(b"v=1 with spaces"),
            },
            Held {
                name: "EMPTY".into(),
                version: 3,
                value: Secret::copy_from(b""),
            },
        ];
        let env = EnvBlock::build(Path::new("/tmp/a.sock"), &held).unwrap();
        let entries: Vec<_> = env
            .entries()
            .iter()
            .map(|c| c.to_bytes().to_vec())
            .collect();
        assert!(entries.contains(&b"PATH_SECRET_TEST=v=1 with spaces".to_vec()));
        assert!(entries.contains(&b"EMPTY=".to_vec()));
        assert!(entries.contains(&b"FYVAULT_SOCKET=/tmp/a.sock".to_vec()));
        assert_eq!(
            entries
                .iter()
                .filter(|e| e.starts_with(b"FYVAULT_SOCKET="))
                .count(),
            1
        );
        let nul = vec![Held {
            name: "BIN".into(),
            version: 1,
            value: Secret::copy_from(b"a\0b"),
        }];
        let e = EnvBlock::build(Path::new("/s"), &nul)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("BIN") && !e.contains("a\0b"), "{e}");
    }
}
