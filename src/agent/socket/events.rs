//! `GET /v1/events`: server-sent events for the secrets the caller may read, so apps reload
//! without polling.
//!
//! | event | when | data |
//! |---|---|---|
//! | `added` | a secret appeared | `{name, version}` |
//! | `rotated` | a new version; the old one stays readable (`?version=previous`) for its grace | `{name, version, previous_version}` |
//! | `updated` | a new version replaced the old one with no grace (a push over it) | `{name, version, previous_version}` |
//! | `revoked` | the secret is gone | `{name, version}` |
//! | `expired` | the previous version's grace ended | `{name, version}` (the expired version) |
//! | `resync` | this stream fell behind and missed events: re-list | `{"missed": N}` |
//!
//! Keep-alive comments flow while nothing happens; the stream ends when the agent shuts down.

use std::convert::Infallible;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt, stream};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::limits::ConnControl;
use super::wire::EventData;
use super::{Ctx, Peer};
use crate::agent::view::Change;
use crate::api::AccessVia;

pub(super) async fn events(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    control: Option<Extension<ConnControl>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribed before the answer's head goes out: a client that has the head sees every
    // change from then on.
    let rx = ctx.state.view.subscribe();
    let state = ctx.state.clone();
    let caller = peer.caller.clone();
    let mut stop = ctx.shutdown.clone();
    let taken = Arc::new(AtomicU64::new(0));
    // Dropped with the stream: ends the stall watch.
    let (gone, gone_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(Extension(control)) = control {
        tokio::spawn(watch_stall(
            ctx.state.view.subscribe(),
            taken.clone(),
            gone_rx,
            control,
        ));
    }
    let hello = stream::once(async { Ok(Event::default().comment("fyvault events")) });
    let changes = BroadcastStream::new(rx).filter_map(move |item| {
        let _alive = &gone;
        taken.fetch_add(
            match &item {
                Ok(_) => 1,
                Err(BroadcastStreamRecvError::Lagged(n)) => *n,
            },
            Ordering::Relaxed,
        );
        let out = match item {
            Ok(change) => {
                let name = change.name();
                if state.gate().lists(&caller, AccessVia::Socket, name) {
                    to_event(&change)
                } else {
                    None
                }
            }
            Err(BroadcastStreamRecvError::Lagged(n)) => Some(
                Event::default()
                    .event("resync")
                    .data(format!("{{\"missed\":{n}}}")),
            ),
        };
        std::future::ready(out.map(Ok))
    });
    let until_shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    Sse::new(hello.chain(changes).take_until(until_shutdown))
        .keep_alive(KeepAlive::new().interval(ctx.keep_alive))
}

/// Counts the changes published while the stream is open; when the stream has taken more than
/// `max_events_behind` fewer for longer than `event_stall` (its reader stopped reading, so
/// hyper stopped polling it), ends the connection. What a stalled stream holds is bounded
/// anyway (the change channel keeps at most 1,024 changes for all streams together); this
/// frees its connection and its place in the limits.
async fn watch_stall(
    mut published: tokio::sync::broadcast::Receiver<Change>,
    taken: Arc<AtomicU64>,
    mut gone: tokio::sync::oneshot::Receiver<()>,
    control: ConnControl,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut seen = 0u64;
    loop {
        tokio::select! {
            _ = &mut gone => return,
            r = published.recv() => match r {
                Ok(_) => seen += 1,
                Err(RecvError::Lagged(n)) => seen += n,
                Err(RecvError::Closed) => return,
            },
        }
        let behind = |seen: u64| seen.saturating_sub(taken.load(Ordering::Relaxed));
        if behind(seen) > control.max_events_behind {
            tokio::select! {
                _ = &mut gone => return,
                () = tokio::time::sleep(control.event_stall) => {}
            }
            if behind(seen) > control.max_events_behind {
                control.kill.notify_one();
                return;
            }
        }
    }
}

fn to_event(change: &Change) -> Option<Event> {
    let (kind, data) = match change {
        Change::Added { name, version } => ("added", data(name, *version, None)),
        Change::Rotated {
            name,
            version,
            previous,
            in_grace,
        } => (
            // As the view decided when it applied the change (not as it stands now).
            if *in_grace { "rotated" } else { "updated" },
            data(name, *version, Some(*previous)),
        ),
        Change::Revoked { name, version } => ("revoked", data(name, *version, None)),
        Change::PreviousExpired { name, version } => ("expired", data(name, *version, None)),
        Change::RefusedRollback { .. } => return None,
    };
    Some(Event::default().event(kind).data(data))
}

fn data(name: &str, version: u64, previous_version: Option<u64>) -> String {
    serde_json::to_string(&EventData {
        name: name.to_owned(),
        version,
        previous_version,
    })
    .unwrap_or_default()
}
