//! Capability grants: what a plugin may reach, scoped to the participant being processed.
//!
//! Grants are written once per plugin with placeholders (`participants/{participantContextId}/**`)
//! and resolved per invocation, so a plugin working for one participant can never touch
//! another's secrets, namespaces or records. Everything not granted is denied.

mod origin;
mod pattern;
#[cfg(test)]
mod tests;

use serde::Deserialize;

pub use origin::{Origin, OriginError, OriginPattern};
pub use pattern::{
    SecretPathError, is_dns_label, is_safe_segment, normalize_secret_path, normalize_zone,
};
use pattern::{check_placeholders, glob, is_name_pattern, path_matches};

/// The placeholders a grant may use; anything else is a configuration error.
pub const PLACEHOLDERS: &[&str] = &["{participantContextId}"];

/// A capability a grant can open. Its name is the one configurations, audit records and
/// error messages use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// Secrets of the participant (`cfm:plugin/secrets`).
    Secrets,
    /// Kubernetes objects (`cfm:plugin/cluster`).
    Cluster,
    /// DNS records (`cfm:plugin/dns`).
    Dns,
    /// Outbound HTTP (`wasi:http`).
    Http,
    /// Access tokens by token exchange (`cfm:plugin/tokens`).
    Tokens,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 5] = [
        Capability::Secrets,
        Capability::Cluster,
        Capability::Dns,
        Capability::Http,
        Capability::Tokens,
    ];

    /// The capability's name: `secrets`, `cluster`, `dns`, `http` or `tokens`.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Secrets => "secrets",
            Capability::Cluster => "cluster",
            Capability::Dns => "dns",
            Capability::Http => "http",
            Capability::Tokens => "tokens",
        }
    }

    /// The grant a component import needs: a cfm capability interface, or `http` for
    /// `wasi:http`. None for what every plugin gets (`log`, `types`, the rest of WASI).
    pub fn from_import(import: &str) -> Option<Self> {
        if import.starts_with("wasi:http/") {
            return Some(Capability::Http);
        }
        let interface = import.strip_prefix("cfm:plugin/")?;
        let interface = interface.split('@').next().unwrap_or(interface);
        Self::ALL.into_iter().find(|c| c.as_str() == interface)
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a plugin's grants do not load.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// A `{` without its `}`.
    #[error("grant '{pattern}' has an unclosed '{{'")]
    UnclosedPlaceholder {
        /// The grant as written.
        pattern: String,
    },
    /// A placeholder that is not one of [`PLACEHOLDERS`].
    #[error("grant '{pattern}' uses unknown placeholder {placeholder}; known: {}", PLACEHOLDERS.join(", "))]
    UnknownPlaceholder {
        /// The grant as written.
        pattern: String,
        /// The placeholder it uses.
        placeholder: String,
    },
    #[error(
        "dns name grant '{0}' is not a relative record name pattern: labels of [A-Za-z0-9_-], '*' within a label, '**' for any labels, or '@'"
    )]
    /// A dns name grant that is no relative record name pattern.
    DnsName(String),
    /// A secret grant that is no relative path pattern.
    #[error("secret grant '{0}' is not a relative path pattern")]
    SecretPattern(String),
    /// An http origin that does not parse.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// A subject-token origin that is not one exact origin among the grant's `origins`.
    #[error(
        "subject-token-origin '{0}' must be one exact origin (no '*', no placeholder) listed in origins, with subject-token-paths (absolute path patterns)"
    )]
    SubjectTokenOrigin(String),
    /// A tokens grant naming a scope with a space, or an empty audience or scope.
    #[error("tokens grant: '{0}' is not a single non-empty audience or scope")]
    TokenName(String),
}

/// What a plugin's configuration grants, before it is scoped to a participant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Grants {
    /// Secret path patterns: `*` matches within one segment, `**` any number of segments.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Kubernetes objects, by namespace and kind.
    pub cluster: Option<ClusterGrant>,
    /// DNS records, by zone, name and type.
    pub dns: Option<DnsGrant>,
    /// Outbound HTTP, by origin.
    pub http: Option<HttpGrant>,
    /// Access tokens for the participant being processed, by audience and scope.
    pub tokens: Option<TokenGrant>,
}

/// What a `tokens` grant opens: tokens exchanged for the participant context being
/// processed (never another), for these audiences, carrying only these scopes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TokenGrant {
    /// Audiences a token may be asked for (`edcv`).
    pub audiences: Vec<String>,
    /// Scopes a token may carry; a request for several must have each granted.
    pub scopes: Vec<String>,
}

/// What a `cluster` grant opens: objects of these kinds in these namespaces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterGrant {
    /// Namespace patterns (`*` wildcard); a `Namespace` object is checked by its name.
    pub namespaces: Vec<String>,
    /// Object kinds (`ConfigMap`, ...); `*` for any.
    pub kinds: Vec<String>,
}

/// What a `dns` grant opens: records of these names and types in these zones.
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
    /// One of `origins`, exactly, to which the host presents its own subject token
    /// (`Authorization: Bearer <token>`, replacing any the plugin set), for a service that
    /// authenticates the agent itself rather than a participant (jwtlet's management API).
    /// The plugin never sees the token, but it acts with the host's authority there: grant it
    /// only to a plugin you trust with that service.
    pub subject_token_origin: Option<String>,
    /// The paths on that origin the token goes with (required with it): segment patterns
    /// where `*` matches within one segment and `**` any number, templated by participant
    /// (`/api/v1/mappings/*/{participantContextId}`). Other paths go out without it.
    #[serde(default)]
    pub subject_token_paths: Vec<String>,
}

