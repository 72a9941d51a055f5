//! The `http` capability: `wasi:http/outgoing-handler` under the plugin's grants.
//!
//! Two checks, because a host name alone says nothing about where a connection goes:
//! the request's origin must match a granted `scheme://host:port`, and every address
//! the connection is made to must be public or in a range the grant names. The address
//! check happens inside the resolver the connection uses, so the address checked is the
//! address connected to: a name rebound to `127.0.0.1` between two lookups gains nothing.
//! Redirects are not followed and no proxy is used; each hop is the plugin's own request
//! and passes both checks again.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::CallContext;
use crate::audit::{Decision, Effect};
use crate::grants::{AddressPolicy, HttpGrant, split_host_port};

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
    let uri = request.uri().clone();
    let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
    let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
    let (host, _) = split_host_port(authority.as_str()).ok_or(HttpError::HttpRequestUriInvalid)?;
    let host = host.to_ascii_lowercase();
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    // The query is left out: it may carry tokens, and audit records are kept.
    let target = format!("{} {scheme}://{authority}{}", request.method(), uri.path());
    let operation = "request";
    let deny = |error: HttpError| {
        calls.record("http", operation, &target, Decision::Denied);
        Err(error)
    };

    let Some(client) = client else {
        return deny(HttpError::HttpRequestDenied);
    };
    if !calls.grants.allows_http(&scheme, &host, port) {
        return deny(HttpError::HttpRequestDenied);
    }
    // A literal address never reaches the resolver: check it here.
    if let Ok(ip) = host.parse::<IpAddr>()
        && !client.policy.allows(ip)
        && !calls.grants.names_address(ip)
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
        .request(parts.method, uri.to_string())
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
    calls.record("http", operation, &target, Decision::Allowed(Effect::Sent));
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
