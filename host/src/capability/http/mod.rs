//! The `http` capability: `wasi:http/outgoing-handler` under the plugin's grants.
//!
//! The URL is parsed once into its canonical form ([`target`]); a URL with userinfo is
//! refused. Then two checks, because a host name alone says nothing about where a
//! connection goes: the request's origin must match a granted `scheme://host:port`, and
//! every address the connection is made to must be public, in a range the grant names,
//! or (for an IP literal) named by the very origin that matched.
//!
//! The address check sits where the address connected to is decided. For a name, that
//! is the resolver the connection uses, so a name rebound to `127.0.0.1` between two
//! lookups gains nothing. For an IP literal the client resolves nothing: it connects to
//! the address its URL's host parses to. It is handed the canonical [`url::Url`], whose
//! host is a plain dotted quad or compressed IPv6 that parses to exactly the address
//! checked here, never the guest's text, which could parse differently.
//! Redirects are not followed and no proxy is used; each hop is the plugin's own request
//! and passes both checks again.

pub mod target;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::CallContext;
use crate::audit::{Decision, Effect};
use crate::grants::{AddressPolicy, HttpGrant};
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

impl PluginHttp {
    pub fn new(grant: &HttpGrant) -> Result<Self, String> {
        let policy = Arc::new(AddressPolicy::new(grant));
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(FilteringResolver {
                policy: policy.clone(),
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Self { client, policy })
    }
}

/// The `wasi:http` hooks of one invocation.
pub struct OutboundHttp {
    pub(crate) calls: Arc<CallContext>,
    /// None for a plugin without an `http` grant: it is not linked then, and if it
    /// were, every request would be denied.
    pub(crate) client: Option<PluginHttp>,
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
        Box::new(async move { send(&calls, client, request, options).await })
    }
}

async fn send(
    calls: &CallContext,
    client: Option<PluginHttp>,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Sent {
    let operation = "request";
    let target = match Target::parse(request.method(), request.uri()) {
        Ok(target) => target,
        Err(invalid) => {
            calls.record("http", operation, &invalid.0, Decision::Denied);
            return Err(HttpError::HttpRequestUriInvalid);
        }
    };
    let deny = |error: HttpError| {
        calls.record("http", operation, &target.audited, Decision::Denied);
        Err(error)
    };

    let Some(client) = client else {
        return deny(HttpError::HttpRequestDenied);
    };
    // `granted.example:x@127.0.0.1` dresses another host up as a granted one, and
    // credentials in a URL would go to whichever host follows them.
    if target.userinfo || !calls.grants.allows_http(&target.origin) {
        return deny(HttpError::HttpRequestDenied);
    }
    // A literal address never reaches the resolver: the same policy is applied here,
    // widened only by an origin that names this address and matched this request.
    if let Some(ip) = target.origin.ip
        && !client.policy.allows(ip)
        && !calls.grants.names_literally(&target.origin)
    {
        return deny(HttpError::DestinationIpProhibited);
    }

    request.headers_mut().remove(http::header::HOST);
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
        Err(e) if prohibited(&e) => return deny(HttpError::DestinationIpProhibited),
        Err(e) => return Err(transport_error(e)),
    };
    calls.record(
        "http",
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

/// Whether the connection failed because every address of the name was prohibited.
fn prohibited(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<AddressProhibited>() {
            return true;
        }
        source = e.source();
    }
    false
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

/// Resolves with the system resolver, then drops the addresses the policy refuses.
struct FilteringResolver {
    policy: Arc<AddressPolicy>,
}

/// Every address a granted name resolved to lies in a range no grant names.
#[derive(Debug, thiserror::Error)]
#[error("'{name}' resolves only to addresses outside this plugin's grants ({addresses:?})")]
struct AddressProhibited {
    name: String,
    addresses: Vec<IpAddr>,
}

impl reqwest::dns::Resolve for FilteringResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let name = name.as_str().to_string();
            let resolved: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<_> = resolved
                .iter()
                .copied()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.is_empty() && !resolved.is_empty() {
                return Err(Box::new(AddressProhibited {
                    name,
                    addresses: resolved.iter().map(|a| a.ip()).collect(),
                }) as _);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
