//! Capability grants: what a plugin may reach, scoped to the participant being processed.
//!
//! Grants are written once per plugin with placeholders (`participants/{participantContextId}/**`)
//! and resolved per invocation, so a plugin working for one participant can never touch
//! another's secrets, namespaces or records. Everything not granted is denied.

use serde::Deserialize;

/// The placeholders a grant may use; anything else is a configuration error.
pub const PLACEHOLDERS: &[&str] = &["{participantContextId}"];

/// What a plugin's configuration grants, before it is scoped to a participant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Grants {
    /// Secret path patterns: `*` matches within one segment, `**` any number of segments.
    #[serde(default)]
    pub secrets: Vec<String>,
    pub cluster: Option<ClusterGrant>,
    pub dns: Option<DnsGrant>,
    /// Outbound HTTP origins (`https://host:port`); linked once the HTTP capability lands.
    #[serde(default)]
    pub http: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterGrant {
    /// Namespace patterns (`*` wildcard); a `Namespace` object is checked by its name.
    pub namespaces: Vec<String>,
    /// Object kinds (`ConfigMap`, ...); `*` for any.
    pub kinds: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DnsGrant {
    /// Zones the plugin may change records in (exact names).
    pub zones: Vec<String>,
    /// Record types (`CNAME`, `A`, ...); `*` for any.
    pub record_types: Vec<String>,
}

/// Grants resolved for one participant context.
#[derive(Debug, Clone, Default)]
pub struct ScopedGrants {
    secrets: Vec<String>,
    cluster_namespaces: Vec<String>,
    cluster_kinds: Vec<String>,
    dns_zones: Vec<String>,
    dns_record_types: Vec<String>,
}

impl Grants {
    /// Checks the patterns once, at configuration load.
    pub fn validate(&self) -> Result<(), String> {
        let cluster = self.cluster.iter().flat_map(|c| &c.namespaces);
        let dns = self.dns.iter().flat_map(|d| &d.zones);
        for pattern in self.secrets.iter().chain(cluster).chain(dns) {
            check_placeholders(pattern)?;
        }
        for pattern in &self.secrets {
            if pattern.starts_with('/') || pattern.split('/').any(|s| s.is_empty() || s == "..") {
                return Err(format!(
                    "secret grant '{pattern}' is not a relative path pattern"
                ));
            }
        }
        Ok(())
    }

    /// Resolves the placeholders for one participant context. A context id that is not a
    /// safe path segment resolves every templated grant to nothing, so it can never widen one.
    pub fn scoped(&self, participant_context_id: &str) -> ScopedGrants {
        let safe = is_safe_segment(participant_context_id);
        let resolve = |patterns: &[String]| -> Vec<String> {
            patterns
                .iter()
                .filter(|p| safe || !p.contains('{'))
                .map(|p| p.replace("{participantContextId}", participant_context_id))
                .collect()
        };
        let (namespaces, kinds) = match &self.cluster {
            Some(c) => (resolve(&c.namespaces), c.kinds.clone()),
            None => Default::default(),
        };
        let (zones, record_types) = match &self.dns {
            Some(d) => (
                resolve(&d.zones)
                    .iter()
                    .map(|z| normalize_zone(z))
                    .collect(),
                d.record_types
                    .iter()
                    .map(|t| t.to_ascii_uppercase())
                    .collect(),
            ),
            None => Default::default(),
        };
        ScopedGrants {
            secrets: resolve(&self.secrets),
            cluster_namespaces: namespaces,
            cluster_kinds: kinds,
            dns_zones: zones,
            dns_record_types: record_types,
        }
    }
}

impl ScopedGrants {
    /// `path` must already be normalised by [`normalize_secret_path`].
    pub fn allows_secret(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').collect();
        self.secrets.iter().any(|pattern| {
            let pattern: Vec<&str> = pattern.split('/').collect();
            path_matches(&pattern, &segments)
        })
    }

    pub fn allows_cluster(&self, kind: &str, namespace: &str) -> bool {
        self.cluster_kinds.iter().any(|k| k == "*" || k == kind)
            && self.cluster_namespaces.iter().any(|p| glob(p, namespace))
    }

    pub fn allows_dns(&self, zone: &str, record_type: &str) -> bool {
        let zone = normalize_zone(zone);
        let record_type = record_type.to_ascii_uppercase();
        self.dns_zones.contains(&zone)
            && self
                .dns_record_types
                .iter()
                .any(|t| t == "*" || *t == record_type)
    }
}

/// Validates a secret path and returns its canonical form. Only plain segments of
/// `[A-Za-z0-9._-]` are accepted, so `..`, absolute paths and percent- or
/// unicode-encoded tricks are refused before any grant is consulted.
pub fn normalize_secret_path(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 512 {
        return Err("a secret path must have 1 to 512 characters".into());
    }
    if let Some(bad) = raw.split('/').find(|s| !is_safe_segment(s)) {
        return Err(format!(
            "secret path segment '{bad}' is not allowed: use [A-Za-z0-9._-], no '.' or '..' and no empty segments"
        ));
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

pub fn normalize_zone(zone: &str) -> String {
    zone.trim_end_matches('.').to_ascii_lowercase()
}

fn check_placeholders(pattern: &str) -> Result<(), String> {
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("grant '{pattern}' has an unclosed '{{'"))?;
        let placeholder = &rest[start..start + end + 1];
        if !PLACEHOLDERS.contains(&placeholder) {
            return Err(format!(
                "grant '{pattern}' uses unknown placeholder {placeholder}; known: {}",
                PLACEHOLDERS.join(", ")
            ));
        }
        rest = &rest[start + end + 1..];
    }
    Ok(())
}

fn path_matches(pattern: &[&str], path: &[&str]) -> bool {
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
fn glob(pattern: &str, text: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> Grants {
        Grants {
            secrets: vec!["participants/{participantContextId}/**".into()],
            cluster: Some(ClusterGrant {
                namespaces: vec!["cfm-{participantContextId}".into()],
                kinds: vec!["ConfigMap".into(), "Namespace".into()],
            }),
            dns: Some(DnsGrant {
                zones: vec!["participants.example.".into()],
                record_types: vec!["cname".into()],
            }),
            http: vec![],
        }
    }

    #[test]
    fn secrets_are_scoped_to_the_participant() {
        let scoped = grants().scoped("p1");
        assert!(scoped.allows_secret("participants/p1/api-key"));
        assert!(scoped.allows_secret("participants/p1/a/b/c"));
        assert!(!scoped.allows_secret("participants/p2/api-key"));
        assert!(!scoped.allows_secret("participants/p10/api-key"));
        assert!(!scoped.allows_secret("other/p1/api-key"));
    }

    #[test]
    fn traversal_and_encodings_are_refused_before_matching() {
        for bad in [
            "participants/p1/../p2/key",
            "/participants/p1/key",
            "participants//p1",
            "participants/p1/%2e%2e/p2",
            "participants/p1/ｋey",
            "participants/p1/.",
            "",
        ] {
            assert!(normalize_secret_path(bad).is_err(), "{bad} was accepted");
        }
        assert!(normalize_secret_path("participants/p1/api-key").is_ok());
    }

    #[test]
    fn an_unsafe_context_id_resolves_templated_grants_to_nothing() {
        let scoped = grants().scoped("../p2");
        assert!(!scoped.allows_secret("participants/p2/x"));
        assert!(!scoped.allows_cluster("ConfigMap", "cfm-../p2"));
        let wild = Grants {
            secrets: vec![
                "shared/**".into(),
                "participants/{participantContextId}/*".into(),
            ],
            ..Default::default()
        }
        .scoped("*");
        assert!(wild.allows_secret("shared/x"));
        assert!(!wild.allows_secret("participants/p2/x"));
    }

    #[test]
    fn cluster_and_dns_need_both_target_and_kind() {
        let scoped = grants().scoped("p1");
        assert!(scoped.allows_cluster("ConfigMap", "cfm-p1"));
        assert!(!scoped.allows_cluster("Secret", "cfm-p1"));
        assert!(!scoped.allows_cluster("ConfigMap", "cfm-p2"));
        assert!(scoped.allows_dns("Participants.Example", "CNAME"));
        assert!(!scoped.allows_dns("participants.example", "A"));
        assert!(!scoped.allows_dns("other.example", "CNAME"));
    }

    #[test]
    fn no_grant_means_nothing() {
        let scoped = Grants::default().scoped("p1");
        assert!(!scoped.allows_secret("participants/p1/x"));
        assert!(!scoped.allows_cluster("ConfigMap", "cfm-p1"));
        assert!(!scoped.allows_dns("participants.example", "CNAME"));
    }

    #[test]
    fn glob_matches_within_a_segment() {
        assert!(glob("cfm-*", "cfm-abc"));
        assert!(glob("*-x-*", "a-x-b"));
        assert!(!glob("cfm-*", "xcfm-abc"));
        assert!(glob("*", ""));
    }
}