impl HttpGrant {
    /// The parsed [`HttpGrant::subject_token_origin`]: one exact origin, listed in `origins`.
    pub fn subject_token_origin(&self) -> Result<Option<Origin>, GrantError> {
        let Some(raw) = &self.subject_token_origin else {
            return Ok(None);
        };
        let refused = || GrantError::SubjectTokenOrigin(raw.clone());
        if raw.contains(['*', '{'])
            || self.subject_token_paths.is_empty()
            || self.subject_token_paths.iter().any(|p| !p.starts_with('/'))
        {
            return Err(refused());
        }
        let pattern = OriginPattern::parse(raw).map_err(|_| refused())?;
        let listed = self
            .origins
            .iter()
            .any(|o| OriginPattern::parse(o).is_ok_and(|o| o == pattern));
        let origin = url::Url::parse(raw)
            .ok()
            .and_then(|url| Origin::of(&url))
            .filter(|_| listed)
            .ok_or_else(refused)?;
        Ok(Some(origin))
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
    subject_token_origin: Option<Origin>,
    subject_token_paths: Vec<String>,
    token_audiences: Vec<String>,
    token_scopes: Vec<String>,
}

impl Grants {
    /// Checks the patterns once, at configuration load.
    pub fn validate(&self) -> Result<(), GrantError> {
        let cluster = self.cluster.iter().flat_map(|c| &c.namespaces);
        let dns = self.dns.iter().flat_map(|d| d.zones.iter().chain(&d.names));
        let http = self
            .http
            .iter()
            .flat_map(|h| h.origins.iter().chain(&h.subject_token_paths));
        for pattern in self.secrets.iter().chain(cluster).chain(dns).chain(http) {
            check_placeholders(pattern)?;
        }
        for name in self.dns.iter().flat_map(|d| &d.names) {
            let resolved = name.replace("{participantContextId}", "p");
            if !is_name_pattern(&resolved) {
                return Err(GrantError::DnsName(name.clone()));
            }
        }
        for origin in self.http.iter().flat_map(|h| &h.origins) {
            OriginPattern::parse(&origin.replace("{participantContextId}", "p"))?;
        }
        for pattern in &self.secrets {
            if pattern.starts_with('/') || pattern.split('/').any(|s| s.is_empty() || s == "..") {
                return Err(GrantError::SecretPattern(pattern.clone()));
            }
        }
        if let Some(http) = &self.http {
            http.subject_token_origin()?;
        }
        for name in self
            .tokens
            .iter()
            .flat_map(|t| t.audiences.iter().chain(&t.scopes))
        {
            if name.is_empty() || name.chars().any(char::is_whitespace) {
                return Err(GrantError::TokenName(name.clone()));
            }
        }
        Ok(())
    }

    /// Whether these grants open `capability` at all: what the host links for the
    /// plugin, and what the plugin may import.
    pub fn opens(&self, capability: Capability) -> bool {
        match capability {
            Capability::Secrets => !self.secrets.is_empty(),
            Capability::Cluster => self.cluster.is_some(),
            Capability::Dns => self.dns.is_some(),
            Capability::Http => self.http.is_some(),
            Capability::Tokens => self.tokens.is_some(),
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
        let (token_audiences, token_scopes) = match &self.tokens {
            Some(t) => (t.audiences.clone(), t.scopes.clone()),
            None => Default::default(),
        };
        ScopedGrants {
            http_origins,
            subject_token_origin: self
                .http
                .as_ref()
                .and_then(|h| h.subject_token_origin().ok().flatten()),
            subject_token_paths: self
                .http
                .as_ref()
                .map(|h| resolve(&h.subject_token_paths))
                .unwrap_or_default(),
            token_audiences,
            token_scopes,
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

    /// Whether an object of `kind` in `namespace` is granted; a `Namespace` object is
    ///  checked by its own name.
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

    /// Whether a token for `audience` carrying `scope` (scopes separated by spaces, each
    /// granted) may be exchanged. An empty scope is no scope and is refused.
    pub fn allows_token(&self, audience: &str, scope: &str) -> bool {
        let mut scopes = scope.split(' ').peekable();
        scopes.peek().is_some_and(|s| !s.is_empty())
            && self.token_audiences.iter().any(|a| a == audience)
            && scopes.all(|s| self.token_scopes.iter().any(|g| g == s))
    }

    /// Whether a request to `path` on `origin` carries the host's subject token. `path` is
    /// the parsed URL's (dot segments resolved, escapes kept), so `%2F` never splits one.
    pub fn presents_subject_token_to(&self, origin: &Origin, path: &str) -> bool {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.subject_token_origin.as_ref() == Some(origin)
            && self.subject_token_paths.iter().any(|pattern| {
                let pattern: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
                path_matches(&pattern, &segments)
            })
    }

    /// Whether a request to `origin` matches a granted origin. Where it may connect is judged
    ///  apart, by the http capability's egress policy.
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
