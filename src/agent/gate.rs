//! The one read gate: every way a host program takes a secret — FUSE `open`, socket `GET`,
//! `.env`/`.env.sh`, a systemd credential, a template — asks here, and nowhere else, in this
//! order: **identity → policy → view → access event**. The adapters (`fs`, `socket`, the
//! credential protocol, templates) only translate their request into a [`ReadRequest`] and the
//! gate's answer into theirs (errno, HTTP status, a refused credential), so a new delivery path
//! cannot forget the policy or the audit.
//!
//! # Who learns what (the rule both adapters follow)
//! Names are public: the mount's listing shows every name to every local user. Everything else
//! is decided by the policy **before existence**:
//! 1. a name that is not a valid secret name is refused by the adapter before it gets here
//!    (`EINVAL`/`ENOENT`, 400) — it cannot exist, so nothing is learnt;
//! 2. a caller the policy refuses `NAME` gets [`Refusal::Denied`] (EACCES, 403) whether `NAME`
//!    exists or not, and a `denied` event is recorded; it never learns a size, a time, or
//!    whether the name exists beyond what the listing shows;
//! 3. only a caller the policy allows `NAME` learns that it does not exist
//!    ([`Refusal::NotFound`]: ENOENT, 404), and a `missing` event is recorded (name, process;
//!    coalesced and shipped like every access event), or that it has no previous version in
//!    grace ([`Refusal::NoPrevious`]), or that the agent holds nothing yet
//!    ([`Refusal::NotReady`], before the first sync: no `missing` event, nothing is known to be
//!    missing);
//! 4. a read that is answered records an `accessed` event with the version served.
//!
//! # Identity
//! The caller is resolved by the adapter (socket: at accept; FUSE: per request, cached) into a
//! [`Caller`]. For [`AccessVia::Systemd`] the identity is the **unit** (`caller.unit`, taken
//! from PID 1's socket address): only rules naming that unit (and no other selector) grant it,
//! and neither root's blanket grant nor the configured group applies
//! ([`Policy::allows_unit`]), so every unit gets exactly what it was granted.
//!
//! # The request type
//! [`ReadRequest`] is built with [`ReadRequest::new`] and adjusted with builder methods, so a
//! later dimension (issue 14's optional per-user value: `.user(…)`) is one more field with a
//! default, not a new signature at every call site.
//!
//! # User-vault secrets (issue 14)
//! A name whose policy is `user` has one value per app user, held sealed in
//! [`crate::agent::users`]. Only [`Gate::read`] serves them, and only with
//! [`ReadRequest::user`]: without one the answer is [`Refusal::UserRequired`], for a user with
//! no value [`Refusal::UserMissing`] (recorded as `missing` with the user id). The policy step is
//! the same as for any read of that name; every event carries the user id. The mount and `.env`
//! never show user values (the vault does not send a creator value for a user-vault name).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::agent::access::{Caller, Policy};
use crate::agent::delivery::{Delivery, RenderError};
use crate::agent::secret_view::{Absent, Listed};
use crate::agent::state::AgentState;
use crate::agent::users::UserAbsent;
use crate::agent::view::{HandleId, Meta, Which};
use crate::api::{AccessAction, AccessVia};
use crate::secret::Secret;

/// One read of one name, as every adapter asks it.
#[derive(Debug, Clone, Copy)]
pub struct ReadRequest<'a> {
    /// Who asks (for [`AccessVia::Systemd`]: PID 1, with `unit` set to the unit it asks for).
    pub caller: &'a Caller,
    /// How the request reached the agent (recorded in every event).
    pub via: AccessVia,
    /// The secret name (already checked to be a valid name by the adapter).
    pub name: &'a str,
    /// The current version, or the previous one while its grace period runs.
    pub which: Which,
    /// The app user whose value of a user-vault secret is asked for (issue 14; only the socket
    /// asks with one). Ignored for creator-vault secrets: their one value is every user's.
    pub user: Option<&'a str>,
}

impl<'a> ReadRequest<'a> {
    /// A read of `name`'s current version.
    pub fn new(caller: &'a Caller, via: AccessVia, name: &'a str) -> Self {
        ReadRequest {
            caller,
            via,
            name,
            which: Which::Current,
            user: None,
        }
    }

    /// The same read of `user`'s value (user-vault secrets).
    pub fn user(mut self, user: Option<&'a str>) -> Self {
        self.user = user;
        self
    }

