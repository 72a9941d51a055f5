//! The `http` capability: `wasi:http/outgoing-handler` under the plugin's grants.
//!
//! The URL is parsed once into its canonical form ([`target`]); where it may go is judged
//! by [`egress_policy`], on the request and again when the client resolves a name. The
//! client is handed the canonical [`url::Url`], whose host is a plain dotted quad or
//! compressed IPv6 that parses to exactly the address checked, never the guest's text,
//! which could parse differently. Redirects are not followed and no proxy is used; each
//! hop is the plugin's own request and is judged again.

pub mod egress_policy;
pub mod target;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tracing::Instrument;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::CallContext;
use crate::audit::{Decision, Effect};
use crate::grants::{Capability, HttpGrant};
use egress_policy::{AddressPolicy, FilteringResolver};
use target::Target;

/// Largest request body a plugin may send; plugins call JSON APIs, not upload files.
pub const MAX_REQUEST_BODY: usize = 8 << 20;
/// How long establishing a connection may take before the plugin gets an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One plugin's HTTP client, built when the plugin loads: it resolves through the
/// plugin's [`AddressPolicy`].
#[derive(Clone)]
pub struct PluginHttp {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

/// The plugin's HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the HTTP client: {0}")]
pub struct ClientError(#[source] reqwest::Error);

impl PluginHttp {
    /// The client of a plugin with `grant`: it resolves through the grant's address policy,
    ///  follows no redirect and uses no proxy.
    pub fn new(grant: &HttpGrant) -> Result<Self, ClientError> {
        let policy = Arc::new(AddressPolicy::new(grant));
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(FilteringResolver::new(policy.clone())))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(ClientError)?;
        Ok(Self { client, policy })
    }
}

/// The `wasi:http` hooks of one invocation.
pub struct OutboundHttp {
    calls: Arc<CallContext>,
    /// None for a plugin without an `http` grant: it is not linked then, and if it
    /// were, every request would be denied.
    client: Option<PluginHttp>,
}

impl OutboundHttp {
    /// The hooks of one invocation calling as `calls`, with the plugin's client when it has
    ///  an `http` grant.
    pub fn new(calls: Arc<CallContext>, client: Option<PluginHttp>) -> Self {
        Self { calls, client }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type Sent = Result<(http::Response<WasiBody>, IoFuture), HttpError>;

impl WasiHttpHooks for OutboundHttp {
    /// The `Host` header comes from the checked URL, never from the plugin.
    fn set_host_header(&mut self) -> bool {
        false
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: IoFuture,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let calls = self.calls.clone();
        let client = self.client.clone();
        // Made here, in the invocation's span: the send may run on another task. The
        // service's spans become children of the request's.
        let span = self.calls.span(Capability::Http, "request", None);
        let traceparent = span.in_scope(cfm_telemetry::current_traceparent);
        Box::new(
            async move { send(&calls, client, request, options, traceparent).await }
                .instrument(span),
        )
    }
}

async fn send(
    calls: &CallContext,
    client: Option<PluginHttp>,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    traceparent: Option<String>,
) -> Sent {
    let operation = "request";
    let target = match Target::parse(request.method(), request.uri()) {
        Ok(target) => target,
        Err(invalid) => {
            calls.record(Capability::Http, operation, &invalid.0, Decision::Denied);
            return Err(HttpError::HttpRequestUriInvalid);
        }
    };
    tracing::Span::current().record("target", calls.shown(&target.audited));
    let deny = |error: HttpError| {
        calls.record(
            Capability::Http,
            operation,
            &target.audited,
            Decision::Denied,
        );
        Err(error)
    };

    let Some(client) = client else {
        return deny(HttpError::HttpRequestDenied);
    };
    // A verify changes nothing: it may read, and a plugin that must write to find out
    // verifies in a `verify` of its own.
    if calls.drift.is_some() {
        let reads = [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS];
        if !reads.contains(request.method()) {
            return deny(HttpError::HttpRequestDenied);
        }
        // Nor may a read ask the server to take it for a write.
        for header in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ] {
            request.headers_mut().remove(header);
        }
    }
    if let Err(refused) = egress_policy::admit(&calls.grants, &client.policy, &target) {
        return deny(refused);
    }

    request.headers_mut().remove(http::header::HOST);
    // The service's spans join the activity's trace; a plugin cannot set its own.
    cfm_telemetry::inject(request.headers_mut(), traceparent.as_deref());
    if calls
        .grants
        .presents_subject_token_to(&target.origin, target.url.path())
    {
        // The service authenticates the agent host itself; the plugin never holds the token.
        let token = match calls.backends.tokens.subject_token().await {
            Ok(token) => token,
            Err(e) => return Err(HttpError::InternalError(Some(e.to_string()))),
        };
        calls.used(&token);
        let Ok(mut value) = http::HeaderValue::from_str(&format!("Bearer {token}")) else {
            return Err(HttpError::InternalError(Some(
                "the subject token is not a valid header value".into(),
            )));
        };
        value.set_sensitive(true);
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
    }
    let (parts, body) = request.into_parts();
    let body = http_body_util::Limited::new(body, MAX_REQUEST_BODY)
        .collect()
        .await
        .map_err(|_| HttpError::HttpRequestBodySize(None))?
        .to_bytes();
    let mut outgoing = client
        .client
        .request(parts.method, target.url.clone())
        .headers(parts.headers)
        .body(body);
    if let Some(timeout) = options.and_then(|o| o.first_byte_timeout) {
        outgoing = outgoing.timeout(timeout + CONNECT_TIMEOUT);
    }
    let response = match outgoing.send().await {
        Ok(response) => response,
        Err(e) if egress_policy::prohibited(&e) => return deny(HttpError::DestinationIpProhibited),
        Err(e) => {
            // Not the error's text: it names the URL, whose query may carry a token.
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "transport error"
            };
            tracing::Span::current().record("error", kind);
            return Err(transport_error(e));
        }
    };
    calls.record(
        Capability::Http,
        operation,
        &target.audited,
        Decision::Allowed(Effect::Sent),
    );
    let response = http::Response::<reqwest::Body>::from(response).map(|body| {
        body.map_err(|_| HttpError::HttpResponseIncomplete)
            .boxed_unsync()
    });
    Ok((response, Box::new(async { Ok(()) })))
}

/// The `wasi:http` error code for a failed exchange; no URL in it (it may hold tokens).
fn transport_error(error: reqwest::Error) -> HttpError {
    if error.is_timeout() {
        HttpError::ConnectionTimeout
    } else if error.is_connect() {
        HttpError::ConnectionRefused
    } else {
        HttpError::InternalError(Some(error.without_url().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::capability::BackendError;
    use crate::capability::fixture::Fixture;
    use crate::grants::Grants;

    fn granted(origin: &str) -> Fixture {
        Fixture::new(grants_of(origin))
    }

    fn grants_of(origin: &str) -> Grants {
        Grants {
            http: Some(HttpGrant {
                origins: vec![origin.into()],
                private_networks: vec![],
                subject_token_origin: None,
                subject_token_paths: vec![],
            }),
            ..Default::default()
        }
    }

    /// A bodiless GET of `url` through the invocation's `wasi:http` hooks.
    async fn get(fixture: &mut Fixture, url: &str) -> Sent {
        send_as(&mut fixture.capabilities, http::Method::GET, url).await
    }

    /// A bodiless `method` request of `url` through `capabilities`' `wasi:http` hooks.
    async fn send_as(
        capabilities: &mut crate::capability::Capabilities,
        method: http::Method,
        url: &str,
    ) -> Sent {
        let body: WasiBody = http_body_util::Empty::new()
            .map_err(|never: std::convert::Infallible| -> HttpError { match never {} })
            .boxed_unsync();
        let request = http::Request::builder()
            .method(method)
            .uri(url)
            .body(body)
            .unwrap();
        let sent = capabilities
            .http()
            .send_request(request, None, Box::new(async { Ok(()) }));
        Box::into_pin(sent).await
    }

    #[tokio::test]
    async fn a_verify_may_only_read() {
        let port = answer_once().await;
        let origin = format!("http://127.0.0.1:{port}");
        let fixture = granted(&origin);
        let drift = std::sync::Arc::new(crate::capability::dry_run::DriftLog::default());
        let mut verify = fixture.verifying(&grants_of(&origin), drift);
        let url = format!("{origin}/things");
        for method in [
            http::Method::POST,
            http::Method::PUT,
            http::Method::DELETE,
            http::Method::TRACE,
        ] {
            let refused = send_as(&mut verify, method.clone(), &url).await;
            assert!(
                matches!(refused, Err(HttpError::HttpRequestDenied)),
                "{method} went out"
            );
        }
        let record = fixture.last_audit();
        assert_eq!(record["decision"], "denied");
        assert_eq!(record["dryRun"], true);
        let (response, _) = match send_as(&mut verify, http::Method::GET, &url).await {
            Ok(sent) => sent,
            Err(e) => panic!("a read did not go out: {e:?}"),
        };
        assert_eq!(response.status(), 200);
    }

    /// A server on a loopback port that answers one request with `ok`.
    async fn answer_once() -> u16 {
        answer_once_with(|_| "ok".into()).await
    }

    /// A server on a loopback port that answers one request with `body(request head)`.
    async fn answer_once_with(body: fn(&str) -> String) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = stream.read(&mut chunk).await.unwrap();
                if read == 0 {
                    break;
                }
                head.extend_from_slice(&chunk[..read]);
            }
            let body = body(&String::from_utf8_lossy(&head));
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.unwrap();
        });
        port
    }

