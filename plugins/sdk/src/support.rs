//! Small helpers several plugins need.

use crate::{CapabilityResultExt, Change, Error, secrets};

impl Change {
    /// The change as a lowercase word, for log lines.
    pub fn as_str(&self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
        }
    }
}

/// Returns `bytes` random bytes as lowercase hex, for generated credentials.
///
/// The randomness comes from the host's `wasi:random`, which is a CSPRNG.
pub fn random_hex(bytes: usize) -> Result<String, Error> {
    let mut buffer = vec![0u8; bytes];
    // The host's entropy source failing is not the request's fault and may clear up.
    getrandom::fill(&mut buffer)
        .map_err(|error| Error::Retry(format!("no randomness available: {error}")))?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Whether `name` is an RFC 1123 label: 1 to 63 lowercase letters, digits and
/// hyphens, starting and ending with a letter or digit.
///
/// Kubernetes namespace names and DNS record names built from a participant
/// context id must be labels; checking in the plugin turns a malformed id into a
/// clear fatal error instead of a backend rejection.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alphanumeric = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    (1..=63).contains(&bytes.len())
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
        && bytes.iter().all(|byte| alphanumeric(byte) || *byte == b'-')
}

/// Fails the activity, naming `setting`, when a setting the plugin cannot work without is
/// empty: a configuration error that no retry would fix.
pub fn required_setting<'a>(plugin: &str, setting: &str, value: &'a str) -> Result<&'a str, Error> {
    if value.is_empty() {
        Err(Error::Fatal(format!(
            "setting '{setting}' is not configured for the {plugin} plugin"
        )))
    } else {
        Ok(value)
    }
}

/// Reads a secret that must exist (an operator's API key, say): fatal when it is missing,
/// retried when the secrets backend is unavailable. The value is never logged.
pub fn required_secret(path: &str) -> Result<String, Error> {
    secrets::get(path)
        .context(format!("read the secret at {path}"))?
        .ok_or_else(|| Error::Fatal(format!("no secret is stored at {path}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(is_dns_label("cfm-0b7e2c1a-5f0e-4c8e-9a55-3f1d2e4c6b7a"));
        assert!(is_dns_label("a"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("Upper"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
