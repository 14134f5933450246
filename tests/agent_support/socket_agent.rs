//! The socket server alone over a fresh `AgentState` (no vault, no sync): the view is
//! populated directly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fyvault::agent::access::Policy;
use fyvault::agent::audit::Auditor;
use fyvault::agent::socket::{self, Ctx, Limits, RunInfo};
use fyvault::agent::state::AgentState;
use fyvault::agent::view::{Update, UpdateState};
use fyvault::secret::Secret;
use tokio::sync::watch;

use super::{DEADLINE, open_tempdir};

pub struct SocketAgent {
    _dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub state: Arc<AgentState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl SocketAgent {
    pub async fn start(policy: Policy) -> SocketAgent {
        Self::start_with(policy, Limits::default()).await
    }

    /// With these socket limits.
    pub async fn start_with(policy: Policy, limits: Limits) -> SocketAgent {
        let dir = open_tempdir();
        let sock = dir.path().join("agent.sock");
        let state = AgentState::new(policy, Auditor::disabled());
        tokio::spawn(state.clone().run_expiry());
        let (stop, rx) = watch::channel(false);
        let ctx = Ctx {
            state: state.clone(),
            info: Arc::new(RunInfo::new("org_t", "test")),
            shutdown: rx,
            keep_alive: Duration::from_secs(15),
        };
        let listener = socket::bind(&sock).unwrap();
        let task = tokio::spawn(socket::serve_with(listener, ctx, limits));
        SocketAgent {
            _dir: dir,
            sock,
            state,
            stop,
            task,
        }
    }

    /// Makes `version` of `name` current (with a previous version in grace, optionally).
    pub fn push(
        &self,
        name: &str,
        version: u64,
        value: &[u8],
        prev: Option<(u64, &[u8], Duration)>,
    ) {
        self.state.view.apply(
            version,
            false,
            vec![Update {
                name: name.into(),
                version,
                state: UpdateState::Active {
                    value: Secret::copy_from(value),
                    previous: prev.map(|(v, b, d)| (v, Secret::copy_from(b), d)),
                },
                updated_at: SystemTime::UNIX_EPOCH + Duration::from_secs(version),
            }],
        );
    }

    pub fn revoke(&self, name: &str, version: u64) {
        self.state.view.apply(
            version,
            false,
            vec![Update {
                name: name.into(),
                version,
                state: UpdateState::Revoked,
                updated_at: SystemTime::now(),
            }],
        );
    }

    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}