    /// The same read of the current or previous version.
    pub fn which(mut self, which: Which) -> Self {
        self.which = which;
        self
    }
}

/// Why the gate answered no. Adapters map it 1:1 (see the module docs for what each reveals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The policy refuses this caller this name (EACCES, 403). Recorded as `denied`.
    Denied,
    /// No such secret (ENOENT, 404). Recorded as `missing` where the adapter reads.
    NotFound,
    /// The secret exists but has no previous version readable now (ENOENT, 404).
    NoPrevious,
    /// Nothing synced yet (ENOENT, 503): absence means nothing yet.
    NotReady,
    /// A user-vault secret asked for without a user (400 `user_required`; ENOENT in the mount,
    /// where user values never appear).
    UserRequired,
    /// That user has no value of this user-vault secret (404 `user_secret_missing`, with
    /// `"connect": true`). Recorded as `missing` with the user id.
    UserMissing,
    /// The user's value held does not open with this agent's key (503).
    CannotOpen,
    /// A template could not be rendered (EIO, 422); logged with the reason, never a value.
    Unrenderable,
}

/// Does an absent name count as a `missing` read? (A FUSE `getattr`/`access` on a known inode
/// is not a read; a `lookup`, `open` or socket `GET` is.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    Missing,
    Nothing,
}

/// The gate over one agent's state. Cheap: borrow it per request with [`AgentState::gate`].
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    state: &'a AgentState,
}

impl AgentState {
    /// The read gate over this state.
    pub fn gate(&self) -> Gate<'_> {
        Gate { state: self }
    }
}

impl<'a> Gate<'a> {
    /// The policy step alone: allowed, or `Denied` (logged and recorded as `denied`).
    pub fn authorize(&self, req: &ReadRequest<'_>) -> Result<(), Refusal> {
        if decide(&self.state.policy(), req.caller, req.via, req.name) {
            return Ok(());
        }
        let version = self.state.view.meta(req.name, req.which).map(|m| m.version);
        tracing::info!(
            secret = req.name,
            via = req.via.as_str(),
            uid = req.caller.uid,
            pid = req.caller.pid,
            exe = ?req.caller.exe,
            unit = ?req.caller.unit,
            "access denied by policy"
        );
        self.record(req, AccessAction::Denied, version);
        Err(Refusal::Denied)
    }

    /// Facts about a name for a caller allowed it (a FUSE `getattr`/`access`): no event on
    /// success or absence.
    pub fn stat(&self, req: &ReadRequest<'_>) -> Result<Meta, Refusal> {
        self.authorize(req)?;
        self.state
            .view
            .meta(req.name, req.which)
            .ok_or_else(|| self.absent(req, Record::Nothing))
    }

    /// A name looked up to be read (FUSE `lookup`): like [`stat`](Self::stat), but an absent
    /// name is recorded as `missing`; also how long the grace clock leaves the answer valid.
    pub fn lookup(&self, req: &ReadRequest<'_>) -> Result<(Meta, Duration), Refusal> {
        self.authorize(req)?;
        self.state
            .view
            .meta_for(req.name, req.which)
            .ok_or_else(|| self.absent(req, Record::Missing))
    }

    /// A one-shot read (socket `GET`, systemd credential): a copy of the value.
    pub fn read(&self, req: &ReadRequest<'_>) -> Result<(Meta, Secret), Refusal> {
        self.authorize(req)?;
        if self.state.users.is_user_policy(req.name) {
            return self.read_user(req);
        }
        match self.state.view.get(req.name, req.which) {
            Ok((meta, value)) => {
                self.record(req, AccessAction::Accessed, Some(meta.version));
                Ok((meta, value))
            }
            Err(Absent::NoPrevious) => Err(Refusal::NoPrevious),
            Err(Absent::NoSecret) => Err(self.absent(req, Record::Missing)),
        }
    }

    /// A read of a user-vault secret: one user's value, opened for this read only (never a
    /// file, never in `.env`: only [`read`](Self::read) reaches here).
    fn read_user(&self, req: &ReadRequest<'_>) -> Result<(Meta, Secret), Refusal> {
        let user = req.user.ok_or(Refusal::UserRequired)?;
        match self.state.users.get(req.name, user, req.which) {
            Ok((meta, value)) => {
                self.record(req, AccessAction::Accessed, Some(meta.version));
                Ok((meta, value))
            }
            Err(UserAbsent::Missing) => {
                self.record(req, AccessAction::Missing, None);
                Err(Refusal::UserMissing)
            }
            Err(UserAbsent::NoPrevious) => Err(Refusal::NoPrevious),
            Err(UserAbsent::CannotOpen) => Err(Refusal::CannotOpen),
        }
    }

