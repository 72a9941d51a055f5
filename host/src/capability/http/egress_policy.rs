//! Where a plugin's outbound requests may go: the one place their destination is judged.
//!
//! Two checks, because a host name alone says nothing about where a connection goes: the
//! request's origin must match a granted `scheme://host:port`, and every address the
//! connection is made to must be public, in a range the grant names, or (for an IP
//! literal) named by the very origin that matched.
//!
//! The address check sits where the address connected to is decided. For a name, that
//! is the resolver the connection uses ([`FilteringResolver`]), so a name rebound to
//! `127.0.0.1` between two lookups gains nothing. For an IP literal the client resolves
//! nothing, so [`admit`] checks the address before the request is sent.

use std::net::IpAddr;
use std::sync::Arc;

use wasmtime_wasi_http::Error as HttpError;

use super::target::Target;
use crate::grants::{HttpGrant, ScopedGrants};

/// Whether `target` may be requested under `grants`, refused with the `wasi:http` error
/// the plugin gets. Names are judged again by the resolver when the client connects.
pub fn admit(
    grants: &ScopedGrants,
    policy: &AddressPolicy,
    target: &Target,
) -> Result<(), HttpError> {
    // `granted.example:x@127.0.0.1` dresses another host up as a granted one, and
    // credentials in a URL would go to whichever host follows them.
    if target.userinfo || !grants.allows_http(&target.origin) {
        return Err(HttpError::HttpRequestDenied);
    }
    // A literal address never reaches the resolver: the same policy is applied here,
    // widened only by an origin that names this address and matched this request.
    if let Some(ip) = target.origin.ip
        && !policy.allows(ip)
        && !grants.names_literally(&target.origin)
    {
        return Err(HttpError::DestinationIpProhibited);
    }
    Ok(())
}

/// Which resolved addresses outbound HTTP may connect to: public ones, plus the special
/// ranges a grant names. Per plugin, since private networks are not templated.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    private_networks: Vec<ipnet::IpNet>,
}

impl AddressPolicy {
    /// The policy of one plugin's `http` grant.
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

/// Resolves with the system resolver, then drops the addresses the policy refuses.
pub struct FilteringResolver {
    policy: Arc<AddressPolicy>,
}

impl FilteringResolver {
    /// A resolver that keeps only the addresses `policy` allows.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

/// Every address a granted name resolved to lies in a range no grant names.
#[derive(Debug, thiserror::Error)]
#[error("'{name}' resolves only to addresses outside this plugin's grants ({addresses:?})")]
struct AddressProhibited {
    name: String,
    addresses: Vec<IpAddr>,
}

impl reqwest::dns::Resolve for FilteringResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let name = name.as_str().to_string();
            let resolved: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<_> = resolved
                .iter()
                .copied()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.is_empty() && !resolved.is_empty() {
                return Err(Box::new(AddressProhibited {
                    name,
                    addresses: resolved.iter().map(|a| a.ip()).collect(),
                }) as _);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a connection failed because the resolver refused every address of the name.
pub fn prohibited(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<AddressProhibited>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::Grants;

    fn target(url: &str) -> Target {
        Target::parse(&http::Method::GET, &url.parse().unwrap()).unwrap()
    }

    fn grants(origins: &[&str]) -> ScopedGrants {
        Grants {
            http: Some(HttpGrant {
                origins: origins.iter().map(|o| o.to_string()).collect(),
                private_networks: vec![],
                subject_token_origin: None,
                subject_token_paths: vec![],
            }),
            ..Default::default()
        }
        .scoped("p1")
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
            subject_token_origin: None,
            subject_token_paths: vec![],
        });
        assert!(open.allows("10.1.2.3".parse().unwrap()));
        assert!(!open.allows("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_request_needs_a_granted_origin_and_no_userinfo() {
        let grants = grants(&["https://{participantContextId}.issuer.example"]);
        let policy = AddressPolicy::default();
        assert!(admit(&grants, &policy, &target("https://p1.issuer.example/x")).is_ok());
        for refused in [
            "https://p2.issuer.example/x",
            "http://p1.issuer.example/x",
            "https://p1.issuer.example:8443/x",
            "https://user:pw@p1.issuer.example/x",
        ] {
            let err = admit(&grants, &policy, &target(refused)).unwrap_err();
            assert!(
                matches!(err, HttpError::HttpRequestDenied),
                "{refused}: {err:?}"
            );
        }
    }

    #[test]
    fn a_special_literal_needs_an_origin_that_names_it() {
        let grants = grants(&["http://127.0.0.1:8081", "http://*:*"]);
        let policy = AddressPolicy::default();
        assert!(admit(&grants, &policy, &target("http://127.0.0.1:8081/")).is_ok());
        assert!(admit(&grants, &policy, &target("http://0x7f.1:8081/")).is_ok());
        for prohibited in ["http://127.0.0.1:22/", "http://169.254.169.254/"] {
            let err = admit(&grants, &policy, &target(prohibited)).unwrap_err();
            assert!(
                matches!(err, HttpError::DestinationIpProhibited),
                "{prohibited}: {err:?}"
            );
        }
        // A public literal passes through `http://*:*`; a name is judged at resolution.
        assert!(admit(&grants, &policy, &target("http://93.184.216.34/")).is_ok());
        assert!(admit(&grants, &policy, &target("http://localhost:22/")).is_ok());
    }
}
