//! One request: authentication, routing, the backend call, the response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use tracing::{debug, warn};

use crate::auth::TokenHandle;
use crate::routes::{resolve, Op, Resolved};
use crate::{Backend, BackendError, NewClient};

/// The largest request body read (a `NewClient` is a few hundred bytes).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// How long a request body may take to arrive once its headers have.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// The dashboard's page loads its own script and stylesheet and talks to
/// this origin only: nothing injected into it could run or call out.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(crate) type ResponseBody = Full<Bytes>;

/// What every connection of one admin server shares.
pub(crate) struct Shared {
    pub(crate) token: TokenHandle,
    pub(crate) backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("token", &self.token).finish_non_exhaustive()
    }
}

/// A request the API refuses, and the status that says so.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed { allow: Vec<&'static str> },
    #[error("{message}")]
    BadRequest { field: Option<String>, message: String },
    /// Well-formed, but against a rule the OpenAPI document cannot state
    /// (a port range whose first port is above its last).
    #[error("{message}")]
    Unprocessable { field: String, message: String },
    #[error("request body larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("request body not received in time")]
    Timeout,
    #[error("{message}")]
    Conflict { field: Option<String>, message: String },
    #[error("internal error")]
    Internal,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest { field: None, message: message.into() }
    }

    fn into_response(self) -> Response<ResponseBody> {
        #[derive(Serialize)]
        struct ErrorBody<'a> {
            error: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            field: Option<&'a str>,
        }
        let field = match &self {
            ApiError::BadRequest { field, .. } => field.as_deref(),
            ApiError::Unprocessable { field, .. } => Some(field.as_str()),
            ApiError::Conflict { field, .. } => field.as_deref(),
            _ => None,
        };
        let mut r = json(self.status(), &ErrorBody { error: self.to_string(), field });
        match &self {
            ApiError::Unauthorized => {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"opennotr\""));
            }
            ApiError::MethodNotAllowed { allow } => {
                if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                    r.headers_mut().insert(header::ALLOW, v);
                }
            }
            _ => {}
        }
        r
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> ApiError {
        match e {
            BackendError::NotFound(_) => ApiError::NotFound(e.to_string()),
            BackendError::Invalid { ref field, .. } => {
                ApiError::BadRequest { field: Some(field.clone()), message: e.to_string() }
            }
            BackendError::Conflict(_) => ApiError::Conflict { field: None, message: e.to_string() },
            BackendError::Reserved { ref field, .. } => {
                ApiError::Conflict { field: Some(field.clone()), message: e.to_string() }
            }
        }
    }
}

/// Answers one request. Never fails: every refusal is a JSON error response.
pub(crate) async fn handle<B>(req: Request<B>, peer: SocketAddr, shared: Arc<Shared>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match route(req, &shared).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    // The path may carry a session id or a credential name, never a
    // secret; headers and bodies (the token, a new key) are not logged.
    debug!(%peer, %method, %path, status = response.status().as_u16(), "admin request");
    response
}