    #[tokio::test]
    async fn a_granted_origin_is_reached() {
        let port = answer_once().await;
        let mut fixture = granted(&format!("http://127.0.0.1:{port}"));
        let url = format!("http://127.0.0.1:{port}/x?token=s3cret");
        let (response, _) = match get(&mut fixture, &url).await {
            Ok(sent) => sent,
            Err(e) => panic!("the request did not go out: {e:?}"),
        };
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        let record = fixture.last_audit();
        assert_eq!(record["capability"], "http");
        assert_eq!(record["operation"], "request");
        // No query in the audit: it may carry credentials.
        assert_eq!(record["target"], format!("GET http://127.0.0.1:{port}/x"));
        assert_eq!(record["effect"], "sent");
    }

    /// The `authorization` header lines of a request head, one per line.
    fn authorization(head: &str) -> String {
        head.lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("authorization:"))
            .map(|l| format!("{}\n", l.trim()))
            .collect()
    }

    struct Subject;

    #[async_trait::async_trait]
    impl crate::capability::tokens::TokenBackend for Subject {
        async fn exchange(&self, _: &str, _: &str, _: &str) -> Result<String, BackendError> {
            unreachable!("no exchange in these tests")
        }

        async fn subject_token(&self) -> Result<String, BackendError> {
            Ok("sa-token".into())
        }
    }

    #[tokio::test]
    async fn the_subject_token_replaces_the_plugins_authorization_for_its_origin_only() {
        for designated in [true, false] {
            let port = answer_once_with(authorization).await;
            let origin = format!("http://127.0.0.1:{port}");
            let grants = Grants {
                http: Some(HttpGrant {
                    origins: vec![origin.clone()],
                    private_networks: vec![],
                    subject_token_origin: designated.then(|| origin.clone()),
                    subject_token_paths: vec!["/api/v1/mappings/*/{participantContextId}".into()],
                }),
                ..Default::default()
            };
            let mut fixture =
                Fixture::with_backends(grants, |b| b.with_tokens(std::sync::Arc::new(Subject)));
            let body: WasiBody = http_body_util::Empty::new()
                .map_err(|never: std::convert::Infallible| -> HttpError { match never {} })
                .boxed_unsync();
            let request = http::Request::get(format!("{origin}/api/v1/mappings/client/p1"))
                .header("authorization", "Bearer forged")
                .body(body)
                .unwrap();
            let sent =
                fixture
                    .capabilities
                    .http()
                    .send_request(request, None, Box::new(async { Ok(()) }));
            let (response, _) = Box::into_pin(sent).await.unwrap();
            let seen = response.into_body().collect().await.unwrap().to_bytes();
            let expected = if designated {
                "authorization: Bearer sa-token\n"
            } else {
                "authorization: Bearer forged\n"
            };
            assert_eq!(String::from_utf8_lossy(&seen), expected);
            assert!(!fixture.last_audit().to_string().contains("sa-token"));
        }
    }

    #[tokio::test]
    async fn an_ungranted_origin_is_denied_and_audited() {
        let mut fixture = granted("https://issuer.example");
        let Err(refused) = get(&mut fixture, "https://other.example/x").await else {
            panic!("an ungranted request went out");
        };
        assert!(
            matches!(refused, HttpError::HttpRequestDenied),
            "{refused:?}"
        );
        let record = fixture.last_audit();
        assert_eq!(record["capability"], "http");
        assert_eq!(record["target"], "GET https://other.example/x");
        assert_eq!(record["decision"], "denied");
    }

    #[tokio::test]
    async fn a_special_address_is_prohibited_unless_named() {
        let mut fixture = granted("http://*:*");
        let Err(refused) = get(&mut fixture, "http://169.254.169.254/latest").await else {
            panic!("a request to the metadata address went out");
        };
        assert!(
            matches!(refused, HttpError::DestinationIpProhibited),
            "{refused:?}"
        );
        assert_eq!(fixture.last_audit()["decision"], "denied");
    }

    #[tokio::test]
    async fn without_a_grant_every_request_is_denied() {
        let mut fixture = Fixture::new(Grants::default());
        let Err(refused) = get(&mut fixture, "https://issuer.example/").await else {
            panic!("a request without a grant went out");
        };
        assert!(
            matches!(refused, HttpError::HttpRequestDenied),
            "{refused:?}"
        );
        assert_eq!(fixture.last_audit()["decision"], "denied");
    }
}
