//! `GET /events`: lifecycle events as server-sent events, filtered to what the caller's
//! token may see.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::{AppState, Caller};
use crate::events::{self, Event, Reader, kinds};
use crate::store::Db;

/// How often a stream looks for new events.
const POLL: Duration = Duration::from_millis(200);
/// Streams one process serves at once to tokens confined to a tenant, and to one
/// tenant: each polls the database, so no client can load it without bound, and one
/// tenant cannot take every stream.
const MAX_TENANT_STREAMS: usize = 48;
const MAX_STREAMS_PER_TENANT: usize = 4;
/// Streams kept for operators' tokens, whatever tenants hold.
const MAX_OPERATOR_STREAMS: usize = 16;
static TENANT_STREAMS: Semaphore = Semaphore::const_new(MAX_TENANT_STREAMS);
static OPERATOR_STREAMS: Semaphore = Semaphore::const_new(MAX_OPERATOR_STREAMS);
static PER_TENANT: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
/// Set when the process shuts down: streams end, so a graceful shutdown does not wait
/// for clients that never hang up.
static CLOSING: AtomicBool = AtomicBool::new(false);

/// Ends every event stream of this process (at its next poll): call when shutting down.
pub fn close_streams() {
    CLOSING.store(true, Ordering::SeqCst);
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/events", get(stream))
}

/// Streams lifecycle events from now on, or from after `Last-Event-ID` (an event's
/// `seq`, as each event's SSE `id` gives it) so a client that reconnects misses
/// nothing. A token confined to a tenant sees that tenant's events and the state of the
/// rollouts that upgrade its participants, without their fleet-wide counts.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    summary = "Lifecycle events as server-sent events (orchestration, rollout, rollout.participant, decommission)",
    params(("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event's seq")),
    responses(
        (status = 200, description = "text/event-stream: each event's id is its seq, its event its kind, its data {seq, at, kind, tenantId, subject, data}"),
        (status = 400, description = "A Last-Event-ID that is not a number", body = ErrorBody),
        (status = 503, description = "Too many streams open (4 per tenant, 48 for all tenants, 16 for operators)", body = ErrorBody)
    )
)]
pub(super) async fn stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<sse::Event, Infallible>>>> {
    let slot = Slot::take(caller.tenant.as_deref())?;
    let db = state.engine.db().clone();
    let after = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|seq| *seq >= 0)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID must be an event's seq (a whole number)",
                )
            })?,
        None => events::newest(&db).await?,
    };
    let subscriber = Subscriber {
        reader: Reader::after(db.clone(), after),
        filter: Filter {
            db,
            tenant: caller.tenant,
            involved: HashMap::new(),
        },
        ready: VecDeque::new(),
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(subscriber, |mut subscriber| async move {
        let event = subscriber.next().await?;
        Some((Ok(event), subscriber))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One client's stream: the reader, what it may see, and the events ready to send.
struct Subscriber {
    reader: Reader,
    filter: Filter,
    ready: VecDeque<sse::Event>,
    _slot: Slot,
}

impl Subscriber {
    /// The next event the client may see, waiting for one as long as it takes; None
    /// when the process shuts down.
    async fn next(&mut self) -> Option<sse::Event> {
        loop {
            if CLOSING.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            match self.reader.poll().await {
                Ok(events) => {
                    for event in events {
                        if let Some(shown) = self.filter.show(event).await {
                            self.ready.push_back(shown);
                        }
                    }
                }
                Err(e) => tracing::warn!("reading events: {e}"),
            }
            if self.ready.is_empty() {
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// A stream's place among those the process serves; given back when the stream ends.
struct Slot {
    _permit: SemaphorePermit<'static>,
    tenant: Option<String>,
}

impl Slot {
    /// A place for a stream of `tenant` (None: an operator), or 503 when there is none.
    fn take(tenant: Option<&str>) -> ApiResult<Slot> {
        let busy = |what: String| ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{what} event streams are open already; try again later"),
            )
        };
        let Some(tenant) = tenant else {
            let permit = OPERATOR_STREAMS
                .try_acquire()
                .map_err(|_| busy(format!("{MAX_OPERATOR_STREAMS} operator")))?;
            return Ok(Slot {
                _permit: permit,
                tenant: None,
            });
        };
        let mut per_tenant = PER_TENANT.lock().unwrap_or_else(|p| p.into_inner());
        let open = per_tenant.entry(tenant.to_string()).or_default();
        if *open >= MAX_STREAMS_PER_TENANT {
            return Err(busy(format!("{MAX_STREAMS_PER_TENANT} of this tenant's")));
        }
        let permit = TENANT_STREAMS
            .try_acquire()
            .map_err(|_| busy(format!("{MAX_TENANT_STREAMS} tenants'")))?;
        *open += 1;
        Ok(Slot {
            _permit: permit,
            tenant: Some(tenant.to_string()),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(tenant) = &self.tenant else {
            return;
        };
        let mut per_tenant = PER_TENANT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = per_tenant.get_mut(tenant) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                per_tenant.remove(tenant);
            }
        }
    }
}

/// What a caller may see of the events.
struct Filter {
    db: Db,
    /// A confined token's tenant; None for an operator's token, which sees everything.
    tenant: Option<String>,
    /// Rollouts known to upgrade (or not) a participant of the tenant.
    involved: HashMap<String, bool>,
}

impl Filter {
    /// The event as this caller may see it, or None.
    async fn show(&mut self, mut event: Event) -> Option<sse::Event> {
        if let Some(tenant) = &self.tenant {
            match event.tenant_id.as_deref() {
                Some(owner) if owner == tenant => {}
                None if event.kind == kinds::ROLLOUT => {
                    if !self.involves(&event.subject).await {
                        return None;
                    }
                    // The detail speaks of the whole fleet (counts of other tenants).
                    event.data = json!({"id": event.data["id"], "state": event.data["state"]});
                }
                _ => return None,
            }
        }
        let body = json!({"seq": event.seq, "at": event.at, "kind": event.kind,
            "tenantId": event.tenant_id, "subject": event.subject, "data": event.data});
        Some(
            sse::Event::default()
                .id(event.seq.to_string())
                .event(event.kind)
                .data(body.to_string()),
        )
    }

    /// Whether the rollout upgrades a participant of the caller's tenant.
    async fn involves(&mut self, rollout_id: &str) -> bool {
        if let Some(known) = self.involved.get(rollout_id) {
            return *known;
        }
        let Some(tenant) = &self.tenant else {
            return true;
        };
        let found: Result<Option<i64>, _> = sqlx::query_scalar(
            "SELECT 1 FROM rollout_targets WHERE rollout_id = $1 AND tenant_id = $2 LIMIT 1",
        )
        .bind(rollout_id)
        .bind(tenant)
        .fetch_optional(self.db.read())
        .await;
        match found {
            Ok(found) => {
                self.involved
                    .insert(rollout_id.to_string(), found.is_some());
                found.is_some()
            }
            Err(e) => {
                tracing::warn!(rollout = %rollout_id, "cannot tell whether a rollout concerns a tenant: {e}");
                false
            }
        }
    }
}
