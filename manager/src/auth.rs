//! Bearer-token authentication and scope checks.
//!
//! Tokens are JWTs with upstream CFM's scopes in the space-separated `scope` claim.
//! Two kinds are accepted:
//! - **local** tokens, EdDSA-signed by the Ed25519 key the manager keeps in its data
//!   directory (key id `cfm-local`). The embedded default writes an admin token (all four
//!   scopes) next to it, readable only by its owner, and `cfm token` issues more;
//! - **external** tokens from an identity provider, checked against its JWKS (a URL,
//!   refetched when a token names a key id it does not know yet, or a file), issuer and
//!   audience. RS256 and EdDSA only: a token naming another algorithm is refused before
//!   any key is looked at, so an RSA public key can never be used as an HMAC secret.
//!
//! Beyond upstream, a `cfm_tenant` claim confines a token to one tenant's resources.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::error::{ManagerError, Result};

/// Reads of tenants, participant profiles, cells and dataspace profiles, and their `/query` routes.
pub const TENANT_READ: &str = "tenant-manager-api:read";
/// Every other request to the tenant routes.
pub const TENANT_WRITE: &str = "tenant-manager-api:write";
/// Reads of activity and orchestration definitions and orchestrations, and their `/query` routes.
pub const PROVISION_READ: &str = "provision-manager-api:read";
/// Every other request to the definition and orchestration routes.
pub const PROVISION_WRITE: &str = "provision-manager-api:write";
/// Every scope there is: what the admin token carries.
pub const ALL_SCOPES: [&str; 4] = [TENANT_READ, TENANT_WRITE, PROVISION_READ, PROVISION_WRITE];

const ISSUER: &str = "cfm";
const AUDIENCE: &str = "cfm-api";
const LOCAL_KID: &str = "cfm-local";
const KEY_FILE: &str = "signing.key";
/// The data directory's file holding the admin token, readable only by its owner.
pub const TOKEN_FILE: &str = "admin.token";
/// A JWKS URL is fetched again for an unknown key id at most this often by default, so
/// a stream of forged key ids cannot turn the manager into a load generator against the IdP.
const JWKS_REFETCH: Duration = Duration::from_secs(30);

/// Where external tokens are checked; all optional, none configured means local tokens only.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// JWKS: an `http(s)://` URL or a file path.
    pub jwks: Option<String>,
    /// An OpenID Connect discovery document (`…/.well-known/openid-configuration`): its
    /// `jwks_uri` is the JWKS and its `issuer` the required `iss`, unless `issuer` is set.
    pub oidc_discovery: Option<String>,
    /// Required `iss` of external tokens.
    pub issuer: Option<String>,
    /// Required `aud` of external tokens.
    pub audience: Option<String>,
    /// The claim that must hold `audience`: `aud` when None. Some identity providers
    /// (Keycloak's client-credential tokens, as upstream's deployments use) name the
    /// client in `azp` instead.
    pub audience_claim: Option<String>,
    /// How soon a JWKS URL may be fetched again for a key id it did not have;
    /// None means 30 seconds.
    pub min_refresh: Option<Duration>,
}

/// The claims cfm reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token stands for; a cancelled orchestration names it ("cancelled by ...").
    #[serde(default)]
    pub sub: String,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    /// Confines the token to this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cfm_tenant: Option<String>,
    /// When the token expires, in seconds since the epoch: how long its check may be
    /// remembered. Checked by the JWT library; a number, as some providers send a fraction.
    #[serde(default, skip_serializing)]
    exp: Option<f64>,
}

impl Claims {
    /// Whether `scope` is one of the token's scopes.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split_whitespace().any(|s| s == scope)
    }
}

/// Claims of a local token as issued.
#[derive(Serialize)]
struct Issued<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: i64,
    exp: i64,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cfm_tenant: Option<&'a str>,
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// A token that does not verify: malformed, expired, of another issuer or audience,
    /// or signed with an unknown key or algorithm.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Issues local tokens and verifies local and external ones; clones share the keys.
#[derive(Clone)]
pub struct Auth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    external: Option<Arc<External>>,
    verified: Arc<VerifiedTokens>,
}

