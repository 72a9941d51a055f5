//! The token service client: RFC 8693 token exchange at `<url>/token`, with the subject
//! token read from a file and exchanged tokens cached until shortly before they expire.
//!
//! The subject token is a projected Kubernetes service-account token in production, which
//! the kubelet rotates by replacing the file: it is read again whenever the file changes.
//! Upstream's agents exchange once per HTTP call; a cache per (participant context,
//! audience, scope) saves the token service that load across thousands of participants.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use std::os::unix::fs::MetadataExt;

use async_trait::async_trait;
use serde::Deserialize;

use super::TokenBackend;
use crate::capability::BackendError;

/// What the token request names as its grant type.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// What the subject token is: a JWT.
pub const SUBJECT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Longest a token service may take to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Cached tokens above which expired ones are dropped, and past which the cache restarts.
const CACHE_LIMIT: usize = 50_000;
/// Assumed lifetime of a token whose answer names none (RFC 6749 makes `expires_in` optional).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// Longest a token is kept, whatever the service says it lives.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why a token service client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeSetupError {
    /// The URL is not an absolute http(s) URL without credentials (not repeated: it may
    /// hold some).
    #[error("--token-exchange-url is not an absolute http(s) URL without a user or password")]
    Url,
    /// The subject token file cannot be read now.
    #[error("reading the subject token from {path}: {source}")]
    SubjectToken {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("building the token service client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Exchanges the host's subject token for participant-scoped tokens.
pub struct TokenExchange {
    endpoint: reqwest::Url,
    subject: SubjectTokenFile,
    client: reqwest::Client,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

type CacheKey = (String, String, String);

struct Cached {
    token: String,
    refresh_at: Instant,
}

impl TokenExchange {
    /// A client of the token service at `url` (its base: requests go to `<url>/token`),
    /// presenting the token in `subject_token_file`, which must be readable now.
    pub fn new(url: &str, subject_token_file: &Path) -> Result<Self, ExchangeSetupError> {
        let base = reqwest::Url::parse(url)
            .ok()
            .filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.has_host()
                    && u.username().is_empty()
                    && u.password().is_none()
            })
            .ok_or(ExchangeSetupError::Url)?;
        let endpoint = base
            .join(&format!("{}/token", base.path().trim_end_matches('/')))
            .map_err(|_| ExchangeSetupError::Url)?;
        let subject = SubjectTokenFile::new(subject_token_file);
        subject
            .read()
            .map_err(|source| ExchangeSetupError::SubjectToken {
                path: subject_token_file.to_path_buf(),
                source,
            })?;
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(ExchangeSetupError::Client)?;
        Ok(Self {
            endpoint,
            subject,
            client,
            cache: Mutex::default(),
        })
    }

    /// Where tokens are asked for.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    fn cached(&self, key: &CacheKey) -> Option<String> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|c| c.refresh_at > Instant::now())
            .map(|c| c.token.clone())
    }

    fn keep(&self, key: CacheKey, token: &str, lifetime: Duration) {
        let lifetime = lifetime.min(MAX_LIFETIME);
        // Refreshed a tenth of its life before it ends (between 5 s and a minute), so a
        // token handed out is never about to expire on its way to the service.
        let margin = (lifetime / 10).clamp(Duration::from_secs(5), Duration::from_secs(60));
        let Some(usable) = lifetime.checked_sub(margin) else {
            return;
        };
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, c| c.refresh_at > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                token: token.to_string(),
                refresh_at: now + usable,
            },
        );
    }
}

