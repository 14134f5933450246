//! Caller identity and the access policy (DESIGN §4.4): one check, used by FUSE `open`/`access`
//! and by the socket.
//!
//! STUB to be completed by the agent-core work: the types below are the contract the FUSE and
//! socket adapters code against.

use std::path::PathBuf;

/// Who is asking: resolved once (at socket accept, or per FUSE request from the kernel's
/// uid/gid/pid) and handed to the check as a typed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Supplementary groups (from `/proc/PID/status`), when known.
    pub groups: Vec<u32>,
    /// `/proc/PID/exe`, when readable.
    pub exe: Option<PathBuf>,
    /// The systemd unit from `/proc/PID/cgroup`, when the process runs in one.
    pub unit: Option<String>,
}

/// The access policy: default deny for all but root and the configured group; rules grant
/// secrets (glob patterns) to users, groups, executables and systemd units.
#[derive(Debug, Clone, Default)]
pub struct Policy {}

impl Policy {
    /// May `caller` read `secret`?
    pub fn allows(&self, caller: &Caller, _secret: &str) -> bool {
        caller.uid == 0
    }
}
