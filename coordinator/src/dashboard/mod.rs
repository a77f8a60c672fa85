//! The live dashboard: a small web page served by the coordinator on its own port, with the
//! same token as the gRPC API. The page is static (no data, no secrets); it reads the token from
//! the URL fragment (`#token=...`, never sent to the server or written in its logs) and polls
//! the JSON API with `Authorization: Bearer`, so the same page works behind any proxy.

mod view;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use circuit_sweep_proto::auth;

use crate::incoming::AdmittedListener;
use crate::server::Service;

pub use view::{live_view, status_view};

const PAGE: &str = include_str!("page.html");

/// The page's policy: its own inline script and style only (by hash), requests to its own
/// origin only, and no framing by other sites.
static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hash("<script>", "</script>"),
        inline_hash("<style>", "</style>")
    )
});

/// `sha256-...` of the page's one inline block between `open` and `close`.
fn inline_hash(open: &str, close: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let start = PAGE.find(open).expect("the page has the block") + open.len();
    let end = start + PAGE[start..].find(close).expect("the block is closed");
    let digest = sha2::Sha256::digest(&PAGE.as_bytes()[start..end]);
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Headers on every response: the policy, no content sniffing, no framing, no referrer.
async fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(&CSP).expect("an ASCII policy"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// Shards of a job done, and planned.
type ShardCounts = (usize, usize);

/// What the handlers share.
#[derive(Clone)]
struct Dash {
    service: Service,
    tokens: Arc<Vec<String>>,
    /// Live views by job, with the shards done and planned they were made at: reading stored
    /// shard results again only when a shard finished or more were planned.
    cache: Arc<Mutex<HashMap<u64, (ShardCounts, serde_json::Value)>>>,
}

impl Dash {
    /// The refusal for a call without the right token, if it is one.
    fn refused(&self, headers: &HeaderMap) -> Option<Response> {
        let t: Vec<&str> = self.tokens.iter().map(String::as_str).collect();
        let meta = tonic::metadata::MetadataMap::from_headers(headers.clone());
        auth::check_token(&meta, &t).err().map(|s| {
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                s.message().to_string(),
            )
                .into_response()
        })
    }
}

/// The dashboard's routes: `/` (the page), `/healthz` (no token), `/api/status` and
/// `/api/jobs/{id}` (token).
pub fn router(service: Service, tokens: Vec<String>) -> Router {
    let state = Dash {
        service,
        tokens: Arc::new(tokens),
        cache: Arc::default(),
    };
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/status", get(status))
        .route("/api/jobs/{id}", get(job))
        .layer(axum::middleware::map_response(secure))
        .with_state(state)
}

/// Serves the dashboard on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Service,
    tokens: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = AdmittedListener::new(listener, service.connection_limits())?;
    axum::serve(listener, router(service, tokens))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

fn json(v: serde_json::Value) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(v)).into_response()
}

async fn status(State(d): State<Dash>, headers: HeaderMap) -> Response {
    if let Some(r) = d.refused(&headers) {
        return r;
    }
    match d.service.status_now() {
        Ok(st) => json(status_view(&st)),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn job(State(d): State<Dash>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    if let Some(r) = d.refused(&headers) {
        return r;
    }
    let unknown = || (StatusCode::NOT_FOUND, format!("no job {id}")).into_response();
    // Shards done and planned: a view changes with either (an order study plans more shards
    // once its orders are done).
    let Some(counts) = d.service.shard_counts(id) else {
        return unknown();
    };
    if let Some((n, v)) = d.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&id)
        && *n == counts
    {
        return json(v.clone());
    }
    // Reading the stored shards and the statistics is blocking work: off the async threads.
    let service = d.service.clone();
    let read =
        tokio::task::spawn_blocking(move || service.partial(id).map(|p| live_view(&p))).await;
    let v = match read {
        Ok(Ok(v)) => v,
        Ok(Err(crate::scheduler::SchedError::UnknownJob(_))) => return unknown(),
        Ok(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    d.cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, (counts, v.clone()));
    json(v)
}
