//! Outbound HTTP for plugins with an `http` grant, over the standard
//! `wasi:http/outgoing-handler`.
//!
//! The host checks each request against the plugin's granted origins and the
//! addresses the name resolves to; a refused request fails with
//! [`CapabilityError::Denied`], a network failure with
//! [`CapabilityError::Unavailable`] (so `.context(...)` retries it). A response is
//! never an error by itself: use [`Response::error_for_status`] to turn 5xx and 429
//! into retries and other 4xx into failures.
//!
//! ```no_run
//! use cfm_plugin_sdk::{CapabilityResultExt, Error, http};
//!
//! fn register(holder: &serde_json::Value) -> Result<serde_json::Value, Error> {
//!     let response = http::Request::post("https://issuer.example/api/holders")
//!         .json(holder)?
//!         .send()
//!         .context("register the holder")?
//!         .error_for_status("register the holder")?;
//!     response.json()
//! }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasip2::http::outgoing_handler;
pub use wasip2::http::types::Method;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

use crate::{CapabilityError, Error};

/// One outgoing request; build it, then [`Request::send`] it.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    timeout_ms: Option<u64>,
}

/// A complete response: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// Header names (lowercase) and values, in the order received.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, read to its end.
    pub body: Vec<u8>,
}

impl Request {
    /// A request with any method and an absolute `http://` or `https://` URL.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }

    /// `GET url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::Get, url)
    }

    /// `POST url`.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new(Method::Post, url)
    }

    /// `PUT url`.
    pub fn put(url: impl Into<String>) -> Self {
        Self::new(Method::Put, url)
    }

    /// `DELETE url`.
    pub fn delete(url: impl Into<String>) -> Self {
        Self::new(Method::Delete, url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    /// Sets a bearer token. Never log the request after this.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Sends `body` as JSON (`content-type: application/json`).
    pub fn json<T: Serialize + ?Sized>(mut self, body: &T) -> Result<Self, Error> {
        self.body = serde_json::to_vec(body).map_err(|e| Error::json("request body", e))?;
        Ok(self.header("content-type", "application/json"))
    }

    /// Sends raw bytes as the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Gives up when no response has started within `ms` milliseconds. The plugin's
    /// wall-clock limit applies regardless.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, CapabilityError> {
        let (scheme, authority, path) = split_url(&self.url)?;
        let headers = Fields::from_list(&self.headers)
            .map_err(|e| CapabilityError::Invalid(format!("request headers: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let invalid = |what: &str| CapabilityError::Invalid(format!("{what} of '{}'", self.url));
        request
            .set_method(&self.method)
            .map_err(|()| invalid("the method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("the scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|()| invalid("the host"))?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| invalid("the path"))?;
        let options = self.timeout_ms.map(|ms| {
            let options = RequestOptions::new();
            // Refused only by hosts without timeouts; the plugin's limit still holds.
            let _ = options.set_first_byte_timeout(Some(ms * 1_000_000));
            options
        });

        let outgoing = request.body().map_err(|()| invalid("the body"))?;
        let pending = outgoing_handler::handle(request, options).map_err(capability_error)?;
        write_body(&outgoing, &self.body)?;
        OutgoingBody::finish(outgoing, None).map_err(capability_error)?;

        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(capability_error(code)),
            Some(Err(())) | None => {
                return Err(CapabilityError::Unavailable(
                    "the host lost the response".into(),
                ));
            }
        };
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response
            .consume()
            .map_err(|()| CapabilityError::Unavailable("the response has no body".into()))?;
        let body = read_body(&incoming)?;
        drop(IncomingBody::finish(incoming));
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of header `name` (any case), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::json("response body", e))
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// [`Response::error_for_status`], letting `expected` through too: the 409 of a create,
    /// or the 404 of a delete, that an earlier delivery of the activity already did.
    pub fn error_for_status_unless(self, expected: u16, action: &str) -> Result<Self, Error> {
        if self.status == expected {
            Ok(self)
        } else {
            self.error_for_status(action)
        }
    }

    /// Passes 2xx through; 5xx, 408 and 429 become [`Error::Retry`] (the server may
    /// recover), any other status [`Error::Fatal`]. The message names `action`, the
    /// status and the start of the body.
    pub fn error_for_status(self, action: &str) -> Result<Self, Error> {
        if self.is_success() {
            return Ok(self);
        }
        let mut text = self.text();
        if text.len() > 512 {
            let mut end = 512;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        let message = format!("{action}: HTTP {}: {text}", self.status);
        if self.status >= 500 || self.status == 408 || self.status == 429 {
            Err(Error::Retry(message))
        } else {
            Err(Error::Fatal(message))
        }
    }
}

/// `base` (a service's base URL, possibly with a path) followed by `path`, with exactly
/// one `/` between them.
pub fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Where a `Location` header points, seen from the service at `base`: an absolute URL as
/// is, an absolute path on `base`'s origin, anything else relative to `base`.
pub fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    if location.starts_with('/') {
        let origin_end = base
            .find("://")
            .map(|i| i + 3)
            .and_then(|start| base[start..].find('/').map(|i| start + i))
            .unwrap_or(base.len());
        return format!("{}{location}", &base[..origin_end]);
    }
    join(base, location)
}

/// Splits an absolute URL into scheme, authority and path-with-query.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), CapabilityError> {
    let invalid = || CapabilityError::Invalid(format!("'{url}' is not an absolute http(s) URL"));
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(invalid()),
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() {
        return Err(invalid());
    }
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

fn write_body(body: &OutgoingBody, bytes: &[u8]) -> Result<(), CapabilityError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let stream = body
        .write()
        .map_err(|()| CapabilityError::Unavailable("the request body cannot be written".into()))?;
    // `blocking-write-and-flush` takes at most 4096 bytes per call.
    for chunk in bytes.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|e| stream_error("sending the request body", e))?;
    }
    Ok(())
}

