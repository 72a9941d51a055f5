//! The gate in front of every guarded route: counts the call, records its `Authorization`
//! header, answers scripted failures, and checks the bearer token.
//!
//! EDC and Siglet routes want an access token this jwtlet issued (signature, `exp`, `nbf`;
//! else 401) whose `scope` claim satisfies the route's scope (else 403). EDC matches scopes
//! as today's EDC `ScopeMatcher` does: `prefix[:resource]:action`, a missing resource is the
//! wildcard, and `admin` ⊇ `write` ⊇ `read`, so `management-api:admin` satisfies
//! `management-api:dataplanes:write`. Siglet wants the exact scope. jwtlet's management routes
//! want a service-account token of the cluster (signature, `exp`, `aud` = the client audience;
//! else 401) whose account holds the route's role (else 403).

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

use crate::route::{self, Service};
use crate::{Shared, edc_error};

/// The `iss` of the tokens jwtlet issues.
pub(crate) const JWTLET_ISSUER: &str = "https://jwtlet.edc-v.svc.cluster.local";
/// The `iss` of the cluster's service-account tokens.
pub(crate) const KUBE_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// What a request's `Authorization` header carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An access token this jwtlet issued by a token exchange, valid when received.
    Exchanged,
    /// A Kubernetes service-account token of the cluster, valid when received.
    ServiceAccount,
    /// A bearer token neither key verifies, an expired one, or another scheme.
    Invalid,
    /// No `Authorization` header.
    Missing,
}

/// One request's `Authorization` header as a service received it (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRecord {
    /// The service that received it.
    pub service: Service,
    /// The request method (`POST`, ...).
    pub method: String,
    /// The request path, as sent.
    pub path: String,
    /// What the header carried.
    pub kind: TokenKind,
    /// The verified token's `sub`: the participant context of an exchanged token,
    /// `system:serviceaccount:<ns>:<name>` of a service-account token.
    pub sub: Option<String>,
    /// The verified exchanged token's `scope` claim (absent when no scope mapping gave one).
    pub scope: Option<String>,
}

/// The caller of an EDC or Siglet route: the claims of its exchanged token.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    pub sub: String,
    pub scope: String,
}

impl Principal {
    /// Whether the token carries `admin_scope`, which reaches every participant context.
    pub fn is_admin(&self, admin_scope: &str) -> bool {
        edc_satisfied(admin_scope, &self.scope)
    }

    /// EDC's `AuthorizationService`: the owner must be the token's participant context,
    /// unless the token is elevated by `admin_scope`.
    pub fn may_act_for(&self, owner: &str, admin_scope: &str) -> bool {
        self.sub == owner || self.is_admin(admin_scope)
    }

    /// [`Principal::may_act_for`], else EDC's 403 naming the token's and the owner's contexts.
    pub fn authorize(&self, owner: &str, admin_scope: &str) -> Result<(), Response> {
        if self.may_act_for(owner, admin_scope) {
            return Ok(());
        }
        let message = format!(
            "User '{}' is not authorized to access resources of '{owner}'.",
            self.sub
        );
        Err(edc_error(StatusCode::FORBIDDEN, &message))
    }
}

/// The signing keys: jwtlet's (access tokens) and the cluster's (service-account tokens).
pub(crate) struct Keys {
    jwtlet: Vec<u8>,
    cluster: Vec<u8>,
}

impl Keys {
    pub fn generate() -> Self {
        use rand::Rng as _;
        let mut rng = rand::rng();
        Self {
            jwtlet: rng.random::<[u8; 32]>().to_vec(),
            cluster: rng.random::<[u8; 32]>().to_vec(),
        }
    }

    pub fn sign_access(&self, claims: &Value) -> String {
        sign(&self.jwtlet, "jwtlet", claims)
    }

    pub fn sign_service_account(&self, claims: &Value) -> String {
        sign(&self.cluster, "kube", claims)
    }

    /// An access token's claims if jwtlet signed it and it is within `nbf`..`exp`.
    pub fn verify_access(&self, token: &str) -> Option<Value> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.leeway = 5;
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(&self.jwtlet), &validation)
            .ok()
            .map(|data| data.claims)
    }

    /// A service-account token's claims if the cluster signed it for `audience` and it is
    /// not expired.
    pub fn verify_service_account(&self, token: &str, audience: &str) -> Option<Value> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.leeway = 5;
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(&self.cluster), &validation)
            .ok()
            .map(|data| data.claims)
    }
}

fn sign(key: &[u8], kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key)).expect("signing a JWT")
}

/// Seconds since the epoch.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// What the `Authorization` header carries, with the verified claims.
fn classify(inner: &Shared, headers: &HeaderMap) -> (TokenKind, Option<Value>) {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return (TokenKind::Missing, None);
    };
    let value = value.to_str().unwrap_or("");
    let token = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => value[7..].trim(),
        _ => return (TokenKind::Invalid, None),
    };
    if let Some(claims) = inner.keys.verify_access(token) {
        return (TokenKind::Exchanged, Some(claims));
    }
    if let Some(claims) = inner
        .keys
        .verify_service_account(token, &inner.options.audience)
    {
        return (TokenKind::ServiceAccount, Some(claims));
    }
    (TokenKind::Invalid, None)
}

