//! Capability grants: what a plugin may reach, scoped to the participant being processed.
//!
//! Grants are written once per plugin with placeholders (`participants/{participantContextId}/**`)
//! and resolved per invocation, so a plugin working for one participant can never touch
//! another's secrets, namespaces or records. Everything not granted is denied.

use std::net::IpAddr;

use serde::Deserialize;
use url::{Host, Url};

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
    /// Record names, relative to the zone, the plugin may change: label patterns where
    /// `*` matches within one label and `**` any number of labels, templated by
    /// participant (`["{participantContextId}", "*.{participantContextId}"]`). Required:
    /// a zone is shared by every participant, so a grant of the zone alone would let a
    /// plugin working for one participant rewrite another's name. `[]` grants no name.
    pub names: Vec<String>,
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
    /// nothing. An origin whose host is an IP literal (`http://127.0.0.1:8081`) opens
    /// that address for itself alone: its scheme and port, not every origin's.
    #[serde(default)]
    pub private_networks: Vec<ipnet::IpNet>,
}

/// A request's origin in the one form origins are matched in: the scheme, the host as
/// WHATWG URL parsing leaves it (lowercase, IDNA, every IPv4 notation such as `2130706433`,
/// `0x7f.1` or `0177.0.0.1` turned into its dotted quad, IPv6 compressed and unbracketed)
/// without a trailing dot, and the port, the scheme's default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    /// The address, when the host is an IP literal.
    pub ip: Option<IpAddr>,
    pub port: u16,
}

impl Origin {
    /// The origin of an `http` or `https` URL; None for any other scheme.
    pub fn of(url: &Url) -> Option<Self> {
        let scheme = url.scheme();
        if !matches!(scheme, "http" | "https") {
            return None;
        }
        let (host, ip) = canonical_host(&url.host()?)?;
        Some(Self {
            scheme: scheme.to_string(),
            host,
            ip,
            port: url.port_or_known_default()?,
        })
    }
}

/// A host's canonical text, and its address when it is an IP literal; None for a name
/// that is nothing but dots.
fn canonical_host<S: AsRef<str>>(host: &Host<S>) -> Option<(String, Option<IpAddr>)> {
    match *host {
        Host::Domain(ref name) => {
            let name = name.as_ref().trim_end_matches('.');
            (!name.is_empty()).then(|| (name.to_ascii_lowercase(), None))
        }
        Host::Ipv4(ip) => Some((ip.to_string(), Some(ip.into()))),
        Host::Ipv6(ip) => Some((ip.to_string(), Some(ip.into()))),
    }
}

/// A parsed origin pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    /// Canonical as in [`Origin`], or a lowercase glob when it holds a `*`.
    host: String,
    /// The address, when the host is an IP literal (never for a glob).
    literal: Option<IpAddr>,
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
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', '%']) {
            return Err(bad(
                "must be scheme://host[:port], without path, user or encoding",
            ));
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
        // The pattern's host goes through the same parser as a request's, so that
        // `0x7f.1`, `127.0.0.1.` and `127.0.0.1` are one host on both sides.
        let (host, literal) = if host.contains('*') {
            match Host::parse(&host.replace('*', "x")) {
                Ok(Host::Domain(_)) => (host.trim_end_matches('.').to_ascii_lowercase(), None),
                _ => return Err(bad("has a malformed host")),
            }
        } else {
            let bracketed;
            let host = if host.contains(':') {
                bracketed = format!("[{host}]");
                &bracketed
            } else {
                host
            };
            let parsed = Host::parse(host).map_err(|_| bad("has a malformed host"))?;
            canonical_host(&parsed).ok_or_else(|| bad("has a malformed host"))?
        };
        Ok(Self {
            scheme,
            host,
            literal,
            port,
        })
    }

    pub fn matches(&self, origin: &Origin) -> bool {
        self.scheme == origin.scheme
            && self.port.is_none_or(|p| p == origin.port)
            && glob(&self.host, &origin.host)
    }

    /// The IP address this pattern names literally, if its host is one.
    pub fn literal_address(&self) -> Option<IpAddr> {
        self.literal
    }
}

