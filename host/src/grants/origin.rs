//! Origins (`scheme://host:port`): a request's, in canonical form, and the patterns an
//! `http` grant lists. Both sides go through the same host parser, so an address written
//! in any notation is one host to the grant check.

use std::net::IpAddr;

use url::{Host, Url};

use super::pattern::glob;

/// A request's origin in the one form origins are matched in: the scheme, the host as
/// WHATWG URL parsing leaves it (lowercase, IDNA, every IPv4 notation such as `2130706433`,
/// `0x7f.1` or `0177.0.0.1` turned into its dotted quad, IPv6 compressed and unbracketed)
/// without a trailing dot, and the port, the scheme's default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: String,
    /// The canonical host text.
    pub host: String,
    /// The address, when the host is an IP literal.
    pub ip: Option<IpAddr>,
    /// The port, the scheme's default filled in.
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

/// Why an origin pattern of an `http` grant does not parse.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// No `scheme://`.
    #[error("http origin '{0}' needs a scheme: http:// or https://")]
    NoScheme(String),
    /// A scheme other than http and https.
    #[error("http origin '{0}' must use http or https")]
    Scheme(String),
    /// A path, user, query or encoding where only `scheme://host[:port]` belongs.
    #[error("http origin '{0}' must be scheme://host[:port], without path, user or encoding")]
    Form(String),
    /// A port that is neither a number nor `*`.
    #[error("http origin '{pattern}' has a malformed port")]
    Port {
        /// The origin as written.
        pattern: String,
        /// Why the number does not parse, when it looks like one.
        #[source]
        source: Option<std::num::ParseIntError>,
    },
    /// Nothing between the scheme and the port.
    #[error("http origin '{0}' has no host")]
    NoHost(String),
    /// A host that is neither a domain name nor an IP address.
    #[error("http origin '{pattern}' has a malformed host")]
    Host {
        /// The origin as written.
        pattern: String,
        /// The URL parser's complaint, when it had one.
        #[source]
        source: Option<url::ParseError>,
    },
}

impl OriginPattern {
    /// Parses an origin of an `http` grant, its placeholders already resolved.
    pub fn parse(pattern: &str) -> Result<Self, OriginError> {
        let owned = || pattern.to_string();
        let bad_port = |source| OriginError::Port {
            pattern: owned(),
            source,
        };
        let bad_host = |source| OriginError::Host {
            pattern: owned(),
            source,
        };
        let (scheme, rest) = pattern
            .split_once("://")
            .ok_or_else(|| OriginError::NoScheme(owned()))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(OriginError::Scheme(owned())),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', '%']) {
            return Err(OriginError::Form(owned()));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| bad_port(None))?;
        let port = match port {
            None => Some(default_port),
            Some("*") => None,
            Some(p) => Some(p.parse().map_err(|e| bad_port(Some(e)))?),
        };
        if host.is_empty() {
            return Err(OriginError::NoHost(owned()));
        }
        // The pattern's host goes through the same parser as a request's, so that
        // `0x7f.1`, `127.0.0.1.` and `127.0.0.1` are one host on both sides.
        let (host, literal) = if host.contains('*') {
            match Host::parse(&host.replace('*', "x")) {
                Ok(Host::Domain(_)) => (host.trim_end_matches('.').to_ascii_lowercase(), None),
                Ok(_) => return Err(bad_host(None)),
                Err(e) => return Err(bad_host(Some(e))),
            }
        } else {
            let bracketed;
            let host = if host.contains(':') {
                bracketed = format!("[{host}]");
                &bracketed
            } else {
                host
            };
            let parsed = Host::parse(host).map_err(|e| bad_host(Some(e)))?;
            canonical_host(&parsed).ok_or_else(|| bad_host(None))?
        };
        Ok(Self {
            scheme,
            host,
            literal,
            port,
        })
    }

    /// Whether `origin` has this scheme, a host this one matches, and this port (any, for `*`).
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
