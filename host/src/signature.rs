//! Plugin signatures: Ed25519 over a plugin's sha256 digest.
//!
//! The digest pin in the configuration says *which* file runs; a signature says *who*
//! vouches for it. A plugin whose configuration lists `trusted-keys` loads only with a
//! signature file (`<plugin>.wasm.sig`) that one of those keys made. The signed message
//! is `cfm-plugin-v1:<hex sha256>`: the prefix keeps a plugin signature from being
//! replayed as anything else the same key signs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Why a signature or key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// A key that is not a base64 Ed25519 public key.
    #[error("not a base64 Ed25519 public key (32 bytes): {0}")]
    BadKey(String),
    /// A signature file that holds no base64 Ed25519 signature.
    #[error("the signature file is not one base64 Ed25519 signature (64 bytes)")]
    BadSignature,
    /// No trusted key made the signature.
    #[error("no trusted key made this signature")]
    Untrusted,
}

/// The signature file's content for a plugin with digest `sha256_hex`.
pub fn sign(key: &SigningKey, sha256_hex: &str) -> String {
    let signature = key.sign(message(sha256_hex).as_bytes());
    format!("{}\n", STANDARD.encode(signature.to_bytes()))
}

/// Checks a signature file's content against the trusted keys (base64, as configured).
pub fn verify(
    trusted: &[String],
    sha256_hex: &str,
    signature_file: &str,
) -> Result<(), SignatureError> {
    let raw = STANDARD
        .decode(signature_file.trim())
        .map_err(|_| SignatureError::BadSignature)?;
    let signature = Signature::from_slice(&raw).map_err(|_| SignatureError::BadSignature)?;
    let message = message(sha256_hex);
    for key in trusted {
        if public_key(key)?
            .verify(message.as_bytes(), &signature)
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(SignatureError::Untrusted)
}

/// Parses a configured public key.
pub fn public_key(base64_key: &str) -> Result<VerifyingKey, SignatureError> {
    let bad = || SignatureError::BadKey(base64_key.to_string());
    let raw: [u8; 32] = STANDARD
        .decode(base64_key.trim())
        .map_err(|_| bad())?
        .try_into()
        .map_err(|_| bad())?;
    VerifyingKey::from_bytes(&raw).map_err(|_| bad())
}

/// How a public key is written in a configuration.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    STANDARD.encode(key.to_bytes())
}

/// Creates a new signing key in `path` (hex seed, mode 0600); refuses to overwrite one.
pub fn create_key_file(path: &std::path::Path) -> std::io::Result<SigningKey> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let seed: [u8; 32] = rand::random();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(hex::encode(seed).as_bytes())?;
    file.sync_all()?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads a signing key written by [`create_key_file`].
pub fn read_key_file(path: &std::path::Path) -> std::io::Result<SigningKey> {
    let text = std::fs::read_to_string(path)?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a hex Ed25519 seed (32 bytes)", path.display()),
            )
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

fn message(sha256_hex: &str) -> String {
    format!("cfm-plugin-v1:{}", sha256_hex.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "ab12000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn only_a_trusted_key_over_the_same_digest_verifies() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let trusted = vec![encode_public_key(&key.verifying_key())];
        let signature = sign(&key, DIGEST);
        assert_eq!(verify(&trusted, DIGEST, &signature), Ok(()));
        assert_eq!(verify(&trusted, &DIGEST.to_uppercase(), &signature), Ok(()));
        let other_digest = DIGEST.replace("ab12", "ab13");
        assert_eq!(
            verify(&trusted, &other_digest, &signature),
            Err(SignatureError::Untrusted)
        );
        assert_eq!(
            verify(&trusted, DIGEST, &sign(&other, DIGEST)),
            Err(SignatureError::Untrusted)
        );
        assert_eq!(
            verify(&trusted, DIGEST, "not base64!"),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            verify(&trusted, DIGEST, &STANDARD.encode([1u8; 10])),
            Err(SignatureError::BadSignature)
        );
        assert!(matches!(
            verify(&["short".into()], DIGEST, &signature),
            Err(SignatureError::BadKey(_))
        ));
    }
}
