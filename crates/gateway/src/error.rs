//! Where a request failed ([`GatewayError`], [`Origin`]), and the page the
//! visitor gets for it.

use hyper::StatusCode;

/// Who a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// The visitor: a request that broke the rules, came too slowly, or
    /// named no routed domain.
    Visitor,
    /// The tunnel: the domain's client is gone, or no stream to it could
    /// be opened.
    Tunnel,
    /// The client's service: it refused the connection, answered with a
    /// broken response, too late, or not at all.
    Service,
}

impl Origin {
    /// Every origin, in the order metrics list them.
    pub const ALL: [Origin; 3] = [Origin::Visitor, Origin::Tunnel, Origin::Service];

    /// The label in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Visitor => "visitor",
            Origin::Tunnel => "tunnel",
            Origin::Service => "service",
        }
    }
}

/// Why the gateway answered a request itself instead of with the
/// service's response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The request broke an HTTP/1.1 message rule; `status` is its answer
    /// (400, 405, 414, 417, 431, 501 or 505).
    #[error("bad request: {reason}")]
    BadRequest {
        /// The status answered.
        status: u16,
        /// The rule it broke.
        reason: &'static str,
    },
    /// The visitor did not send its request (head or body) in time.
    #[error("the request was not received in time ({0})")]
    VisitorTimeout(&'static str),
    /// The visitor's connection failed while its request was read.
    #[error("the visitor's connection failed: {0}")]
    VisitorIo(String),
    /// No forward serves the name.
    #[error("No service is routed for {0} here.")]
    NoRoute(String),
    /// The name's client is not connected, or no stream to it opened.
    #[error("client not connected: {0}")]
    ClientGone(String),
    /// Another node of the cluster (named) serves the name, and it could
    /// not be reached.
    #[error("the node serving this name ({0}) cannot be reached")]
    NodeUnreachable(String),
    /// The client has as many streams open as it may.
    #[error("too many streams for this client")]
    TooManyStreams,
    /// The client could not connect to its service (the client's reason).
    #[error("bad gateway: {0}")]
    ServiceRefused(String),
    /// The service's response broke a message rule.
    #[error("bad gateway: invalid response from the service: {0}")]
    ServiceMalformed(&'static str),
    /// The service did not answer, or paused its answer, for longer than
    /// the response timeout.
    #[error("the service did not answer within the response timeout")]
    ServiceTimeout,
    /// The exchange with the service failed.
    #[error("bad gateway: {0}")]
    ServiceFailed(String),
    /// The forward's access rules refuse the visitor's address.
    #[error("access denied")]
    Forbidden,
    /// The forward asks for HTTP basic auth credentials (for the realm),
    /// and the request has none or wrong ones.
    #[error("authentication required")]
    Unauthorized(String),
    /// Too many passwords are being checked at once.
    #[error("too many password checks at once; try again")]
    AuthBusy,
}

impl GatewayError {
    /// Who failed.
    pub fn origin(&self) -> Origin {
        match self {
            GatewayError::BadRequest { .. }
            | GatewayError::VisitorTimeout(_)
            | GatewayError::VisitorIo(_)
            | GatewayError::NoRoute(_)
            | GatewayError::Forbidden
            | GatewayError::Unauthorized(_)
            | GatewayError::AuthBusy => Origin::Visitor,
            GatewayError::ClientGone(_) | GatewayError::TooManyStreams | GatewayError::NodeUnreachable(_) => {
                Origin::Tunnel
            }
            GatewayError::ServiceRefused(_)
            | GatewayError::ServiceMalformed(_)
            | GatewayError::ServiceTimeout
            | GatewayError::ServiceFailed(_) => Origin::Service,
        }
    }

    /// The status the visitor gets.
    pub fn status(&self) -> StatusCode {
        let code = match self {
            GatewayError::BadRequest { status, .. } => *status,
            GatewayError::VisitorTimeout(_) => 408,
            GatewayError::VisitorIo(_) => 400,
            GatewayError::NoRoute(_) => 404,
            GatewayError::Forbidden => 403,
            GatewayError::Unauthorized(_) => 401,
            GatewayError::AuthBusy => 503,
            GatewayError::ClientGone(_) | GatewayError::TooManyStreams => 503,
            GatewayError::ServiceRefused(_)
            | GatewayError::ServiceMalformed(_)
            | GatewayError::ServiceFailed(_)
            | GatewayError::NodeUnreachable(_) => 502,
            GatewayError::ServiceTimeout => 504,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
    }

    /// Whether the visitor's connection must close after the answer: the
    /// request's own bytes can no longer be trusted to end where it says.
    pub fn closes(&self) -> bool {
        // A refusal by the access rules comes before the body is read, as
        // a missing route does; the connection stays usable (a browser
        // sends its credentials on it).
        self.origin() == Origin::Visitor
            && !matches!(
                self,
                GatewayError::NoRoute(_)
                    | GatewayError::Forbidden
                    | GatewayError::Unauthorized(_)
                    | GatewayError::AuthBusy
            )
    }

    pub(crate) fn bad_request(r: crate::rules::Reject) -> GatewayError {
        GatewayError::BadRequest { status: r.status, reason: r.reason }
    }

    /// The page answering it.
    pub(crate) fn page(&self) -> Page {
        Page { status: self.status(), detail: self.to_string() }
    }
}

/// An answer of the gateway's own, as a small HTML page.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    detail: String,
}

impl Page {
    pub(crate) fn html(&self) -> String {
        let title = self.status.canonical_reason().unwrap_or("Error");
        format!(
            "<!DOCTYPE html>\n<html><head><title>{status_code} {title}</title></head>\n\
             <body><h1>{status_code} {title}</h1><p>{detail}</p><hr><p>opennotr</p></body></html>\n",
            status_code = self.status.as_u16(),
            title = escape(title),
            detail = escape(&self.detail),
        )
    }

    /// The page as a whole HTTP/1.1 response.
    pub(crate) fn write_http1(&self, out: &mut Vec<u8>, keep: bool) {
        use std::io::Write as _;
        let body = self.html();
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: text/html; charset=utf-8\r\ncache-control: no-store\r\n\
             content-length: {}\r\n{}\r\n{body}",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or("Error"),
            body.len(),
            if keep { "" } else { "connection: close\r\n" },
        );
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_who_failed_and_what_the_visitor_gets() {
        let cases = [
            (GatewayError::BadRequest { status: 431, reason: "x" }, Origin::Visitor, 431, true),
            (GatewayError::VisitorTimeout("body"), Origin::Visitor, 408, true),
            (GatewayError::NoRoute("a.example".into()), Origin::Visitor, 404, false),
            (GatewayError::ClientGone("a.example".into()), Origin::Tunnel, 503, false),
            (GatewayError::NodeUnreachable("node-b".into()), Origin::Tunnel, 502, false),
            (GatewayError::ServiceRefused("connection refused".into()), Origin::Service, 502, false),
            (GatewayError::ServiceMalformed("x"), Origin::Service, 502, false),
            (GatewayError::ServiceTimeout, Origin::Service, 504, false),
        ];
        for (e, origin, status, closes) in cases {
            assert_eq!((e.origin(), e.status().as_u16(), e.closes()), (origin, status, closes), "{e}");
        }
        let mut out = Vec::new();
        GatewayError::NoRoute("<a>".into()).page().write_http1(&mut out, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n") && text.contains("connection: close\r\n"), "{text}");
        assert!(text.contains("&lt;a&gt;") && !text.contains("<a>"), "{text}");
    }
}
