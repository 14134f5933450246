//! Agent calls: the long-poll sync feed (DESIGN §3.4) and access-event batches (§3.5).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use serde::Deserialize;

use crate::api::{self, AuditBatch, AuditBatchResponse, MAX_WAIT_SECONDS, SyncResponse};
use crate::vault::AppState;
use crate::vault::auth::{Auth, Principal};
use crate::vault::clock::{now_ms, parse_rfc3339};
use crate::vault::error::ApiError;
use crate::vault::extract::{JsonBody, P, Q};
use crate::vault::fanout::Delivery;
use crate::vault::routes::provider::check_environment;
use crate::vault::store::{AgentBatch, StoreError};

/// Most events one batch may carry.
pub const MAX_BATCH_EVENTS: usize = 10_000;
const MAX_FIELD: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    wait: u64,
}

/// The answer to a long-poll over [`crate::vault::limits::Limits::max_long_polls`]: a 503 the
/// agent backs off from (never sooner than `Retry-After`, jittered on top), `Retry-After`
/// drawn from [`crate::vault::limits::Limits::draw_retry_after`] (5–30 s by default) so refused
/// agents do not come back together, and the connection closed so a refused agent holds
/// nothing while it waits.
fn too_many_long_polls(state: &AppState) -> Response {
    let mut resp = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_long_polls",
        "the vault holds as many long-polls as it admits; retry later",
    )
    .into_response();
    let retry_after = state.admission.limits.draw_retry_after();
    tracing::debug!(
        retry_after_s = retry_after,
        "long-poll refused over the cap"
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A sync read of this poll's own (no long-poll, or a shared read could not answer it).
async fn read(
    state: &AppState,
    org: &str,
    env: &str,
    since: u64,
) -> Result<SyncResponse, ApiError> {
    state.fanout.note_own_read();
    state
        .store
        .sync(org, env, since, now_ms())
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => {
                ApiError::not_found("environment_not_found", "no such environment in this org")
            }
            e => e.into(),
        })
}

