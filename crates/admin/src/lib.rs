//! The operator's side of `opennotrd`: an HTTP API (sessions, credentials,
//! reload, refusals, Prometheus metrics) and a web dashboard over it.
//!
//! The server implements [`Backend`]; this crate serves it:
//!
//! ```no_run
//! # async fn f(backend: std::sync::Arc<dyn opennotr_admin::Backend>) -> std::io::Result<()> {
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let admin = opennotr_admin::AdminServer::bind("127.0.0.1:7070".parse().unwrap(), "token".into(), backend).await?;
//! tokio::spawn(admin.run(shutdown.clone()));
//! # Ok(()) }
//! ```
//!
//! Every request but `GET /healthz` and the dashboard's static files needs
//! `Authorization: Bearer <token>`. The dashboard's page holds no data: its
//! script reads the token from the URL fragment (`/#token=…`, which browsers
//! never send) or a form, and fetches everything from the API with it.
//! See `docs/admin.md`.
//!
//! # Layout
//! - `backend`: the [`Backend`] trait and the JSON views.
//! - `routes`: the one route table; the router and the OpenAPI test both
//!   read it ([`routes`]).
//! - `api`: one request: token check, routing, body limit, backend call
//!   on the blocking pool, JSON errors.
//! - `auth`: the constant-time bearer token check, and [`TokenHandle`],
//!   which replaces the token of a running server.
//! - `server`: [`AdminServer`]: accept loop, connection tasks, graceful
//!   shutdown.
//! - `openapi.json`: the OpenAPI 3.1 document ([`OPENAPI_JSON`]).
//! - `dashboard/`: the dashboard's HTML, script and stylesheet, embedded.

mod api;
mod auth;
mod backend;
mod routes;
mod server;

pub use auth::TokenHandle;
pub use backend::{
    AccessRulesView, Backend, BackendError, ClaimView, ClientView, ClusterView, ForwardAccessView, ForwardGroupView,
    ForwardView, GroupMemberView, GroupView, NewClient, NodeSessions, NodeView, RefusalView, RefusedView, ReloadReport,
    SessionView,
};
pub use server::AdminServer;

/// The OpenAPI 3.1 document of the API, served at `/api/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// The largest request body accepted, in bytes; larger ones get 413.
pub const MAX_BODY: usize = api::MAX_BODY;

/// Every `(method, path)` the server answers, from the table its router
/// matches against; paths are OpenAPI templates (`/api/v1/sessions/{id}`).
pub fn routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    routes::ROUTES.iter().map(|r| (r.method.as_str(), r.path))
}
