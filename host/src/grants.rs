//! Capability grants: what a plugin may reach, scoped to the participant being processed.
//!
//! Grants are written once per plugin with placeholders (`participants/{participantContextId}/**`)
//! and resolved per invocation, so a plugin working for one participant can never touch
//! another's secrets, namespaces or records. Everything not granted is denied.

use std::net::IpAddr;

use serde::Deserialize;

/// The capabilities a grant can open.
pub const CAPABILITIES: &[&str] = &["secrets", "cluster", "dns", "http"];

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
    pub http: Option<HttpGrant>,
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

/// Outbound HTTP through `wasi:http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpGrant {
    /// Origins `scheme://host[:port]`. A `*` in the host matches any run of characters
    /// (`https://*.issuer.example`), port `*` any port; no port means the scheme's default.
    pub origins: Vec<String>,
    /// Loopback, link-local, private and other special-purpose ranges (CIDR) that a
    /// granted name may resolve to. Such addresses are refused otherwise, so a granted
    /// name that resolves (or is rebound) to `127.0.0.1` or `169.254.169.254` reaches
    /// nothing. An origin whose host is an IP literal names its own address.
    #[serde(default)]
    pub private_networks: Vec<ipnet::IpNet>,
}

/// A parsed origin pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    /// Lowercase; `*` globs; IPv6 literals without brackets.
    host: String,
    /// None: any port.
    port: Option<u16>,
}

