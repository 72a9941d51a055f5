use url::Url;

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
            subject_token_origin: None,
            subject_token_paths: vec![],
        }),
        tokens: Some(TokenGrant {
            audiences: vec!["edcv".into()],
            scopes: vec!["identity-api:admin".into(), "read".into()],
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
    let without: Result<Grants, _> =
        toml::from_str("[dns]\nzones = [\"participants.example\"]\nrecord-types = [\"CNAME\"]\n");
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
            subject_token_origin: None,
            subject_token_paths: vec![],
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
            subject_token_origin: None,
            subject_token_paths: vec![],
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
fn imports_name_the_capability_they_need() {
    let needs = |import: &str| Capability::from_import(import);
    assert_eq!(needs("cfm:plugin/secrets@0.1.0"), Some(Capability::Secrets));
    assert_eq!(needs("cfm:plugin/cluster@0.1.0"), Some(Capability::Cluster));
    assert_eq!(needs("cfm:plugin/dns"), Some(Capability::Dns));
    assert_eq!(needs("cfm:plugin/tokens@0.1.0"), Some(Capability::Tokens));
    assert_eq!(
        needs("wasi:http/outgoing-handler@0.2.6"),
        Some(Capability::Http)
    );
    for free in [
        "cfm:plugin/log@0.1.0",
        "cfm:plugin/types@0.1.0",
        "wasi:io/streams@0.2.6",
        "secrets",
    ] {
        assert_eq!(needs(free), None, "{free}");
    }
    let names: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(names, ["secrets", "cluster", "dns", "http", "tokens"]);
}

#[test]
fn each_capability_is_opened_by_its_own_grant() {
    let all = grants();
    let none = Grants::default();
    for capability in Capability::ALL {
        assert!(all.opens(capability), "{capability}");
        assert!(!none.opens(capability), "{capability}");
    }
    let secrets_only = Grants {
        secrets: vec!["x".into()],
        ..Default::default()
    };
    assert!(secrets_only.opens(Capability::Secrets));
    assert!(!secrets_only.opens(Capability::Http));
}

#[test]
fn grant_errors_say_what_is_wrong() {
    let placeholder = |pattern: &str| {
        Grants {
            secrets: vec![pattern.into()],
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        placeholder("p/{tenant}/**"),
        "grant 'p/{tenant}/**' uses unknown placeholder {tenant}; known: {participantContextId}"
    );
    assert_eq!(placeholder("p/{x"), "grant 'p/{x' has an unclosed '{'");
    assert_eq!(
        placeholder("/abs"),
        "secret grant '/abs' is not a relative path pattern"
    );
    let port = OriginPattern::parse("https://issuer.example:http").unwrap_err();
    assert_eq!(
        port.to_string(),
        "http origin 'https://issuer.example:http' has a malformed port"
    );
    // The parser's own complaint stays reachable for whoever logs the chain.
    assert!(std::error::Error::source(&port).is_some());
    assert_eq!(
        normalize_secret_path("a/../b").unwrap_err(),
        SecretPathError::Segment("..".into())
    );
}

#[test]
fn tokens_need_a_granted_audience_and_every_scope_granted() {
    let scoped = grants().scoped("p1");
    assert!(scoped.allows_token("edcv", "identity-api:admin"));
    assert!(scoped.allows_token("edcv", "identity-api:admin read"));
    assert!(!scoped.allows_token("edcv", "identity-api:admin write"));
    assert!(!scoped.allows_token("other", "read"));
    assert!(!scoped.allows_token("edcv", ""));
    assert!(!scoped.allows_token("edcv", "read  identity-api:admin"));
    assert!(!Grants::default().scoped("p1").allows_token("edcv", "read"));
}

#[test]
fn the_subject_token_goes_to_one_listed_origin_only() {
    let grant = |origin: &str| HttpGrant {
        origins: vec![
            "http://jwtlet.example:8081".into(),
            "https://*.hub.example".into(),
        ],
        private_networks: vec![],
        subject_token_origin: Some(origin.into()),
        subject_token_paths: vec![
            "/api/v1/mappings".into(),
            "/api/v1/mappings/*/{participantContextId}".into(),
        ],
    };
    let listed = Grants {
        http: Some(grant("http://jwtlet.example:8081")),
        ..Default::default()
    };
    listed.validate().unwrap();
    let scoped = listed.scoped("p1");
    let presented = |url: &str| {
        let parsed = Url::parse(url).unwrap();
        scoped.presents_subject_token_to(&Origin::of(&parsed).unwrap(), parsed.path())
    };
    assert!(presented("http://JWTLET.example:8081/api/v1/mappings"));
    assert!(presented(
        "http://jwtlet.example:8081/api/v1/mappings/system:sa:x/p1"
    ));
    // Another participant's mapping, all of a client's, the scopes API, other origins: no.
    assert!(!presented(
        "http://jwtlet.example:8081/api/v1/mappings/system:sa:x/p2"
    ));
    assert!(!presented(
        "http://jwtlet.example:8081/api/v1/mappings/system:sa:x"
    ));
    assert!(!presented(
        "http://jwtlet.example:8081/api/v1/mappings/x/p1%2F..%2Fp2"
    ));
    assert!(!presented(
        "http://jwtlet.example:8081/api/v1/mappings/x/p1/../p2"
    ));
    assert!(!presented("http://jwtlet.example:8081/api/v1/scopes"));
    assert!(!presented("http://jwtlet.example:8080/api/v1/mappings"));
    assert!(!presented("https://a.hub.example/api/v1/mappings"));
    for refused in [
        "http://unlisted.example:8081",
        "https://*.hub.example",
        "http://{participantContextId}.example",
    ] {
        let grants = Grants {
            http: Some(grant(refused)),
            ..Default::default()
        };
        assert!(
            matches!(grants.validate(), Err(GrantError::SubjectTokenOrigin(_))),
            "{refused} was accepted"
        );
    }
}
