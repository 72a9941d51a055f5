//! The names grants speak of (secret paths, zones, record names) and how patterns of
//! them match: `*` within one segment or label, `**` across any number.

use super::{GrantError, PLACEHOLDERS};

/// Why a secret path a plugin passed is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretPathError {
    /// Empty, or longer than 512 characters.
    #[error("a secret path must have 1 to 512 characters")]
    Length,
    #[error(
        "secret path segment '{0}' is not allowed: use [A-Za-z0-9._-], no '.' or '..' and no empty segments"
    )]
    /// A segment that is empty, `.` or `..`, or holds more than `[A-Za-z0-9._-]`.
    Segment(String),
}

/// Validates a secret path and returns its canonical form. Only plain segments of
/// `[A-Za-z0-9._-]` are accepted, so `..`, absolute paths and percent- or
/// unicode-encoded tricks are refused before any grant is consulted.
pub fn normalize_secret_path(raw: &str) -> Result<String, SecretPathError> {
    if raw.is_empty() || raw.len() > 512 {
        return Err(SecretPathError::Length);
    }
    if let Some(bad) = raw.split('/').find(|s| !is_safe_segment(s)) {
        return Err(SecretPathError::Segment(bad.to_string()));
    }
    Ok(raw.to_string())
}

/// A name usable as one path segment: no separators, no dot-only names, no encodings.
pub fn is_safe_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A zone or record name as grants compare them: lowercase, no trailing dot.
pub fn normalize_zone(zone: &str) -> String {
    zone.trim_end_matches('.').to_ascii_lowercase()
}

/// One lowercase DNS label (RFC 1123): what a participant context id must be before it
/// is put into a DNS grant, as the dns plugin requires of it too.
pub fn is_dns_label(s: &str) -> bool {
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
        && bytes.iter().all(|b| alphanumeric(b) || *b == b'-')
}

/// A record name pattern: `@`, or labels of `[A-Za-z0-9_-]` and `*`, or `**`.
pub(super) fn is_name_pattern(pattern: &str) -> bool {
    pattern == "@"
        || pattern.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*'))
        })
}

pub(super) fn check_placeholders(pattern: &str) -> Result<(), GrantError> {
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| GrantError::UnclosedPlaceholder {
                pattern: pattern.to_string(),
            })?;
        let placeholder = &rest[start..start + end + 1];
        if !PLACEHOLDERS.contains(&placeholder) {
            return Err(GrantError::UnknownPlaceholder {
                pattern: pattern.to_string(),
                placeholder: placeholder.to_string(),
            });
        }
        rest = &rest[start + end + 1..];
    }
    Ok(())
}

pub(super) fn path_matches(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| path_matches(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((segment, path_rest)) => glob(first, segment) && path_matches(rest, path_rest),
            None => false,
        },
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub(super) fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((prefix, rest)) => {
            let Some(text) = text.strip_prefix(prefix) else {
                return false;
            };
            (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .any(|i| glob(rest, &text[i..]))
        }
    }
}