/// Splits `host[:port]`, where an IPv6 host is bracketed; the host comes back unbracketed.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
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
            let segments = v6.segments();
            let first = segments[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                // Site-local, deprecated but still routed inside some networks.
                || (first & 0xffc0) == 0xfec0
                // Forms that embed an IPv4 address, which could be any of the above:
                // IPv4-compatible (::/96), IPv4-translated (::ffff:0:0/96), NAT64,
                // 6to4 and Teredo.
                || segments[..6] == [0; 6]
                || segments[..6] == [0, 0, 0, 0, 0xffff, 0]
                || (first == 0x0064 && segments[1] == 0xff9b)
                || first == 0x2002
                || (first == 0x2001 && segments[1] == 0)
                // Documentation.
                || (first == 0x2001 && segments[1] == 0x0db8)
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
    dns_names: Vec<String>,
    dns_record_types: Vec<String>,
    http_origins: Vec<OriginPattern>,
}

impl Grants {
    /// Checks the patterns once, at configuration load.
    pub fn validate(&self) -> Result<(), String> {
        let cluster = self.cluster.iter().flat_map(|c| &c.namespaces);
        let dns = self.dns.iter().flat_map(|d| d.zones.iter().chain(&d.names));
        let http = self.http.iter().flat_map(|h| &h.origins);
        for pattern in self.secrets.iter().chain(cluster).chain(dns).chain(http) {
            check_placeholders(pattern)?;
        }
        for name in self.dns.iter().flat_map(|d| &d.names) {
            let resolved = name.replace("{participantContextId}", "p");
            if !is_name_pattern(&resolved) {
                return Err(format!(
                    "dns name grant '{name}' is not a relative record name pattern: labels of [A-Za-z0-9_-], '*' within a label, '**' for any labels, or '@'"
                ));
            }
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
        // Stricter than a path segment: a context id with a dot would make one
        // participant's name a subdomain of another's (`x.p2` under `*.p2`).
        let dns_safe = is_dns_label(participant_context_id);
        let resolve_dns = |patterns: &[String]| -> Vec<String> {
            patterns
                .iter()
                .filter(|p| dns_safe || !p.contains('{'))
                .map(|p| {
                    normalize_zone(&p.replace("{participantContextId}", participant_context_id))
                })
                .collect()
        };
        let (zones, names, record_types) = match &self.dns {
            Some(d) => (
                resolve_dns(&d.zones),
                resolve_dns(&d.names),
                d.record_types
                    .iter()
                    .map(|t| t.to_ascii_uppercase())
                    .collect(),
            ),
            None => Default::default(),
        };
        let http_origins = match &self.http {
            // A templated host is a DNS name too (`https://{participantContextId}.hub.example`),
            // so it takes the DNS rule. Validated at load; a context id that makes an origin
            // malformed drops it.
            Some(h) => h
                .origins
                .iter()
                .filter(|p| dns_safe || !p.contains('{'))
                .map(|p| p.replace("{participantContextId}", participant_context_id))
                .filter_map(|o| OriginPattern::parse(&o).ok())
                .collect(),
            None => Vec::new(),
        };
        ScopedGrants {
            http_origins,
            secrets: resolve(&self.secrets),
            cluster_namespaces: namespaces,
            cluster_kinds: kinds,
            dns_zones: zones,
            dns_names: names,
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

    /// `name` is relative to `zone` (`@` for the apex).
    pub fn allows_dns(&self, zone: &str, name: &str, record_type: &str) -> bool {
        let zone = normalize_zone(zone);
        let name = normalize_zone(name);
        let labels: Vec<&str> = name.split('.').collect();
        let record_type = record_type.to_ascii_uppercase();
        self.dns_zones.contains(&zone)
            && self.dns_names.iter().any(|pattern| {
                let pattern: Vec<&str> = pattern.split('.').collect();
                path_matches(&pattern, &labels)
            })
            && self
                .dns_record_types
                .iter()
                .any(|t| t == "*" || *t == record_type)
    }

    pub fn allows_http(&self, origin: &Origin) -> bool {
        self.http_origins.iter().any(|o| o.matches(origin))
    }

    /// Whether a granted origin names `origin`'s IP literal and matches `origin` whole
    /// (scheme and port): that origin may then reach the address even in a special
    /// range. `http://127.0.0.1:8081` opens 127.0.0.1:8081, never 127.0.0.1:22 through
    /// another origin such as `http://*:*`.
    pub fn names_literally(&self, origin: &Origin) -> bool {
        origin.ip.is_some_and(|ip| {
            self.http_origins
                .iter()
                .any(|o| o.literal_address() == Some(ip) && o.matches(origin))
        })
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
fn is_name_pattern(pattern: &str) -> bool {
    pattern == "@"
        || pattern.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*'))
        })
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
                names: vec![
                    "{participantContextId}".into(),
                    "*.{participantContextId}".into(),
                ],
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
        assert!(scoped.allows_dns("Participants.Example", "p1", "CNAME"));
        assert!(!scoped.allows_dns("participants.example", "p1", "A"));
        assert!(!scoped.allows_dns("other.example", "p1", "CNAME"));
    }

    #[test]
    fn dns_names_are_scoped_to_the_participant() {
        let scoped = grants().scoped("p1");
        for own in ["p1", "P1.", "api.p1", "*.p1"] {
            assert!(
                scoped.allows_dns("participants.example", own, "CNAME"),
                "{own}"
            );
        }
        for other in ["p2", "api.p2", "p10", "p1x", "x.api.p1", "p1.p2", "@", "*"] {
            assert!(
                !scoped.allows_dns("participants.example", other, "CNAME"),
                "{other} was allowed"
            );
        }
    }

    #[test]
    fn a_dns_grant_without_names_does_not_load() {
        let without: Result<Grants, _> = toml::from_str(
            "[dns]\nzones = [\"participants.example\"]\nrecord-types = [\"CNAME\"]\n",
        );
        let err = without.expect_err("a zone-wide dns grant was accepted");
        assert!(err.to_string().contains("names"), "{err}");

        let none: Grants = toml::from_str(
            "[dns]\nzones = [\"participants.example\"]\nnames = []\nrecord-types = [\"*\"]\n",
        )
        .unwrap();
        assert!(
            !none
                .scoped("p1")
                .allows_dns("participants.example", "p1", "CNAME")
        );
    }

    #[test]
    fn malformed_dns_name_patterns_are_refused() {
        for bad in [
            "a..b",
            "",
            "p/{participantContextId}",
            "{participantContextId}.",
            "a b",
        ] {
            let grants = Grants {
                dns: Some(DnsGrant {
                    zones: vec!["participants.example".into()],
                    names: vec![bad.into()],
                    record_types: vec!["CNAME".into()],
                }),
                ..Default::default()
            };
            assert!(grants.validate().is_err(), "'{bad}' was accepted");
        }
        assert!(grants().validate().is_ok());
    }

    #[test]
    fn a_context_id_that_is_not_a_dns_label_gets_no_templated_dns_name() {
        // "x.p2" would otherwise be granted `x.p2` and `*.x.p2`, inside p2's names.
        for id in ["x.p2", "P2", "-p2", "p2_", "../p2", ""] {
            let scoped = grants().scoped(id);
            for name in ["x.p2", "p2", "x", "-p2", "p2_"] {
                assert!(
                    !scoped.allows_dns("participants.example", name, "CNAME"),
                    "context id '{id}' reached '{name}'"
                );
            }
        }
        let fixed = Grants {
            dns: Some(DnsGrant {
                zones: vec!["participants.example".into()],
                names: vec!["shared".into()],
                record_types: vec!["TXT".into()],
            }),
            ..Default::default()
        };
        assert!(
            fixed
                .scoped("x.p2")
                .allows_dns("participants.example", "shared", "TXT")
        );
    }

    #[test]
    fn no_grant_means_nothing() {
        let scoped = Grants::default().scoped("p1");
        assert!(!scoped.allows_secret("participants/p1/x"));
        assert!(!scoped.allows_cluster("ConfigMap", "cfm-p1"));
        assert!(!scoped.allows_dns("participants.example", "p1", "CNAME"));
    }

    #[test]
    fn glob_matches_within_a_segment() {
        assert!(glob("cfm-*", "cfm-abc"));
        assert!(glob("*-x-*", "a-x-b"));
        assert!(!glob("cfm-*", "xcfm-abc"));
        assert!(glob("*", ""));
    }

    /// The origin of `url`, as the http capability sees it.
    fn origin(url: &str) -> Origin {
        Origin::of(&Url::parse(url).unwrap()).unwrap()
    }

    #[test]
    fn a_context_id_with_a_dot_gets_no_templated_origin() {
        let grants = Grants {
            http: Some(HttpGrant {
                origins: vec!["https://{participantContextId}.hub.example".into()],
                private_networks: vec![],
            }),
            ..Default::default()
        };
        let scoped = grants.scoped("x.p2");
        assert!(!scoped.allows_http(&origin("https://x.p2.hub.example")));
        assert!(
            grants
                .scoped("p2")
                .allows_http(&origin("https://p2.hub.example"))
        );
    }

    #[test]
    fn http_origins_match_scheme_host_and_port() {
        let scoped = grants().scoped("p1");
        assert!(scoped.allows_http(&origin("https://p1.issuer.example")));
        assert!(scoped.allows_http(&origin("HTTPS://P1.Issuer.Example.:443/x")));
        assert!(!scoped.allows_http(&origin("https://p2.issuer.example")));
        assert!(!scoped.allows_http(&origin("http://p1.issuer.example:443")));
        assert!(!scoped.allows_http(&origin("https://p1.issuer.example:8443")));
        assert!(scoped.allows_http(&origin("http://127.0.0.1:1234")));
        assert!(scoped.allows_http(&origin("https://a.b.hub.example:8443")));
        assert!(!scoped.allows_http(&origin("https://hub.example:8443")));
        assert!(scoped.names_literally(&origin("http://127.0.0.1:1234")));
        assert!(!scoped.names_literally(&origin("http://127.0.0.2:1234")));
        assert!(!scoped.names_literally(&origin("https://127.0.0.1:1234")));
        assert!(
            !Grants::default()
                .scoped("p1")
                .allows_http(&origin("https://x"))
        );
    }

    #[test]
    fn every_ipv4_notation_is_one_canonical_host() {
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://0x7f.1/",
            "http://0177.0x0.0.1/",
            "http://127.0.0.1./",
            "http://%31%32%37.0.0.1/",
        ] {
            let origin = origin(url);
            assert_eq!(origin.host, "127.0.0.1", "{url}");
            assert_eq!(origin.ip, Some("127.0.0.1".parse().unwrap()), "{url}");
            assert_eq!(origin.port, 80, "{url}");
        }
        let v6 = origin("http://[0:0:0:0:0:FFFF:7F00:1]:8080/");
        assert_eq!(v6.ip, Some("::ffff:127.0.0.1".parse().unwrap()));
        assert_eq!(v6, origin("http://[::ffff:127.0.0.1]:8080/"));
        assert_eq!(origin("http://Granted.Example./").host, "granted.example");
        assert_eq!(origin("http://granted.example/").ip, None);
        assert!(Origin::of(&Url::parse("ftp://granted.example/").unwrap()).is_none());
    }

    #[test]
    fn a_literal_origin_opens_its_address_for_itself_only() {
        let scoped = Grants {
            http: Some(HttpGrant {
                origins: vec!["http://127.0.0.1:8081".into(), "http://*:*".into()],
                private_networks: vec![],
            }),
            ..Default::default()
        }
        .scoped("p1");
        assert!(scoped.names_literally(&origin("http://127.0.0.1:8081/")));
        assert!(scoped.names_literally(&origin("http://0x7f.1:8081/")));
        // Granted as an origin through `http://*:*`, but not named at this port.
        assert!(scoped.allows_http(&origin("http://127.0.0.1:22/")));
        assert!(!scoped.names_literally(&origin("http://127.0.0.1:22/")));
        assert!(!scoped.names_literally(&origin("http://127.0.0.2:8081/")));
        assert!(!scoped.names_literally(&origin("http://localhost:8081/")));
    }

    #[test]
    fn origin_patterns_are_canonical_too() {
        let pattern = OriginPattern::parse("http://0x7f.1:8080").unwrap();
        assert_eq!(
            pattern.literal_address(),
            Some("127.0.0.1".parse().unwrap())
        );
        assert!(pattern.matches(&origin("http://127.0.0.1:8080/")));
        let named = OriginPattern::parse("https://Issuer.Example.").unwrap();
        assert!(named.matches(&origin("https://issuer.example/")));
        assert_eq!(named.literal_address(), None);
        // A glob never names an address, even one that looks like it.
        let glob = OriginPattern::parse("http://127.0.0.*:*").unwrap();
        assert!(glob.matches(&origin("http://127.0.0.9:1/")));
        assert_eq!(glob.literal_address(), None);
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
            "https://256.0.0.1",
            "https://%31%32%37.0.0.1",
            "https://a b",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad} was accepted");
        }
        let v6 = OriginPattern::parse("http://[::1]:8080").unwrap();
        assert!(v6.matches(&origin("http://[::1]:8080/")));
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
            "::127.0.0.1",
            "::ffff:0:7f00:1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "2001:db8::1",
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
