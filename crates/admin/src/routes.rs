//! The one table of routes: the router matches against it, and
//! [`crate::routes`] hands it to the test that compares it with the OpenAPI
//! document, so the two cannot drift apart.

use hyper::Method;

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    DashboardHtml,
    DashboardJs,
    DashboardCss,
    Healthz,
    Metrics,
    OpenApi,
    ListSessions,
    GetSession,
    CloseSession,
    ListClients,
    AddClient,
    RemoveClient,
    Reload,
    Refusals,
    ListGroups,
    Cluster,
    ClusterSessions,
}

/// One method on one path.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) method: Method,
    /// Literal segments and at most one `{param}` segment, as in OpenAPI.
    pub(crate) path: &'static str,
    pub(crate) op: Op,
    /// Served without a token: the health check, and the dashboard's
    /// static files (which hold no data; the data needs the token).
    pub(crate) public: bool,
}

const fn route(method: Method, path: &'static str, op: Op, public: bool) -> Route {
    Route { method, path, op, public }
}

pub(crate) static ROUTES: &[Route] = &[
    route(Method::GET, "/", Op::DashboardHtml, true),
    route(Method::GET, "/dashboard.js", Op::DashboardJs, true),
    route(Method::GET, "/dashboard.css", Op::DashboardCss, true),
    route(Method::GET, "/healthz", Op::Healthz, true),
    route(Method::GET, "/metrics", Op::Metrics, false),
    route(Method::GET, "/api/v1/openapi.json", Op::OpenApi, false),
    route(Method::GET, "/api/v1/sessions", Op::ListSessions, false),
    route(Method::GET, "/api/v1/sessions/{id}", Op::GetSession, false),
    route(Method::DELETE, "/api/v1/sessions/{id}", Op::CloseSession, false),
    route(Method::GET, "/api/v1/clients", Op::ListClients, false),
    route(Method::POST, "/api/v1/clients", Op::AddClient, false),
    route(Method::DELETE, "/api/v1/clients/{name}", Op::RemoveClient, false),
    route(Method::POST, "/api/v1/reload", Op::Reload, false),
    route(Method::GET, "/api/v1/refusals", Op::Refusals, false),
    route(Method::GET, "/api/v1/groups", Op::ListGroups, false),
    route(Method::GET, "/api/v1/cluster", Op::Cluster, false),
    route(Method::GET, "/api/v1/cluster/sessions", Op::ClusterSessions, false),
];

/// What a request's method and path lead to.
#[derive(Debug)]
pub(crate) enum Resolved {
    Found {
        route: &'static Route,
        /// The `{param}` segment, percent-decoded.
        param: Option<String>,
    },
    /// The path exists with other methods.
    WrongMethod {
        allow: Vec<&'static str>,
    },
    NotFound,
    /// A `{param}` segment that is not valid percent-encoded UTF-8.
    BadParam,
}

pub(crate) fn resolve(method: &Method, path: &str) -> Resolved {
    let mut allow = Vec::new();
    for route in ROUTES {
        let param = match matches(route.path, path) {
            Match::No => continue,
            Match::Bad => return Resolved::BadParam,
            Match::Yes(param) => param,
        };
        if route.method == *method {
            return Resolved::Found { route, param };
        }
        allow.push(route.method.as_str());
    }
    if allow.is_empty() {
        Resolved::NotFound
    } else {
        Resolved::WrongMethod { allow }
    }
}

enum Match {
    No,
    Yes(Option<String>),
    Bad,
}

fn matches(template: &str, path: &str) -> Match {
    let mut t = template.split('/');
    let mut p = path.split('/');
    let mut param = None;
    loop {
        match (t.next(), p.next()) {
            (None, None) => break,
            (Some(ts), Some(ps)) if ts.starts_with('{') => {
                if ps.is_empty() {
                    return Match::No;
                }
                match percent_decode(ps) {
                    Some(v) => param = Some(v),
                    None => return Match::Bad,
                }
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return Match::No,
        }
    }
    Match::Yes(param)
}

/// `%XX` sequences to bytes, which must then be UTF-8. The dashboard
/// encodes names with `encodeURIComponent`, so names with `/`, spaces or
/// non-ASCII letters still fit in one segment.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(method: Method, path: &str) -> (Op, Option<String>) {
        match resolve(&method, path) {
            Resolved::Found { route, param } => (route.op, param),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn resolves_literal_and_param_paths() {
        assert_eq!(found(Method::GET, "/"), (Op::DashboardHtml, None));
        assert_eq!(found(Method::GET, "/api/v1/sessions"), (Op::ListSessions, None));
        assert_eq!(found(Method::GET, "/api/v1/sessions/ab12"), (Op::GetSession, Some("ab12".into())));
        assert_eq!(found(Method::DELETE, "/api/v1/sessions/ab12"), (Op::CloseSession, Some("ab12".into())));
        assert_eq!(found(Method::DELETE, "/api/v1/clients/a%20b%2Fc%C3%A9"), (Op::RemoveClient, Some("a b/cé".into())));
    }

    #[test]
    fn tells_unknown_paths_from_wrong_methods() {
        assert!(matches!(resolve(&Method::GET, "/nope"), Resolved::NotFound));
        assert!(matches!(resolve(&Method::GET, "/api/v1/sessions/"), Resolved::NotFound));
        assert!(matches!(resolve(&Method::GET, "/api/v1/sessions/a/b"), Resolved::NotFound));
        assert!(matches!(resolve(&Method::GET, "/api/v1/sessionsx"), Resolved::NotFound));
        match resolve(&Method::PUT, "/api/v1/clients") {
            Resolved::WrongMethod { allow } => assert_eq!(allow, ["GET", "POST"]),
            other => panic!("{other:?}"),
        }
        match resolve(&Method::GET, "/api/v1/clients/x") {
            Resolved::WrongMethod { allow } => assert_eq!(allow, ["DELETE"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_bad_percent_encoding() {
        for bad in ["%", "%4", "%zz", "%ff%fe"] {
            let path = format!("/api/v1/sessions/{bad}");
            assert!(matches!(resolve(&Method::GET, &path), Resolved::BadParam), "{path}");
        }
    }

    #[test]
    fn every_path_has_at_most_one_param_and_no_duplicates() {
        for (i, r) in ROUTES.iter().enumerate() {
            assert!(r.path.matches('{').count() <= 1, "{}", r.path);
            for other in &ROUTES[i + 1..] {
                assert!(!(r.path == other.path && r.method == other.method), "{} {}", r.method, r.path);
            }
        }
    }
}