    /// Opens a reader pinned to the version current (or previous) now (FUSE `open`).
    pub fn open(&self, req: &ReadRequest<'_>) -> Result<(HandleId, Meta), Refusal> {
        self.authorize(req)?;
        match self.state.view.open(req.name, req.which) {
            Some((fh, meta)) => {
                self.record(req, AccessAction::Accessed, Some(meta.version));
                Ok((fh, meta))
            }
            None => Err(self.absent(req, Record::Missing)),
        }
    }

    /// Opens a snapshot of every secret `caller` may read, rendered by `render` (`.env`,
    /// `.env.sh`): one `accessed` event per secret pinned. Denied names are simply left out
    /// (that is what the caller's listing shows too), without a `denied` event.
    pub fn open_all(
        &self,
        caller: &Caller,
        via: AccessVia,
        render: impl FnOnce(&[(&str, &Secret)]) -> Secret,
    ) -> HandleId {
        let policy = self.state.policy();
        let (fh, pins) = self
            .state
            .view
            .open_snapshot(|n| decide(&policy, caller, via, n), render);
        for (name, version) in pins {
            let req = ReadRequest::new(caller, via, &name);
            self.record(&req, AccessAction::Accessed, Some(version));
        }
        fh
    }

    /// `f` over the current versions of every secret `caller` may read, without opening or
    /// recording anything (sizing `.env` for `stat`).
    pub fn with_allowed<T>(
        &self,
        caller: &Caller,
        via: AccessVia,
        f: impl FnOnce(&[(&str, Meta, &Secret)]) -> T,
    ) -> T {
        let policy = self.state.policy();
        self.state
            .view
            .with_current(|n| decide(&policy, caller, via, n), f)
    }

    /// What `caller` may list (names, versions, times; no values, no event).
    pub fn list(&self, caller: &Caller, via: AccessVia) -> Vec<Listed> {
        let policy = self.state.policy();
        self.state.view.list(|n| decide(&policy, caller, via, n))
    }

    /// Would `caller`'s listing show `name`? (The event stream's filter: metadata only, no
    /// event recorded.)
    pub fn lists(&self, caller: &Caller, via: AccessVia, name: &str) -> bool {
        decide(&self.state.policy(), caller, via, name)
    }

    // ---- templates: every secret a template uses goes through the same steps ---------------

    /// Policy, then existence, for every secret template `name` uses: all denied names are
    /// recorded as `denied` (EACCES); else every absent one is logged and, when `reading`,
    /// recorded as `missing` (ENOENT). An unknown template is `NotFound` (nothing recorded: a
    /// template name is not a secret name).
    fn template_uses(
        &self,
        caller: &Caller,
        via: AccessVia,
        name: &str,
        reading: bool,
    ) -> Result<(Arc<Delivery>, Vec<String>), Refusal> {
        let delivery = self.state.delivery();
        let uses = delivery
            .templates
            .get(name)
            .ok_or(Refusal::NotFound)?
            .uses
            .clone();
        let refused = uses
            .iter()
            .filter(|n| self.authorize(&ReadRequest::new(caller, via, n)).is_err())
            .count();
        if refused > 0 {
            return Err(Refusal::Denied);
        }
        let absent: Vec<&String> = uses
            .iter()
            .filter(|n| self.state.view.meta(n, Which::Current).is_none())
            .collect();
        if absent.is_empty() {
            return Ok((delivery, uses));
        }
        if self.state.view.summary().revision == 0 {
            return Err(Refusal::NotReady);
        }
        for n in absent {
            tracing::warn!(
                template = name,
                secret = n.as_str(),
                uid = caller.uid,
                "template uses a secret that does not exist; the read fails (ENOENT)"
            );
            if reading {
                self.record(
                    &ReadRequest::new(caller, via, n),
                    AccessAction::Missing,
                    None,
                );
            }
        }
        Err(Refusal::NotFound)
    }

    /// May `caller` read template `name` now (FUSE `access`)? Nothing recorded but denials.
    pub fn check_template(
        &self,
        caller: &Caller,
        via: AccessVia,
        name: &str,
    ) -> Result<(), Refusal> {
        self.template_uses(caller, via, name, false).map(|_| ())
    }