impl Auth {
    /// Loads the data directory's signing key, creating it on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        let key_path = data_dir.join(KEY_FILE);
        let seed = match std::fs::read_to_string(&key_path) {
            Ok(text) => hex::decode(text.trim()).map_err(|_| {
                ManagerError::Io(format!("{} is not a hex Ed25519 seed", key_path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let seed: [u8; 32] = rand::random();
                write_private(&key_path, hex::encode(seed).as_bytes())?;
                seed.to_vec()
            }
            Err(e) => {
                return Err(ManagerError::Io(format!(
                    "reading {}: {e}",
                    key_path.display()
                )));
            }
        };
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| ManagerError::Io(format!("{} must hold 32 bytes", key_path.display())))?;
        let signing = SigningKey::from_bytes(&seed);
        let der = signing
            .to_pkcs8_der()
            .map_err(|e| ManagerError::Io(format!("encoding the signing key: {e}")))?;
        let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
        let decoding = DecodingKey::from_ed_components(&x)
            .map_err(|e| ManagerError::Io(format!("decoding key: {e}")))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        Ok(Self {
            decoding,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            validation,
            external: None,
            verified: Arc::default(),
        })
    }

    /// Also accepts tokens of an identity provider. A JWKS file must load now; a URL is
    /// fetched now and, when that fails, again on the first token that needs it.
    pub async fn with_external(mut self, mut settings: AuthSettings) -> Result<Self> {
        if let Some(url) = settings.oidc_discovery.take() {
            let discovered = discover(&url).await?;
            tracing::info!(issuer = %discovered.issuer, jwks = %discovered.jwks_uri, "identity provider discovered");
            settings.jwks = Some(discovered.jwks_uri);
            settings.issuer = settings.issuer.or(Some(discovered.issuer));
        }
        let Some(jwks) = settings.jwks else {
            if settings.issuer.is_some() || settings.audience.is_some() {
                return Err(ManagerError::bad_request(
                    "a JWT issuer or audience needs a JWKS to check tokens against (--jwks)",
                ));
            }
            return Ok(self);
        };
        let source = if jwks.starts_with("http://") || jwks.starts_with("https://") {
            JwksSource::Url(jwks)
        } else {
            JwksSource::File(PathBuf::from(jwks))
        };
        let external = External {
            source,
            issuer: settings.issuer,
            audience: settings.audience,
            audience_claim: settings.audience_claim.unwrap_or_else(|| "aud".into()),
            min_refresh: settings.min_refresh.unwrap_or(JWKS_REFETCH),
            keys: RwLock::new(KeySet::default()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| ManagerError::Io(format!("HTTP client: {e}")))?,
        };
        match (external.refresh().await, &external.source) {
            (Ok(count), _) => tracing::info!(keys = count, "JWKS loaded"),
            (Err(e), JwksSource::Url(_)) => {
                tracing::warn!("JWKS not loaded yet, will retry on demand: {e}")
            }
            (Err(e), JwksSource::File(_)) => return Err(e),
        }
        self.external = Some(Arc::new(external));
        Ok(self)
    }

    /// Makes sure `DIR/admin.token` holds a valid admin token; returns its path.
    pub fn ensure_admin_token(&self, data_dir: &Path) -> Result<PathBuf> {
        let path = data_dir.join(TOKEN_FILE);
        if let Ok(existing) = std::fs::read_to_string(&path)
            && self.verify_local(existing.trim()).is_ok()
        {
            return Ok(path);
        }
        let token = self.issue("cfm-admin", &ALL_SCOPES, 365 * 24 * 3600)?;
        write_private(&path, token.as_bytes())?;
        Ok(path)
    }

    /// Signs a local token for `subject` with `scopes`, valid for `ttl_secs`.
    pub fn issue(&self, subject: &str, scopes: &[&str], ttl_secs: i64) -> Result<String> {
        self.issue_for(subject, scopes, None, ttl_secs)
    }

    /// Signs a local token, confined to `tenant` when one is given.
    pub fn issue_for(
        &self,
        subject: &str,
        scopes: &[&str],
        tenant: Option<&str>,
        ttl_secs: i64,
    ) -> Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Issued {
            iss: ISSUER,
            aud: AUDIENCE,
            sub: subject,
            iat: now,
            exp: now + ttl_secs,
            scope: scopes.join(" "),
            cfm_tenant: tenant,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(LOCAL_KID.into());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| ManagerError::Io(format!("signing a token: {e}")))
    }

