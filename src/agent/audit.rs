//! Access events (DESIGN §4.5): one call, used by the FUSE `open` path and the socket read path
//! (and for denials): coalesce → durable spool → ship upstream.
//!
//! STUB to be completed by the access-event work: `Auditor::record` is the contract the FUSE and
//! socket adapters call; it must never block on the network or on disk sync.

use crate::agent::access::Caller;
use crate::api::{AccessAction, AccessVia};

/// The audit hook shared by every read path. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Auditor {}

impl Auditor {
    /// An auditor that records nothing (tests of other parts, benchmarks' baselines).
    pub fn disabled() -> Self {
        Auditor {}
    }

    /// Records one access or denial. Never blocks on I/O.
    pub fn record(
        &self,
        _caller: &Caller,
        _action: AccessAction,
        _secret: &str,
        _version: Option<u64>,
        _via: AccessVia,
    ) {
    }
}