async fn route<B>(req: Request<B>, shared: &Shared) -> Result<Response<ResponseBody>, ApiError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let resolved = resolve(req.method(), req.uri().path());
    let public = matches!(&resolved, Resolved::Found { route, .. } if route.public);
    // Authenticate before saying whether a path exists, so that without
    // the token the API tells nothing about itself.
    if !public && !shared.token.admits(req.headers()) {
        return Err(ApiError::Unauthorized);
    }
    let (op, param) = match resolved {
        Resolved::Found { route, param } => (route.op, param),
        Resolved::WrongMethod { allow } => return Err(ApiError::MethodNotAllowed { allow }),
        Resolved::NotFound => return Err(ApiError::NotFound(format!("no route for {}", req.uri().path()))),
        Resolved::BadParam => return Err(ApiError::bad("path: invalid percent-encoding")),
    };
    let param = param.unwrap_or_default();
    let backend = shared.backend.clone();
    match op {
        Op::DashboardHtml => {
            let mut r = text(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML);
            r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DASHBOARD_CSP));
            r.headers_mut().insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            r.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            Ok(r)
        }
        Op::DashboardJs => Ok(text(StatusCode::OK, "text/javascript; charset=utf-8", DASHBOARD_JS)),
        Op::DashboardCss => Ok(text(StatusCode::OK, "text/css; charset=utf-8", DASHBOARD_CSS)),
        Op::Healthz => Ok(text(StatusCode::OK, "text/plain; charset=utf-8", "ok")),
        Op::OpenApi => Ok(text(StatusCode::OK, "application/json", crate::OPENAPI_JSON)),
        Op::Metrics => {
            let body = blocking(move || backend.metrics()).await?;
            Ok(text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body))
        }
        Op::ListSessions => Ok(json(StatusCode::OK, &blocking(move || backend.sessions()).await?)),
        Op::GetSession => match blocking(move || backend.session(&param)).await? {
            Some(s) => Ok(json(StatusCode::OK, &s)),
            None => Err(ApiError::NotFound("no such session".into())),
        },
        Op::CloseSession => match blocking(move || backend.close_session(&param)).await? {
            true => Ok(empty(StatusCode::NO_CONTENT)),
            false => Err(ApiError::NotFound("no such session".into())),
        },
        Op::ListClients => Ok(json(StatusCode::OK, &blocking(move || backend.clients()).await?)),
        Op::AddClient => {
            let body = read_body(req.into_body()).await?;
            let new = parse_new_client(&body)?;
            check_new_client(&new)?;
            let key = new.key.clone();
            match blocking(move || backend.add_client(new)).await? {
                Ok(view) => Ok(json(StatusCode::CREATED, &view)),
                Err(e) => Err(redact(ApiError::from(e), &key)),
            }
        }
        Op::RemoveClient => {
            let n = blocking(move || backend.remove_client(&param)).await??;
            #[derive(Serialize)]
            struct Removed {
                sessions_closed: usize,
            }
            Ok(json(StatusCode::OK, &Removed { sessions_closed: n }))
        }
        Op::Reload => match blocking(move || backend.reload()).await? {
            Ok(report) => Ok(json(StatusCode::OK, &report)),
            // A missing file is the request's fault, not a missing route.
            Err(BackendError::NotFound(what)) => Err(ApiError::bad(format!("not found: {what}"))),
            Err(e) => Err(e.into()),
        },
        Op::Refusals => Ok(json(StatusCode::OK, &blocking(move || backend.refusals()).await?)),
        Op::ListGroups => Ok(json(StatusCode::OK, &blocking(move || backend.groups()).await?)),
        Op::Cluster => match blocking(move || backend.cluster()).await? {
            Some(c) => Ok(json(StatusCode::OK, &c)),
            None => Err(ApiError::NotFound("this server is not a cluster node (it has no cluster section)".into())),
        },
        Op::ClusterSessions => match blocking(move || backend.cluster_sessions()).await? {
            Some(c) => Ok(json(StatusCode::OK, &c)),
            None => Err(ApiError::NotFound("this server is not a cluster node (it has no cluster section)".into())),
        },
    }
}

/// Runs a backend call off the runtime's workers (see [`Backend`]); a
/// panic in it fails this request alone.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        warn!(error = %e, "admin backend call failed");
        ApiError::Internal
    })
}

/// The whole body, refused past [`MAX_BODY`] whether it says its length
/// up front or not.
pub(crate) async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(ApiError::TooLarge);
    }
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await;
    match collected {
        Err(_) => Err(ApiError::Timeout),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(ApiError::TooLarge),
        Ok(Err(e)) => Err(ApiError::bad(format!("reading the request body: {e}"))),
    }
}

/// A `NewClient` from JSON, with errors that name the field but never
/// quote the key: serde's messages quote scalar values ("invalid type:
/// integer `1234`"), so for `key` only the path is kept.
fn parse_new_client(body: &[u8]) -> Result<NewClient, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let client = serde_path_to_error::deserialize::<_, NewClient>(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || !inner.is_data() {
            return ApiError::bad(format!("invalid JSON: {inner}"));
        }
        let message = if path == "key" || path.starts_with("key.") || path.starts_with("key[") {
            format!("{path}: must be a string")
        } else {
            format!("{path}: {inner}")
        };
        ApiError::BadRequest { field: Some(path), message }
    })?;
    // Anything after the object is as malformed as serde_json::from_slice says.
    de.end().map_err(|e| ApiError::bad(format!("invalid JSON: {e}")))?;
    Ok(client)
}

/// The bounds the OpenAPI document gives a `NewClient` that the
/// credential's own validation does not: they keep a valid request well
/// inside [`MAX_BODY`] (a list of 64 domains of 253 characters is 16 KiB).
const MAX_ITEMS: usize = 64;
const MAX_KEY_CHARS: usize = 1024;
const MAX_DOMAIN_CHARS: usize = 253;
const MAX_PROTOCOL_CHARS: usize = 63;