    /// Checks a token, local or external, and returns its claims. A token that verified
    /// a moment ago is taken from [`VerifiedTokens`] instead of checked again.
    pub async fn verify(&self, token: &str) -> std::result::Result<Claims, AuthError> {
        if let Some(claims) = self.verified.get(token, Instant::now()) {
            return Ok(claims);
        }
        let claims = self.check(token).await?;
        self.verified
            .remember(token, &claims, Instant::now(), SystemTime::now());
        Ok(claims)
    }

    async fn check(&self, token: &str) -> std::result::Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let local_kid = header.kid.as_deref().is_none_or(|kid| kid == LOCAL_KID);
        match &self.external {
            None => self.verify_local(token),
            Some(_) if local_kid && header.alg == Algorithm::EdDSA => {
                match self.verify_local(token) {
                    Ok(claims) => Ok(claims),
                    Err(local) if header.kid.is_some() => Err(local),
                    // No key id: it may still be the identity provider's.
                    Err(_) => self.verify_external(token, &header).await,
                }
            }
            Some(_) => self.verify_external(token, &header).await,
        }
    }

    fn verify_local(&self, token: &str) -> std::result::Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(invalid)
    }

    async fn verify_external(
        &self,
        token: &str,
        header: &Header,
    ) -> std::result::Result<Claims, AuthError> {
        let Some(external) = &self.external else {
            return Err(AuthError::Invalid("unknown signing key".into()));
        };
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::EdDSA) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted (RS256 or EdDSA)",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        match &external.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        // `aud` is checked by the JWT library; another claim after the signature verified.
        let other_claim = external
            .audience
            .as_deref()
            .filter(|_| external.audience_claim != "aud");
        match &external.audience {
            Some(audience) if other_claim.is_none() => validation.set_audience(&[audience]),
            _ => validation.validate_aud = false,
        }
        let mut keys = external.candidates(header).await;
        if keys.is_empty() && external.refresh_if_stale().await {
            keys = external.candidates(header).await;
        }
        if keys.is_empty() {
            return Err(AuthError::Invalid(match &header.kid {
                Some(kid) => format!("no key '{kid}' in the JWKS"),
                None => "no JWKS key fits the token".into(),
            }));
        }
        let mut last = None;
        for key in &keys {
            match jsonwebtoken::decode::<serde_json::Value>(token, key, &validation) {
                Ok(data) => {
                    if let Some(audience) = other_claim {
                        let claim = &external.audience_claim;
                        if !names(&data.claims[claim.as_str()], audience) {
                            return Err(AuthError::Invalid(format!(
                                "the token's '{claim}' claim does not name this API"
                            )));
                        }
                    }
                    return serde_json::from_value(data.claims)
                        .map_err(|e| AuthError::Invalid(format!("claims: {e}")));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(|| AuthError::Invalid("no key fits".into()), invalid))
    }
}

/// Whether a claim names `audience`: it is that string, or an array holding it (as `aud`
/// may be).
fn names(claim: &serde_json::Value, audience: &str) -> bool {
    match claim {
        serde_json::Value::String(one) => one == audience,
        serde_json::Value::Array(many) => many.iter().any(|v| v.as_str() == Some(audience)),
        _ => false,
    }
}

/// Tokens that verified recently, with their claims. A client sends the same token with
/// every request, and checking its signature each time (an Ed25519 or RSA verification,
/// base64 and JSON) was a tenth of the manager's CPU serving reads. The whole token is the
/// key, so a token that differs in any byte is checked in full. An entry lasts until the
/// token expires or [`VERIFIED_FOR`] has passed, whichever comes first: a key withdrawn
/// from an identity provider's JWKS stops being accepted within that time, as it would
/// once the JWKS was fetched again.
#[derive(Default)]
struct VerifiedTokens {
    entries: std::sync::Mutex<HashMap<Box<str>, (Claims, Instant)>>,
}

/// How long a verified token is remembered at most.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// How many tokens are remembered; when full, the memory starts over.
const VERIFIED_MAX: usize = 4_096;
/// Longer tokens are checked every time, so the memory stays within a few MiB.
const VERIFIED_MAX_LEN: usize = 2_048;