fn read_body(body: &IncomingBody) -> Result<Vec<u8>, CapabilityError> {
    let stream = body
        .stream()
        .map_err(|()| CapabilityError::Unavailable("the response body cannot be read".into()))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(bytes),
            Err(e) => return Err(stream_error("reading the response body", e)),
        }
    }
}

fn stream_error(action: &str, error: StreamError) -> CapabilityError {
    match error {
        StreamError::Closed => CapabilityError::Unavailable(format!("{action}: stream closed")),
        StreamError::LastOperationFailed(e) => {
            CapabilityError::Unavailable(format!("{action}: {}", e.to_debug_string()))
        }
    }
}

/// Denials stay denials; malformed requests are invalid; everything on the way to and
/// from the server may clear up and is unavailable.
fn capability_error(code: ErrorCode) -> CapabilityError {
    match code {
        ErrorCode::HttpRequestDenied => CapabilityError::Denied(
            "the request's origin is outside this plugin's http grant, or its URL carries a user name or password".into(),
        ),
        ErrorCode::DestinationIpProhibited => CapabilityError::Denied(
            "the destination address is outside this plugin's http grant".into(),
        ),
        ErrorCode::HttpRequestUriInvalid
        | ErrorCode::HttpRequestMethodInvalid
        | ErrorCode::HttpRequestBodySize(_)
        | ErrorCode::HttpRequestHeaderSize(_)
        | ErrorCode::HttpProtocolError => CapabilityError::Invalid(format!("{code:?}")),
        other => CapabilityError::Unavailable(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let (scheme, authority, path) = split_url("https://issuer.example:8443/a/b?c=d").unwrap();
        assert!(matches!(scheme, Scheme::Https));
        assert_eq!((authority, path), ("issuer.example:8443", "/a/b?c=d"));
        let (_, authority, path) = split_url("http://[::1]:80?x").unwrap();
        assert_eq!((authority, path), ("[::1]:80", "?x"));
        let (_, _, path) = split_url("http://h").unwrap();
        assert_eq!(path, "/");
        for bad in ["ftp://h/", "h/path", "https:///path"] {
            assert!(split_url(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn urls_join_and_locations_resolve() {
        assert_eq!(join("http://h/api/", "/v1/x"), "http://h/api/v1/x");
        assert_eq!(join("http://h", "v1"), "http://h/v1");
        assert_eq!(resolve("http://h:1/api", "/v1/r/7"), "http://h:1/v1/r/7");
        assert_eq!(resolve("http://h:1", "/v1/r/7"), "http://h:1/v1/r/7");
        assert_eq!(resolve("http://h/api", "r/7"), "http://h/api/r/7");
        assert_eq!(resolve("http://h/api", "https://o/r"), "https://o/r");
    }

    #[test]
    fn statuses_map_onto_retry_and_fatal() {
        let response = |status| Response {
            status,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: b"nope".to_vec(),
        };
        assert!(response(201).error_for_status("x").is_ok());
        assert!(matches!(
            response(503).error_for_status("x"),
            Err(Error::Retry(_))
        ));
        assert!(matches!(
            response(429).error_for_status("x"),
            Err(Error::Retry(_))
        ));
        let Err(Error::Fatal(message)) = response(404).error_for_status("find it") else {
            panic!("404 is not fatal");
        };
        assert!(message.contains("find it: HTTP 404: nope"), "{message}");
        assert!(response(404).error_for_status_unless(404, "x").is_ok());
        assert!(matches!(
            response(409).error_for_status_unless(404, "x"),
            Err(Error::Fatal(_))
        ));
        assert_eq!(response(200).header("Content-Type"), Some("text/plain"));
    }
}
