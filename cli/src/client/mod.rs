//! `cfm` as a client of a running cfm's REST API: resource commands with tables for
//! people and JSON for scripts, onboarding with live progress, orchestrations drawn as
//! graphs, and kubectl-like contexts naming which cfm to talk to.

pub(crate) mod commands;
pub(crate) mod context;
mod dag;
pub(crate) mod operations;
mod output;
mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub(crate) use context::ContextCommand;

/// The API's base path under the server's address.
const API_PREFIX: &str = "/api/v1alpha1";
/// Where `cfm serve` listens and keeps its admin token by default: with neither flags,
/// environment nor a context, the client talks to the cfm that `scripts/run.sh` started
/// in the current directory.
const DEFAULT_API: &str = "http://127.0.0.1:8080";
/// A request's budget. Every call is a single read or write; waiting is done by polling.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a request answered 503 with `Retry-After` (a write that lost a conflict, a
/// full pool) is sent again, after the wait it names (1 to 5 s).
const RETRIES_ON_503: usize = 3;

/// What went wrong talking to cfm, worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The server refused the request: its error body's message, and `reason` when it
    /// gave one.
    #[error("{status}: {message}{}", reason.as_ref().map(|r| format!(" (reason: {r})")).unwrap_or_default())]
    Api {
        status: StatusCode,
        message: String,
        reason: Option<String>,
        details: Option<Value>,
    },
    #[error("cannot reach cfm at {api}: {source}")]
    Unreachable {
        api: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cfm at {api} answered something that is not the expected JSON: {detail}")]
    Malformed { api: String, detail: String },
    #[error(
        "no API token: pass --token-file, set CFM_TOKEN or CFM_TOKEN_FILE, or name one in a context (`cfm context set`); cfm-data/admin.token is used only for http://127.0.0.1:8080"
    )]
    NoToken,
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// What the command followed failed: the failing step and its error.
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    /// The status of a refusal by the server.
    pub(crate) fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub(crate) type Result<T, E = ClientError> = std::result::Result<T, E>;

/// One cfm's REST API with the token to send it.
pub(crate) struct Client {
    http: reqwest::Client,
    /// The server's address without a trailing slash, e.g. `http://127.0.0.1:8080`.
    api: String,
    token: String,
}

/// A JSON answer with the paging total the list and query routes send.
pub(crate) struct Page {
    pub(crate) items: Vec<Value>,
    /// `X-Total-Count`: absent when more than 1,000 match.
    pub(crate) total: Option<u64>,
}

impl Client {
    /// A client of `api` sending the token read from `token`.
    pub(crate) fn new(api: &str, token: String) -> Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("cfm-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ClientError::Unreachable {
                api: api.to_string(),
                source,
            })?;
        Ok(Client {
            http,
            api: api.trim_end_matches('/').to_string(),
            token,
        })
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None)
            .await
            .map(|(body, _)| body)
    }

    pub(crate) async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        self.call(Method::POST, path, Some(body))
            .await
            .map(|(body, _)| body)
    }

    pub(crate) async fn patch<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        self.call(Method::PATCH, path, Some(body))
            .await
            .map(|(body, _)| body)
    }

    pub(crate) async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::DELETE, path, None)
            .await
            .map(|(body, _)| body)
    }

    /// A list route (GET) or a `/query` route (POST with the body): its items and total.
    pub(crate) async fn page(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Page> {
        let (items, total) = self.call::<Vec<Value>>(method, path, body).await?;
        Ok(Page { items, total })
    }

    /// An answer that does not have the shape the command expects.
    pub(crate) fn malformed(&self, error: impl std::fmt::Display) -> ClientError {
        ClientError::Malformed {
            api: self.api.clone(),
            detail: error.to_string(),
        }
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            api: self.api.clone(),
            source,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(T, Option<u64>)> {
        let url = format!("{}{API_PREFIX}{path}", self.api);
        let mut tries = 0;
        let response = loop {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|e| self.unreachable(e))?;
            // cfm answers 503 with Retry-After when it rolled the whole write back, so
            // sending it again is safe; a proxy's 503 without one promises nothing.
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let (StatusCode::SERVICE_UNAVAILABLE, Some(seconds)) =
                (response.status(), retry_after)
                && tries < RETRIES_ON_503
            {
                tries += 1;
                tokio::time::sleep(Duration::from_secs(seconds.clamp(1, 5))).await;
                continue;
            }
            break response;
        };
        let status = response.status();
        let total = response
            .headers()
            .get("x-total-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = response.text().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(refusal(status, &text));
        }
        // Some writes (a tenant's delete) answer with no body.
        let text = if text.trim().is_empty() {
            "null"
        } else {
            text.as_str()
        };
        let body = serde_json::from_str(text).map_err(|e| self.malformed(e))?;
        Ok((body, total))
    }
}

/// The server's error body (`{"error","message","code","reason","details"}`) as an error;
/// a body of another shape is shown as the status alone, never echoed whole.
fn refusal(status: StatusCode, text: &str) -> ClientError {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_string);
    ClientError::Api {
        status,
        message: field("message").unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("unexpected answer")
                .to_string()
        }),
        reason: field("reason"),
        details: body.get("details").cloned(),
    }
}

/// Reads a token file: its first line, without surrounding whitespace.
fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        return Err(ClientError::TokenFile {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
        });
    }
    Ok(token)
}
