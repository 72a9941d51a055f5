//! Bearer-token authentication and scope checks.
//!
//! Tokens are EdDSA JWTs with upstream CFM's scopes in the space-separated `scope` claim.
//! The embedded default generates its own Ed25519 signing key in the data directory and
//! writes an admin token (all four scopes) next to it, readable only by its owner.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{ManagerError, Result};

pub const TENANT_READ: &str = "tenant-manager-api:read";
pub const TENANT_WRITE: &str = "tenant-manager-api:write";
pub const PROVISION_READ: &str = "provision-manager-api:read";
pub const PROVISION_WRITE: &str = "provision-manager-api:write";
pub const ALL_SCOPES: [&str; 4] = [TENANT_READ, TENANT_WRITE, PROVISION_READ, PROVISION_WRITE];

const ISSUER: &str = "cfm";
const AUDIENCE: &str = "cfm-api";
const KEY_FILE: &str = "signing.key";
pub const TOKEN_FILE: &str = "admin.token";

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    #[serde(default)]
    pub scope: String,
}

impl Claims {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split_whitespace().any(|s| s == scope)
    }
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Clone)]
pub struct Auth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
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
        })
    }

    /// Makes sure `DIR/admin.token` holds a valid admin token; returns its path.
    pub fn ensure_admin_token(&self, data_dir: &Path) -> Result<PathBuf> {
        let path = data_dir.join(TOKEN_FILE);
        if let Ok(existing) = std::fs::read_to_string(&path)
            && self.verify(existing.trim()).is_ok()
        {
            return Ok(path);
        }
        let token = self.issue("cfm-admin", &ALL_SCOPES, 365 * 24 * 3600)?;
        write_private(&path, token.as_bytes())?;
        Ok(path)
    }

    /// Signs a token for `subject` with `scopes`, valid for `ttl_secs`.
    pub fn issue(&self, subject: &str, scopes: &[&str], ttl_secs: i64) -> Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: subject.into(),
            iat: now,
            exp: now + ttl_secs,
            scope: scopes.join(" "),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding)
            .map_err(|e| ManagerError::Io(format!("signing a token: {e}")))
    }

    pub fn verify(&self, token: &str) -> std::result::Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))
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
        let claims = auth.verify(&token).unwrap();
        assert!(ALL_SCOPES.iter().all(|s| claims.has_scope(s)));
        // A restart reuses key and token.
        let again = Auth::load_or_create(dir.path()).unwrap();
        again.ensure_admin_token(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
        assert!(again.verify(&token).is_ok());
        // Another key's token does not verify.
        let other = tempfile::tempdir().unwrap();
        let stranger = Auth::load_or_create(other.path()).unwrap();
        assert!(stranger.verify(&token).is_err());
        assert!(auth.verify("not-a-jwt").is_err());
    }
}