impl OriginPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("http origin '{pattern}' {why}");
        let (scheme, rest) = pattern
            .split_once("://")
            .ok_or_else(|| bad("needs a scheme: http:// or https://"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(bad("must use http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(bad("must be scheme://host[:port], without path or user"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| bad("has a malformed port"))?;
        let port = match port {
            None => Some(default_port),
            Some("*") => None,
            Some(p) => Some(p.parse().map_err(|_| bad("has a malformed port"))?),
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        Ok(Self {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme == scheme && self.port.is_none_or(|p| p == port) && glob(&self.host, host)
    }

    /// The IP address this pattern names literally, if its host is one.
    pub fn literal_address(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Splits `host[:port]`, where an IPv6 host is bracketed; the host comes back unbracketed.
pub fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(port))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

/// Which resolved addresses outbound HTTP may connect to: public ones, plus the special
/// ranges a grant names. Per plugin, since private networks are not templated.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    private_networks: Vec<ipnet::IpNet>,
}

impl AddressPolicy {
    pub fn new(grant: &HttpGrant) -> Self {
        Self {
            private_networks: grant.private_networks.clone(),
        }
    }

    /// Whether a connection to `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !is_special(ip) || self.private_networks.iter().any(|n| n.contains(&ip))
    }
}

/// Loopback, link-local, private, shared, unspecified, multicast and reserved ranges:
/// where cloud metadata services, the host itself and internal networks live.
pub fn is_special(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                // NAT64 and 6to4 embed an IPv4 address that could be any of the above.
                || (first == 0x0064 && v6.segments()[1] == 0xff9b)
                || first == 0x2002
        }
    }
}

/// Grants resolved for one participant context.
#[derive(Debug, Clone, Default)]
pub struct ScopedGrants {
    secrets: Vec<String>,
    cluster_namespaces: Vec<String>,
    cluster_kinds: Vec<String>,
    dns_zones: Vec<String>,
    dns_record_types: Vec<String>,
    http_origins: Vec<OriginPattern>,
}

impl Grants {
    /// Checks the patterns once, at configuration load.
    pub fn validate(&self) -> Result<(), String> {
        let cluster = self.cluster.iter().flat_map(|c| &c.namespaces);
        let dns = self.dns.iter().flat_map(|d| &d.zones);
        let http = self.http.iter().flat_map(|h| &h.origins);
        for pattern in self.secrets.iter().chain(cluster).chain(dns).chain(http) {
            check_placeholders(pattern)?;
        }
        for origin in self.http.iter().flat_map(|h| &h.origins) {
            OriginPattern::parse(&origin.replace("{participantContextId}", "p"))?;
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

    /// Whether these grants open `capability` (one of [`CAPABILITIES`]) at all: what the
    /// host links for the plugin, and what the plugin may import.
    pub fn opens(&self, capability: &str) -> bool {
        match capability {
            "secrets" => !self.secrets.is_empty(),
            "cluster" => self.cluster.is_some(),
            "dns" => self.dns.is_some(),
            "http" => self.http.is_some(),
            _ => false,
        }
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
        let http_origins = match &self.http {
            // Validated at load; a context id that makes an origin malformed drops it.
            Some(h) => resolve(&h.origins)
                .iter()
                .filter_map(|o| OriginPattern::parse(o).ok())
                .collect(),
            None => Vec::new(),
        };
        ScopedGrants {
            http_origins,
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

    /// Whether everything under `folder` is granted: a pattern `<folder>/**`, its segments
    /// matching the folder's, must be among the grants. `folder` must be normalised.
    pub fn allows_folder(&self, folder: &str) -> bool {
        let segments: Vec<&str> = folder.split('/').collect();
        self.secrets.iter().any(|pattern| {
            let pattern: Vec<&str> = pattern.split('/').collect();
            pattern.last() == Some(&"**")
                && !pattern[..pattern.len() - 1].contains(&"**")
                && path_matches(&pattern[..pattern.len() - 1], &segments)
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

    /// `host` lowercase and unbracketed.
    pub fn allows_http(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.http_origins
            .iter()
            .any(|o| o.matches(scheme, host, port))
    }

    /// Whether an origin names `ip` literally, which allows it even in a special range.
    pub fn names_address(&self, ip: IpAddr) -> bool {
        self.http_origins
            .iter()
            .any(|o| o.literal_address() == Some(ip))
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
            http: Some(HttpGrant {
                origins: vec![
                    "https://{participantContextId}.issuer.example".into(),
                    "http://127.0.0.1:*".into(),
                    "https://*.hub.example:8443".into(),
                ],
                private_networks: vec![],
            }),
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
    fn a_folder_is_granted_only_whole() {
        let scoped = grants().scoped("p1");
        assert!(scoped.allows_folder("participants/p1"));
        assert!(!scoped.allows_folder("participants/p2"));
        assert!(!scoped.allows_folder("participants"));
        let exact = Grants {
            secrets: vec!["participants/{participantContextId}/api-key".into()],
            ..Default::default()
        }
        .scoped("p1");
        assert!(!exact.allows_folder("participants/p1"));
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

    #[test]
    fn http_origins_match_scheme_host_and_port() {
        let scoped = grants().scoped("p1");
        assert!(scoped.allows_http("https", "p1.issuer.example", 443));
        assert!(!scoped.allows_http("https", "p2.issuer.example", 443));
        assert!(!scoped.allows_http("http", "p1.issuer.example", 443));
        assert!(!scoped.allows_http("https", "p1.issuer.example", 8443));
        assert!(scoped.allows_http("http", "127.0.0.1", 1234));
        assert!(scoped.allows_http("https", "a.b.hub.example", 8443));
        assert!(!scoped.allows_http("https", "hub.example", 8443));
        assert!(scoped.names_address("127.0.0.1".parse().unwrap()));
        assert!(!scoped.names_address("127.0.0.2".parse().unwrap()));
        assert!(
            !Grants::default()
                .scoped("p1")
                .allows_http("https", "x", 443)
        );
    }

    #[test]
    fn malformed_origins_are_refused() {
        for bad in [
            "issuer.example",
            "ftp://issuer.example",
            "https://issuer.example/path",
            "https://user@issuer.example",
            "https://issuer.example:http",
            "https://",
            "https://[::1",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad} was accepted");
        }
        let v6 = OriginPattern::parse("http://[::1]:8080").unwrap();
        assert!(v6.matches("http", "::1", 8080));
        assert_eq!(v6.literal_address(), Some("::1".parse().unwrap()));
    }

    #[test]
    fn special_addresses_need_a_named_network() {
        let closed = AddressPolicy::default();
        for ip in [
            "127.0.0.1",
            "169.254.169.254",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!closed.allows(ip.parse().unwrap()), "{ip} was allowed");
        }
        assert!(closed.allows("93.184.216.34".parse().unwrap()));
        assert!(closed.allows("2606:2800:220:1::1".parse().unwrap()));
        let open = AddressPolicy::new(&HttpGrant {
            origins: vec![],
            private_networks: vec!["10.0.0.0/8".parse().unwrap()],
        });
        assert!(open.allows("10.1.2.3".parse().unwrap()));
        assert!(!open.allows("127.0.0.1".parse().unwrap()));
    }
}