#[async_trait]
impl TokenBackend for TokenExchange {
    async fn exchange(
        &self,
        resource: &str,
        audience: &str,
        scope: &str,
    ) -> Result<String, BackendError> {
        let key = (
            resource.to_string(),
            audience.to_string(),
            scope.to_string(),
        );
        if let Some(token) = self.cached(&key) {
            return Ok(token);
        }
        let asked = format!("audience '{audience}' and scope '{scope}'");
        let subject = self.subject_token().await?;
        let form = [
            ("grant_type", GRANT_TYPE),
            ("subject_token", subject.as_str()),
            ("subject_token_type", SUBJECT_TOKEN_TYPE),
            ("resource", resource),
            ("audience", audience),
            ("scope", scope),
        ];
        let response = self
            .client
            .post(self.endpoint.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                BackendError::Unavailable(format!(
                    "token service unreachable asking for {asked}: {}",
                    e.without_url()
                ))
            })?;
        let status = response.status();
        if !status.is_success() {
            let error = response
                .json::<ErrorAnswer>()
                .await
                .ok()
                .map(|a| a.error)
                .filter(|e| is_error_code(e))
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            let message = format!("token exchange for {asked} refused: {status}{error}");
            // The host's own subject token not (yet) accepted, as while the kubelet rotates
            // it or the service refreshes its keys, is not the participant's fault: a later
            // try may work, and a fatal failure would tear the participant down.
            let subject_refused = status.as_u16() == 401 || error.contains("invalid_grant");
            return Err(
                if status.is_server_error() || status.as_u16() == 429 || subject_refused {
                    BackendError::Unavailable(message)
                } else {
                    BackendError::Invalid(message)
                },
            );
        }
        let answer: Answer = response.json().await.map_err(|_| {
            BackendError::Unavailable(format!(
                "token service answered {asked} with no access_token"
            ))
        })?;
        let lifetime = answer
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME);
        self.keep(key, &answer.access_token, lifetime);
        Ok(answer.access_token)
    }

    async fn subject_token(&self) -> Result<String, BackendError> {
        self.subject.read().map_err(|e| {
            BackendError::Unavailable(format!("reading the subject token file: {}", e.kind()))
        })
    }
}

#[derive(Deserialize)]
struct Answer {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

/// An OAuth error code (RFC 6749 §5.2: `invalid_grant`, ...), so nothing else the server
/// chose to answer is repeated to the plugin.
fn is_error_code(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// The subject token file, read again when it changes.
struct SubjectTokenFile {
    path: PathBuf,
    last: Mutex<Option<(FileStamp, String)>>,
}

/// What tells a replaced file from the one read before: a projected token is swapped in
/// as a new file (another inode) even when its length and second stay the same.
type FileStamp = (Option<SystemTime>, u64, u64, i64);

impl SubjectTokenFile {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            last: Mutex::default(),
        }
    }