/// Whether the space-separated `granted` scopes satisfy `required`, as EDC's `ScopeMatcher`.
pub(crate) fn edc_satisfied(required: &str, granted: &str) -> bool {
    let Some(required) = parse_scope(required) else {
        return false;
    };
    granted
        .split_whitespace()
        .filter_map(parse_scope)
        .any(|g| g.0 == required.0 && (g.1 == required.1 || g.1 == "*") && g.2 >= required.2)
}

/// `prefix[:resource]:action` → (prefix, resource or `*`, action level).
fn parse_scope(scope: &str) -> Option<(&str, &str, u8)> {
    let parts: Vec<&str> = scope.trim().split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.trim().is_empty()) {
        return None;
    }
    let level = match parts[parts.len() - 1].to_ascii_lowercase().as_str() {
        "read" => 0,
        "write" => 1,
        "admin" => 2,
        _ => return None,
    };
    let resource = if parts.len() == 3 { parts[1] } else { "*" };
    Some((parts[0], resource, level))
}

/// The state of [`guard`]: which service's routes it guards.
#[derive(Clone)]
pub(crate) struct Guard {
    pub inner: Shared,
    pub service: Service,
}

/// The middleware in front of every route of a service's router (`route_layer`).
pub(crate) async fn guard(
    State(guard): State<Guard>,
    mut request: Request,
    next: Next,
) -> Response {
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let Some(spec) = route::find(guard.service, request.method(), &template) else {
        return next.run(request).await;
    };
    let (kind, claims) = classify(&guard.inner, request.headers());
    let claim = |name: &str| {
        claims
            .as_ref()
            .and_then(|c| c.get(name))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let (sub, scope) = (claim("sub"), claim("scope"));
    {
        let mut store = guard.inner.store();
        *store.calls.entry(spec.route).or_default() += 1;
        if guard.service != Service::JwtletToken || kind != TokenKind::Missing {
            store.auth_log.push(crate::AuthRecord {
                service: guard.service,
                method: request.method().to_string(),
                path: request.uri().path().to_string(),
                kind,
                sub: sub.clone(),
                scope: if kind == TokenKind::Exchanged {
                    scope.clone()
                } else {
                    None
                },
            });
        }
        let scripted = store
            .scripted
            .get_mut(&spec.route)
            .and_then(|q| q.pop_front());
        if let Some(status) = scripted {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return refusal(guard.service, status, "scripted failure");
        }
        if guard.service == Service::JwtletToken && store.jwtlet.down {
            let body = json!({"error": "temporarily_unavailable"});
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        }
        if guard.service == Service::JwtletManagement {
            if kind != TokenKind::ServiceAccount {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            let account = sub.clone().unwrap_or_default();
            let allowed = store
                .jwtlet
                .roles
                .get(&account)
                .is_some_and(|roles| roles.contains(spec.requires));
            if !allowed {
                return StatusCode::FORBIDDEN.into_response();
            }
        }
    }
    match guard.service {
        Service::JwtletToken | Service::JwtletManagement => next.run(request).await,
        service => {
            if kind != TokenKind::Exchanged {
                return refusal(
                    service,
                    StatusCode::UNAUTHORIZED,
                    "a valid bearer token is required",
                );
            }
            let granted = scope.unwrap_or_default();
            let satisfied = if service == Service::Siglet {
                granted.split_whitespace().any(|s| s == spec.requires)
            } else {
                edc_satisfied(spec.requires, &granted)
            };
            if !satisfied {
                let message = format!("the token lacks scope {}", spec.requires);
                return refusal(service, StatusCode::FORBIDDEN, &message);
            }
            request.extensions_mut().insert(Principal {
                sub: sub.unwrap_or_default(),
                scope: granted,
            });
            next.run(request).await
        }
    }
}

/// A refusal in the service's own error shape. EDC's authentication and scope filters
/// abort with an empty body, so do 401 and 403 here.
fn refusal(service: Service, status: StatusCode, message: &str) -> Response {
    match service {
        Service::IdentityHub | Service::ControlPlane | Service::IssuerService => {
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                status.into_response()
            } else {
                edc_error(status, message)
            }
        }
        Service::JwtletToken => {
            (status, axum::Json(json!({"error": "server_error"}))).into_response()
        }
        Service::JwtletManagement => status.into_response(),
        Service::Siglet => (status, axum::Json(json!({"error": message}))).into_response(),
    }
}

/// A service's router behind [`guard`].
pub(crate) fn guarded(
    router: axum::Router<Shared>,
    inner: &Shared,
    service: Service,
) -> axum::Router {
    let state = Guard {
        inner: inner.clone(),
        service,
    };
    router
        .route_layer(axum::middleware::from_fn_with_state(state, guard))
        .with_state(inner.clone())
}

#[cfg(test)]
mod tests {
    use super::edc_satisfied;

    #[test]
    fn admin_satisfies_narrower_scopes_of_its_prefix_only() {
        assert!(edc_satisfied(
            "management-api:dataplanes:write",
            "management-api:admin"
        ));
        assert!(edc_satisfied(
            "identity-api:credentials:read",
            "x identity-api:credentials:write"
        ));
        assert!(!edc_satisfied(
            "identity-api:credentials:write",
            "identity-api:credentials:read"
        ));
        assert!(!edc_satisfied(
            "issuer-admin-api:holders:write",
            "management-api:admin"
        ));
        assert!(!edc_satisfied(
            "management-api:admin",
            "management-api:write read write"
        ));
        assert!(!edc_satisfied(
            "identity-api:credentials:read",
            "identity-api:participants:admin"
        ));
    }
}
