//! Where a plugin's request goes, parsed once.
//!
//! The guest's URL is parsed with WHATWG rules (the `url` crate), the rules reqwest would
//! apply to a string anyway: `http://0x7f.1/` is `127.0.0.1` to the connection, so it must
//! be `127.0.0.1` to the grant check too. The parsed [`url::Url`] is what is checked, what
//! is audited and what is handed to the client; the raw text is never looked at again.

use url::Url;

use crate::grants::Origin;

/// A request's destination in canonical form.
#[derive(Debug, Clone)]
pub struct Target {
    /// What the client is given: the checked URL, a trailing dot stripped from its host.
    pub url: Url,
    /// The origin the grants are matched against.
    pub origin: Origin,
    /// The URL carried a user name or password (`http://granted.example:x@127.0.0.1/`).
    pub userinfo: bool,
    /// `METHOD scheme://host[:port]/path` for the audit record: no userinfo, no query
    /// (either may carry credentials, and audit records are kept).
    pub audited: String,
}

/// A URL that is not an absolute `http(s)` URL with a host; holds its audit form.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a valid http(s) URL")]
pub struct InvalidTarget(pub String);

impl Target {
    /// Parses a request's method and URI; anything but an absolute `http(s)` URL with a host
    ///  is invalid.
    pub fn parse(method: &http::Method, uri: &http::Uri) -> Result<Self, InvalidTarget> {
        // `Uri::host` leaves any userinfo out, so even the refusal audits none.
        let invalid = || {
            InvalidTarget(format!(
                "{method} {}://{}{}",
                uri.scheme_str().unwrap_or_default(),
                uri.host().unwrap_or_default(),
                uri.path()
            ))
        };
        let mut url = Url::parse(&uri.to_string()).map_err(|_| invalid())?;
        let origin = Origin::of(&url).ok_or_else(invalid)?;
        // Matched without it, so connected to without it.
        if url.host_str() != Some(origin.host.as_str()) && origin.ip.is_none() {
            url.set_host(Some(&origin.host)).map_err(|_| invalid())?;
        }
        let userinfo = !url.username().is_empty() || url.password().is_some();
        let mut shown = url.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        // Cannot fail: the URL has a host.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        Ok(Self {
            audited: format!("{method} {shown}"),
            url,
            origin,
            userinfo,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> Result<Target, InvalidTarget> {
        Target::parse(&http::Method::GET, &uri.parse().unwrap())
    }

    #[test]
    fn userinfo_is_seen_and_never_audited() {
        let target = parse("http://granted.example:x@127.0.0.1:8080/a?token=s3cret").unwrap();
        assert!(target.userinfo);
        assert_eq!(target.origin.host, "127.0.0.1");
        assert_eq!(target.audited, "GET http://127.0.0.1:8080/a");
        assert!(parse("http://user@granted.example/").unwrap().userinfo);
        assert!(!parse("http://granted.example/").unwrap().userinfo);
    }

    #[test]
    fn the_client_gets_the_canonical_url() {
        for (raw, canonical) in [
            ("http://0x7f.1:8080/x?q=1", "http://127.0.0.1:8080/x?q=1"),
            ("http://2130706433/", "http://127.0.0.1/"),
            ("http://0177.0.0.1./", "http://127.0.0.1/"),
            ("http://Granted.Example./a/../b", "http://granted.example/b"),
            (
                "https://[0:0::FFFF:7f00:1]:443/",
                "https://[::ffff:7f00:1]/",
            ),
        ] {
            let target = parse(raw).unwrap();
            assert_eq!(target.url.as_str(), canonical, "{raw}");
            assert!(!target.audited.contains('?'), "{}", target.audited);
        }
    }

    #[test]
    fn what_is_not_an_http_url_is_invalid() {
        for raw in [
            "http://256.0.0.1/",
            "http://0x1.0x1.0x1.0x1.0x1/",
            "ftp://x.example/",
        ] {
            let err = parse(raw).expect_err(raw);
            assert!(!err.0.contains('@'), "{err}");
        }
        let err = parse("http://user:pw@256.0.0.1/p?q").unwrap_err();
        assert_eq!(err.0, "GET http://256.0.0.1/p");
    }
}