impl VerifiedTokens {
    /// The claims of `token` if it verified and its entry has not lapsed at `now`.
    fn get(&self, token: &str, now: Instant) -> Option<Claims> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (claims, until) = entries.get(token)?;
        (now < *until).then(|| claims.clone())
    }

    /// Remembers a token that just verified, for as long as it is valid and at most
    /// [`VERIFIED_FOR`]; `now` and `wall` are the same moment on both clocks.
    fn remember(&self, token: &str, claims: &Claims, now: Instant, wall: SystemTime) {
        let since_epoch = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let Some(left) = claims.exp.map(|exp| exp - since_epoch) else {
            return;
        };
        if token.len() > VERIFIED_MAX_LEN || !left.is_finite() || left <= 0.0 {
            return;
        }
        let until = now + Duration::from_secs_f64(left).min(VERIFIED_FOR);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= VERIFIED_MAX {
            // Lapsed entries first; a flood of live tokens only costs their checks.
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= VERIFIED_MAX {
                entries.clear();
            }
        }
        entries.insert(token.into(), (claims.clone(), until));
    }
}

fn invalid(error: jsonwebtoken::errors::Error) -> AuthError {
    AuthError::Invalid(error.to_string())
}

enum JwksSource {
    Url(String),
    File(PathBuf),
}

/// An identity provider's keys.
struct External {
    source: JwksSource,
    issuer: Option<String>,
    audience: Option<String>,
    /// The claim that holds the audience (`aud` unless configured otherwise).
    audience_claim: String,
    min_refresh: Duration,
    keys: RwLock<KeySet>,
    http: reqwest::Client,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<Key>,
    fetched: Option<Instant>,
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    decoding: DecodingKey,
}

impl External {
    /// Keys that may have signed a token with this header: its key id's, or without
    /// one every key of its algorithm.
    async fn candidates(&self, header: &Header) -> Vec<DecodingKey> {
        let set = self.keys.read().await;
        set.keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .map(|k| k.decoding.clone())
            .collect()
    }

    /// Refetches a JWKS URL unless that was done a moment ago; true when it was.
    async fn refresh_if_stale(&self) -> bool {
        if !matches!(self.source, JwksSource::Url(_)) {
            return false;
        }
        let recent = self
            .keys
            .read()
            .await
            .fetched
            .is_some_and(|at| at.elapsed() < self.min_refresh);
        if recent {
            return false;
        }
        match self.refresh().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("refreshing the JWKS: {e}");
                false
            }
        }
    }

    async fn refresh(&self) -> Result<usize> {
        let loaded = self.load().await;
        let mut set = self.keys.write().await;
        // A failed fetch counts too: the next try waits its turn.
        set.fetched = Some(Instant::now());
        let keys = loaded?;
        set.keys = keys;
        Ok(set.keys.len())
    }

    async fn load(&self) -> Result<Vec<Key>> {
        let text = match &self.source {
            JwksSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| ManagerError::Io(format!("reading JWKS {}: {e}", path.display())))?,
            JwksSource::Url(url) => {
                let response = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| ManagerError::Io(format!("fetching JWKS {url}: {e}")))?;
                response
                    .text()
                    .await
                    .map_err(|e| ManagerError::Io(format!("reading JWKS {url}: {e}")))?
            }
        };
        let set: JwkSet = serde_json::from_str(&text)
            .map_err(|e| ManagerError::Io(format!("JWKS is not a JSON Web Key Set: {e}")))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                // Other key types (EC, symmetric) sign with algorithms cfm refuses.
                _ => continue,
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(decoding) => keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    decoding,
                }),
                Err(e) => tracing::warn!(kid = ?jwk.common.key_id, "skipping a JWKS key: {e}"),
            }
        }
        Ok(keys)
    }
}