/// An answer already serialised (shared by the polls a change woke).
fn shared_json(bytes: bytes::Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// `GET …/orgs/:org_id/environments/:env/sync?since=&wait=`
///
/// Without news the poll parks (under the long-poll cap) until a change, the end of `wait`, or
/// shutdown. The answer to a change is read once and shared by every poll it wakes
/// ([`crate::vault::fanout`]). Plain-HTTP/1.1 connections that carry only syncs are served by
/// [`crate::vault::lane`] instead, with this same [`SyncPoll`].
pub async fn sync(
    State(state): State<AppState>,
    Auth(p): Auth,
    P((org, env)): P<(String, String)>,
    Q(q): Q<SyncQuery>,
) -> Result<Response, ApiError> {
    let poll = SyncPoll::new(&state, &p, org, env, &q).await?;
    Ok(match poll.run(&state).await? {
        PollEnd::Answer(resp) => resp,
        PollEnd::Shared(bytes) => shared_json(bytes),
    })
}

/// How a sync poll ended.
pub(crate) enum PollEnd {
    /// Answer this.
    Answer(Response),
    /// Answer these bytes (`application/json`), shared by every poll the change woke.
    Shared(bytes::Bytes),
}

/// One sync request, checked: where it reads from and how long it may wait. Served by the
/// axum handler [`sync`] and by the lane ([`crate::vault::lane`]) alike.
pub(crate) struct SyncPoll {
    org: String,
    env: String,
    since: u64,
    wait: Duration,
}

impl SyncPoll {
    /// Checks the caller's scope and the request (a `denied` record when refused).
    pub(crate) async fn new(
        state: &AppState,
        p: &Principal,
        org: String,
        env: String,
        q: &SyncQuery,
    ) -> Result<SyncPoll, ApiError> {
        p.require_agent(state, &org, Some(&env)).await?;
        check_environment(&env)?;
        Ok(SyncPoll {
            org,
            env,
            since: q.since,
            wait: Duration::from_secs(q.wait.min(MAX_WAIT_SECONDS)),
        })
    }

    /// Answers at once if there is news (or no wait); else parks until a change, the end of
    /// the wait or shutdown. Dropping the future (the client hung up) unregisters the poll
    /// and frees its place.
    pub(crate) async fn run(self, state: &AppState) -> Result<PollEnd, ApiError> {
        let SyncPoll {
            org,
            env,
            since,
            wait,
        } = self;
        if wait.is_zero() {
            return Ok(PollEnd::Answer(
                Json(read(state, &org, &env, since).await?).into_response(),
            ));
        }
        let deadline = tokio::time::Instant::now() + wait;
        // Taken when the poll first parks, held until it answers.
        let mut parked = None;
        loop {
            // Registered before reading, so a change between the read and the wait is not
            // missed.
            let mut waiter = state.fanout.register(&org, &env, since);
            // Nothing newer than what the agent holds (also `since=0` on an environment still
            // at revision 0): hold the request until a change or the wait ends.
            let full = if waiter.is_current() {
                since == 0
            } else {
                let resp = read(state, &org, &env, since).await?;
                if resp.revision != since {
                    return Ok(PollEnd::Answer(Json(resp).into_response()));
                }
                waiter.saw(since);
                resp.full
            };
            if parked.is_none() {
                match state.admission.long_polls.clone().try_acquire_owned() {
                    Ok(permit) => parked = Some(permit),
                    Err(_) => return Ok(PollEnd::Answer(too_many_long_polls(state))),
                }
            }
            let unchanged = || {
                PollEnd::Answer(
                    Json(SyncResponse {
                        revision: since,
                        full,
                        secrets: Vec::new(),
                        policies: Vec::new(),
                        user_values: Vec::new(),
                    })
                    .into_response(),
                )
            };
            tokio::select! {
                d = waiter.delivery() => match d {
                    Some(Delivery::Answer(bytes)) => return Ok(PollEnd::Shared(bytes)),
                    Some(Delivery::Error(e)) => return Err(e),
                    Some(Delivery::Reread) => continue,
                    None => return Ok(unchanged()),
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(unchanged()),
                _ = crate::vault::stopped(state.shutdown.clone()) => return Ok(unchanged()),
            }
        }
    }
}

fn bad_event(i: usize, what: &str) -> ApiError {
    ApiError::bad_request("invalid_event", format!("event #{i}: {what}"))
}

fn clean(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

/// `POST …/orgs/:org_id/audit/events` (agent token).
pub async fn ingest(
    State(state): State<AppState>,
    Auth(p): Auth,
    P(org): P<String>,
    JsonBody(batch): JsonBody<AuditBatch>,
) -> Result<Json<AuditBatchResponse>, ApiError> {
    p.require_agent(&state, &org, None).await?;
    let env = p.environment.clone().ok_or_else(|| {
        ApiError::forbidden("wrong_token_kind", "agent token without environment")
    })?;
    if !crate::api::valid_agent_id(&batch.agent_id) {
        return Err(ApiError::bad_request(
            "invalid_agent_id",
            "agent_id must be 1 to 128 characters of [A-Za-z0-9._:-]",
        ));
    }
    if batch.host.as_deref().is_some_and(|h| !clean(h, 255)) {
        return Err(ApiError::bad_request(
            "invalid_host",
            "host must be at most 255 printable characters",
        ));
    }
    if batch.events.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!("a batch carries at most {MAX_BATCH_EVENTS} events"),
        ));
    }
    let mut events = Vec::with_capacity(batch.events.len());
    for (i, e) in batch.events.into_iter().enumerate() {
        let time = parse_rfc3339(&e.time).ok_or_else(|| bad_event(i, "time is not RFC 3339"))?;
        if e.seq > i64::MAX as u64 || e.count > i64::MAX as u64 {
            return Err(bad_event(i, "seq or count out of range"));
        }
        if e.version.is_some_and(|v| v > i64::MAX as u64) {
            return Err(bad_event(i, "version out of range"));
        }
        if e.secret
            .as_deref()
            .is_some_and(|s| !api::valid_secret_name(s))
        {
            return Err(bad_event(i, "secret is not a valid secret name"));
        }
        if e.exe
            .as_deref()
            .is_some_and(|s| s.len() > MAX_FIELD || s.contains('\0'))
        {
            return Err(bad_event(i, "exe is too long or holds NUL"));
        }
        if e.unit.as_deref().is_some_and(|s| !clean(s, MAX_FIELD)) {
            return Err(bad_event(i, "unit is too long or holds control characters"));
        }
        if e.user_id.as_deref().is_some_and(|u| !api::valid_user_id(u)) {
            return Err(bad_event(i, "user_id must match ^[A-Za-z0-9._@-]{1,128}$"));
        }
        let undeliverable = e.action == api::AccessAction::Undeliverable;
        let reason_ok = match e.reason.as_deref() {
            None => !undeliverable,
            Some(r) => undeliverable && api::UNDELIVERABLE_REASONS.contains(&r),
        };
        if !reason_ok {
            return Err(bad_event(
                i,
                "reason is given with undeliverable only, as one of cannot_open, malformed, \
                 missing_value",
            ));
        }
        if undeliverable && (e.secret.is_none() || e.version.is_none()) {
            return Err(bad_event(i, "undeliverable names a secret and a version"));
        }
        if e.action == api::AccessAction::Missing && (e.secret.is_none() || e.version.is_some()) {
            return Err(bad_event(i, "missing names a secret and no version"));
        }
        events.push((time, e));
    }
    let resp = state
        .store
        .ingest_agent_batch(AgentBatch {
            org_id: org,
            environment: env,
            agent_id: batch.agent_id,
            host: batch.host,
            actor: p.actor(),
            source_ip: p.source_ip.clone(),
            events,
        })
        .await?;
    Ok(Json(resp))
}