    /// Template `name` rendered for `caller`: (size, newest update time) for `stat`; no event
    /// but denials.
    pub fn stat_template(
        &self,
        caller: &Caller,
        via: AccessVia,
        name: &str,
    ) -> Result<(usize, SystemTime), Refusal> {
        let (delivery, uses) = self.template_uses(caller, via, name, false)?;
        self.state
            .view
            .with_current(
                |n| uses.iter().any(|u| u == n),
                |entries| {
                    let values: Vec<(&str, &Secret)> =
                        entries.iter().map(|(n, _, v)| (*n, *v)).collect();
                    let newest = entries.iter().map(|(_, m, _)| m.updated_at).max();
                    delivery
                        .templates
                        .render(name, &values)
                        .map(|out| (out.len(), newest.unwrap_or(SystemTime::UNIX_EPOCH)))
                },
            )
            .map_err(|e| unrenderable(&e))
    }

    /// Template `name` rendered for `caller` into a snapshot handle pinned to the versions it
    /// used (FUSE `open`): one `accessed` event per secret.
    pub fn open_template(
        &self,
        caller: &Caller,
        via: AccessVia,
        name: &str,
    ) -> Result<HandleId, Refusal> {
        let (delivery, uses) = self.template_uses(caller, via, name, true)?;
        let mut failed = None;
        let (fh, pins) = self.state.view.open_snapshot(
            |n| uses.iter().any(|u| u == n),
            |entries| match delivery.templates.render(name, entries) {
                Ok(out) => out,
                Err(e) => {
                    failed = Some(e);
                    Secret::new(Vec::new())
                }
            },
        );
        if let Some(e) = failed {
            self.state.view.close(fh);
            return Err(unrenderable(&e));
        }
        for (n, version) in pins {
            self.record(
                &ReadRequest::new(caller, via, &n),
                AccessAction::Accessed,
                Some(version),
            );
        }
        Ok(fh)
    }

    /// Template `name` rendered for `caller` once (socket `GET /v1/templates/NAME`): one
    /// `accessed` event per secret.
    pub fn render_template(
        &self,
        caller: &Caller,
        via: AccessVia,
        name: &str,
    ) -> Result<Secret, Refusal> {
        let (delivery, uses) = self.template_uses(caller, via, name, true)?;
        let (out, versions) = self.state.view.with_current(
            |n| uses.iter().any(|u| u == n),
            |entries| {
                let values: Vec<(&str, &Secret)> =
                    entries.iter().map(|(n, _, v)| (*n, *v)).collect();
                let versions: Vec<(String, u64)> = entries
                    .iter()
                    .map(|(n, m, _)| ((*n).to_owned(), m.version))
                    .collect();
                (delivery.templates.render(name, &values), versions)
            },
        );
        let out = out.map_err(|e| unrenderable(&e))?;
        for (n, version) in versions {
            self.record(
                &ReadRequest::new(caller, via, &n),
                AccessAction::Accessed,
                Some(version),
            );
        }
        Ok(out)
    }

    /// Why an allowed name is absent; records `missing` when asked to and it is.
    fn absent(&self, req: &ReadRequest<'_>, record: Record) -> Refusal {
        let view = &self.state.view;
        if req.which == Which::Previous && view.meta(req.name, Which::Current).is_some() {
            return Refusal::NoPrevious;
        }
        if view.summary().revision == 0 {
            return Refusal::NotReady;
        }
        if record == Record::Missing {
            self.record(req, AccessAction::Missing, None);
        }
        Refusal::NotFound
    }

    fn record(&self, req: &ReadRequest<'_>, action: AccessAction, version: Option<u64>) {
        self.state
            .auditor
            .record_user(req.caller, action, req.name, version, req.via, req.user);
    }
}

/// Logs a rendering that failed (the reason names no value) and refuses the read.
fn unrenderable(e: &RenderError) -> Refusal {
    tracing::warn!("{e}; the read fails");
    Refusal::Unrenderable
}

/// The policy decision for one (caller, via, name): for a systemd credential the unit is the
/// identity (no root or group grant), for every other path [`Policy::allows`].
fn decide(policy: &Policy, caller: &Caller, via: AccessVia, name: &str) -> bool {
    match via {
        AccessVia::Systemd => caller
            .unit
            .as_deref()
            .is_some_and(|u| policy.allows_unit(u, name)),
        AccessVia::Fuse | AccessVia::Socket => policy.allows(caller, name),
    }
}

#[cfg(test)]
mod tests;