    fn read(&self) -> std::io::Result<String> {
        let metadata = std::fs::metadata(&self.path)?;
        let stamp = (
            metadata.modified().ok(),
            metadata.len(),
            metadata.ino(),
            metadata.ctime_nsec(),
        );
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, token)) = last.as_ref()
            && *seen == stamp
        {
            return Ok(token.clone());
        }
        let token = std::fs::read_to_string(&self.path)?.trim().to_string();
        if token.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the subject token file is empty",
            ));
        }
        *last = Some((stamp, token.clone()));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::{Form, Json, Router};
    use serde_json::{Value, json};

    use super::*;

    #[derive(Default)]
    struct Service {
        calls: AtomicUsize,
        seen: Mutex<Vec<HashMap<String, String>>>,
        answer: Mutex<Option<(StatusCode, Value)>>,
    }

    async fn token(
        State(service): State<Arc<Service>>,
        Form(form): Form<HashMap<String, String>>,
    ) -> (StatusCode, Json<Value>) {
        let n = service.calls.fetch_add(1, Ordering::SeqCst);
        service.seen.lock().unwrap().push(form.clone());
        if let Some(answer) = service.answer.lock().unwrap().clone() {
            return (answer.0, Json(answer.1));
        }
        let token = format!("t{n}-{}-{}", form["resource"], form["subject_token"]);
        (
            StatusCode::OK,
            Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600})),
        )
    }

    async fn serve(service: Arc<Service>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/token", post(token))
            .with_state(service);
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn subject_file(dir: &tempfile::TempDir, token: &str) -> PathBuf {
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path
    }

    #[tokio::test]
    async fn an_exchange_sends_rfc_8693_fields_and_is_cached_per_participant_audience_and_scope() {
        let service = Arc::new(Service::default());
        let url = serve(service.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let exchange = TokenExchange::new(&url, &subject_file(&dir, "sa-1")).unwrap();

        let first = exchange.exchange("pc1", "edcv", "read").await.unwrap();
        assert_eq!(
            exchange.exchange("pc1", "edcv", "read").await.unwrap(),
            first
        );
        let other = exchange.exchange("pc2", "edcv", "read").await.unwrap();
        exchange.exchange("pc1", "edcv", "write").await.unwrap();
        assert_ne!(first, other);
        assert_eq!(
            service.calls.load(Ordering::SeqCst),
            3,
            "one exchange per key"
        );

        let seen = service.seen.lock().unwrap()[0].clone();
        assert_eq!(seen["grant_type"], GRANT_TYPE);
        assert_eq!(seen["subject_token"], "sa-1");
        assert_eq!(seen["subject_token_type"], SUBJECT_TOKEN_TYPE);
        assert_eq!(seen["resource"], "pc1");
        assert_eq!(seen["audience"], "edcv");
        assert_eq!(seen["scope"], "read");
    }

    #[tokio::test]
    async fn a_rotated_subject_token_file_is_read_again() {
        let service = Arc::new(Service::default());
        let url = serve(service.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let path = subject_file(&dir, "sa-1");
        let exchange = TokenExchange::new(&url, &path).unwrap();
        assert_eq!(exchange.subject_token().await.unwrap(), "sa-1");
        // The kubelet swaps the file; a different length is enough to tell it apart even
        // on a file system with coarse modification times.
        std::fs::write(&path, "sa-rotated").unwrap();
        assert_eq!(exchange.subject_token().await.unwrap(), "sa-rotated");
        let token = exchange.exchange("pc1", "edcv", "read").await.unwrap();
        assert!(token.ends_with("-sa-rotated"), "{token}");
    }

    #[tokio::test]
    async fn a_refusal_names_audience_scope_and_error_but_no_token() {
        let service = Arc::new(Service::default());
        *service.answer.lock().unwrap() = Some((
            StatusCode::FORBIDDEN,
            json!({"error": "unauthorized_client", "error_description": "sa-secret leaked?"}),
        ));
        let url = serve(service.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let exchange = TokenExchange::new(&url, &subject_file(&dir, "sa-secret")).unwrap();
        let Err(BackendError::Invalid(message)) = exchange.exchange("pc1", "edcv", "read").await
        else {
            panic!("a refusal was not final");
        };
        assert_eq!(
            message,
            "token exchange for audience 'edcv' and scope 'read' refused: 403 Forbidden (unauthorized_client)"
        );
        assert!(!message.contains("sa-secret"));

        *service.answer.lock().unwrap() = Some((
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "server_error"}),
        ));
        assert!(matches!(
            exchange.exchange("pc1", "edcv", "read").await,
            Err(BackendError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn any_lifetime_the_service_names_is_taken_without_overflow() {
        let service = Arc::new(Service::default());
        *service.answer.lock().unwrap() = Some((
            StatusCode::OK,
            json!({"access_token": "t", "token_type": "Bearer", "expires_in": u64::MAX}),
        ));
        let url = serve(service.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let exchange = TokenExchange::new(&url, &subject_file(&dir, "sa-1")).unwrap();
        assert_eq!(exchange.exchange("pc1", "edcv", "read").await.unwrap(), "t");
        assert_eq!(exchange.exchange("pc1", "edcv", "read").await.unwrap(), "t");
        assert_eq!(service.calls.load(Ordering::SeqCst), 1);
        // A subject token the service does not accept (yet) is worth another try.
        *service.answer.lock().unwrap() =
            Some((StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"})));
        assert!(matches!(
            exchange.exchange("pc2", "edcv", "read").await,
            Err(BackendError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_token_service_that_is_down_is_unavailable_not_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let dir = tempfile::tempdir().unwrap();
        let exchange = TokenExchange::new(&url, &subject_file(&dir, "sa-1")).unwrap();
        let Err(BackendError::Unavailable(message)) =
            exchange.exchange("pc1", "edcv", "read").await
        else {
            panic!("a closed port was not a transient failure");
        };
        assert!(
            message.contains("audience 'edcv' and scope 'read'"),
            "{message}"
        );
        assert!(!message.contains("sa-1"));
    }

    #[test]
    fn setup_refuses_a_bad_url_and_an_unreadable_subject_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = subject_file(&dir, "sa");
        for refused in ["jwtlet:8080", "http://user:secret@jwtlet:8080"] {
            let error = TokenExchange::new(refused, &file).err().unwrap();
            assert!(matches!(error, ExchangeSetupError::Url), "{refused}");
            assert!(!error.to_string().contains("secret"));
        }
        assert!(matches!(
            TokenExchange::new("http://127.0.0.1:1", &dir.path().join("missing")),
            Err(ExchangeSetupError::SubjectToken { .. })
        ));
        let base = TokenExchange::new("http://127.0.0.1:1/jwtlet/", &file).unwrap();
        assert_eq!(base.endpoint(), "http://127.0.0.1:1/jwtlet/token");
    }
}