/// Writes a file only its owner can read, replacing it atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| ManagerError::Io(format!("writing {}: {e}", path.display()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// What cfm reads of an OpenID Connect discovery document.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// Fetches the discovery document at `url`: the identity provider must answer now, since
/// without its JWKS no token of it could be checked.
async fn discover(url: &str) -> Result<Discovery> {
    let failed = |why: String| ManagerError::Io(format!("OIDC discovery at {url}: {why}"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("answered {}", response.status())));
    }
    let discovery: Discovery = response
        .json()
        .await
        .map_err(|e| failed(format!("not a discovery document: {}", e.without_url())))?;
    if !(discovery.jwks_uri.starts_with("https://") || discovery.jwks_uri.starts_with("http://")) {
        return Err(failed("jwks_uri is not an http(s) URL".into()));
    }
    Ok(discovery)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn admin_token_is_private_stable_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::load_or_create(dir.path()).unwrap();
        let path = auth.ensure_admin_token(dir.path()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let token = std::fs::read_to_string(&path).unwrap();
        let claims = auth.verify_local(&token).unwrap();
        assert!(ALL_SCOPES.iter().all(|s| claims.has_scope(s)));
        // A restart reuses key and token.
        let again = Auth::load_or_create(dir.path()).unwrap();
        again.ensure_admin_token(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
        assert!(again.verify_local(&token).is_ok());
        // Another key's token does not verify.
        let other = tempfile::tempdir().unwrap();
        let stranger = Auth::load_or_create(other.path()).unwrap();
        assert!(stranger.verify_local(&token).is_err());
        assert!(auth.verify_local("not-a-jwt").is_err());
    }

    #[tokio::test]
    async fn a_remembered_token_serves_until_it_lapses_and_any_other_bytes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::load_or_create(dir.path()).unwrap();
        let token = auth
            .issue_for("alice", &[TENANT_READ], Some("t1"), 3600)
            .unwrap();
        let claims = auth.verify(&token).await.unwrap();
        assert_eq!(claims.cfm_tenant.as_deref(), Some("t1"));
        let now = Instant::now();
        let remembered = auth.verified.get(&token, now).expect("remembered");
        assert_eq!(remembered.sub, "alice");
        assert!(remembered.has_scope(TENANT_READ));
        // At most a minute, though the token is valid for an hour.
        assert!(auth.verified.get(&token, now + VERIFIED_FOR).is_none());

        // A token one byte away from a remembered one is checked, and fails.
        let mut forged = token.clone().into_bytes();
        // Inside the signature, where every bit counts.
        let inside = forged.len() - 10;
        forged[inside] = if forged[inside] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(auth.verify(&forged).await.is_err());
        assert!(auth.verified.get(&forged, Instant::now()).is_none());
        // And so is one of another key, however it is named.
        let stranger = Auth::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let theirs = stranger.issue("mallory", &ALL_SCOPES, 3600).unwrap();
        assert!(auth.verify(&theirs).await.is_err());
    }

    #[test]
    fn remembered_tokens_lapse_with_their_expiry_and_stay_bounded() {
        let verified = VerifiedTokens::default();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let epoch = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let claims = |exp: Option<f64>| Claims {
            sub: "s".into(),
            scope: TENANT_READ.into(),
            cfm_tenant: None,
            exp,
        };
        verified.remember("soon", &claims(Some(epoch + 5.0)), now, wall);
        assert!(verified.get("soon", now + Duration::from_secs(4)).is_some());
        assert!(verified.get("soon", now + Duration::from_secs(6)).is_none());
        // Expired (the library's leeway let it through) or without an expiry: not kept.
        verified.remember("expired", &claims(Some(epoch - 1.0)), now, wall);
        verified.remember("no-exp", &claims(None), now, wall);
        verified.remember(
            &"x".repeat(VERIFIED_MAX_LEN + 1),
            &claims(Some(epoch + 60.0)),
            now,
            wall,
        );
        assert!(verified.get("expired", now).is_none());
        assert!(verified.get("no-exp", now).is_none());
        assert_eq!(verified.entries.lock().unwrap().len(), 1);

        for i in 0..VERIFIED_MAX + 10 {
            verified.remember(&format!("t{i}"), &claims(Some(epoch + 60.0)), now, wall);
        }
        let kept = verified.entries.lock().unwrap().len();
        assert!((1..=VERIFIED_MAX).contains(&kept), "{kept} remembered");
        assert!(
            verified
                .get(&format!("t{}", VERIFIED_MAX + 9), now)
                .is_some()
        );
    }
}