/// Checks the bounds above (400), and the one rule of a well-formed
/// request that no schema can state: a range's first port is not above
/// its last (422). Everything else is the backend's to judge.
fn check_new_client(c: &NewClient) -> Result<(), ApiError> {
    let bad = |field: String, message: String| ApiError::BadRequest { field: Some(field), message };
    if c.key.chars().count() > MAX_KEY_CHARS {
        return Err(bad("key".into(), format!("key: longer than {MAX_KEY_CHARS} characters")));
    }
    for (name, list, max) in [
        ("domains", &c.domains, MAX_DOMAIN_CHARS),
        ("ports", &c.ports, 11),
        ("protocols", &c.protocols, MAX_PROTOCOL_CHARS),
    ] {
        if list.len() > MAX_ITEMS {
            return Err(bad(name.into(), format!("{name}: more than {MAX_ITEMS} items")));
        }
        if let Some(j) = list.iter().position(|s| s.chars().count() > max) {
            return Err(bad(format!("{name}[{j}]"), format!("{name}[{j}]: longer than {max} characters")));
        }
    }
    for (j, p) in c.ports.iter().enumerate() {
        let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p != 0 && s.bytes().all(|b| b.is_ascii_digit()));
        if let Some((Some(first), Some(last))) = p.split_once('-').map(|(a, b)| (port(a), port(b))) {
            if first > last {
                let field = format!("ports[{j}]");
                let message = format!("{field}: {p:?} is a range whose first port is above its last");
                return Err(ApiError::Unprocessable { field, message });
            }
        }
    }
    Ok(())
}

/// The same error, with every occurrence of `key` in its message masked:
/// a backend that quotes the key it rejects must not send it back over
/// the wire.
fn redact(e: ApiError, key: &str) -> ApiError {
    if key.is_empty() {
        return e;
    }
    let mask = |s: String| s.replace(key, "<redacted>");
    match e {
        ApiError::BadRequest { field, message } => ApiError::BadRequest { field, message: mask(message) },
        ApiError::Conflict { field, message } => ApiError::Conflict { field, message: mask(message) },
        ApiError::NotFound(m) => ApiError::NotFound(mask(m)),
        other => other,
    }
}

// ------------------------------------------------------------ responses

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            text(status, "application/json", body)
        }
        Err(e) => {
            warn!(error = %e, "serialising an admin response failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "application/json", "{\"error\":\"internal error\"}\n")
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Live state: nothing may be served from a cache, and the dashboard's
    // files must follow an upgrade of the binary at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of unknown length (as a chunked request's), in frames.
    struct Chunked(std::collections::VecDeque<Bytes>);

    impl Body for Chunked {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }

    fn chunks(n: usize, size: usize) -> Chunked {
        Chunked((0..n).map(|_| Bytes::from(vec![b'x'; size])).collect())
    }

    #[tokio::test]
    async fn body_limit_holds_without_a_declared_length() {
        assert!(matches!(read_body(chunks(5, 16 * 1024)).await, Err(ApiError::TooLarge)));
        assert_eq!(read_body(chunks(4, 16 * 1024)).await.unwrap().len(), MAX_BODY);
    }

    #[tokio::test]
    async fn body_limit_refuses_a_declared_length_at_once() {
        let body = Full::new(Bytes::from(vec![b'x'; MAX_BODY + 1]));
        assert!(matches!(read_body(body).await, Err(ApiError::TooLarge)));
    }

    #[test]
    fn parse_errors_name_the_field_and_never_quote_the_key() {
        let err = |body: &str| match parse_new_client(body.as_bytes()) {
            Err(ApiError::BadRequest { field, message }) => (field, message),
            other => panic!("{body}: {other:?}"),
        };
        let (field, msg) = err(r#"{"name":"a","key":987654321}"#);
        assert_eq!(field.as_deref(), Some("key"));
        assert!(!msg.contains("987654321"), "{msg}");
        let (field, msg) = err(r#"{"name":"a","key":"k","domains":"x.example"}"#);
        assert_eq!(field.as_deref(), Some("domains"), "{msg}");
        let (_, msg) = err(r#"{"name":"a","key":"k","colour":"red"}"#);
        assert!(msg.contains("colour"), "{msg}");
        let (_, msg) = err(r#"{"name":"a"}"#);
        assert!(msg.contains("key"), "{msg}");
        let (_, msg) = err(r#"{"name":"a","key":"k"} trailing"#);
        assert!(msg.contains("invalid JSON"), "{msg}");
        assert!(parse_new_client(br#"{"name":"a","key":"k"}"#).is_ok());
    }
}
