//! The routes of every stand-in: which service serves them, their method and path template,
//! and the scope (or, at jwtlet's management API, the role) each requires.

use axum::http::Method;

/// The services the stand-ins stand in for, as named in [`crate::AuthRecord`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// jwtlet's token-exchange listener (`/token`).
    JwtletToken,
    /// jwtlet's management listener (`/api/v1/...`).
    JwtletManagement,
    /// The EDC Identity Hub's identity API.
    IdentityHub,
    /// The EDC Control Plane's management API.
    ControlPlane,
    /// The EDC Issuer Service's admin API.
    IssuerService,
    /// Siglet's management API.
    Siglet,
}

/// Every route whose answers a test can count and script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    /// jwtlet `POST /token`.
    Token,
    /// jwtlet `GET /api/v1/mappings`.
    MappingsList,
    /// jwtlet `POST /api/v1/mappings`.
    MappingCreate,
    /// jwtlet `PUT /api/v1/mappings/{client}/{pc}`.
    MappingReplace,
    /// jwtlet `DELETE /api/v1/mappings/{client}/{pc}`.
    MappingDelete,
    /// jwtlet `DELETE /api/v1/mappings/{client}`.
    ClientMappingsDelete,
    /// jwtlet `GET /api/v1/scopes`.
    ScopesList,
    /// jwtlet `POST /api/v1/scopes`.
    ScopeCreate,
    /// jwtlet `PUT /api/v1/scopes/{scope}`.
    ScopeReplace,
    /// jwtlet `DELETE /api/v1/scopes/{scope}`.
    ScopeDelete,
    /// Identity Hub `POST /v1beta/participants`.
    IdentityHubCreate,
    /// Identity Hub `DELETE /v1beta/participants/{pc}`.
    IdentityHubDelete,
    /// Identity Hub `POST /v1beta/participants/{pc}/credentials/request`.
    CredentialRequest,
    /// Identity Hub `GET /v1beta/participants/{pc}/credentials/request/{holderPid}`.
    CredentialStatus,
    /// Control Plane `POST /v5beta/participants`.
    ControlPlaneCreate,
    /// Control Plane `DELETE /v5beta/participants/{pc}`.
    ControlPlaneDelete,
    /// Control Plane `PATCH /v5beta/participants/{pc}/config`.
    ControlPlaneConfig,
    /// Control Plane `PUT /v5beta/participants/{pc}/dataplanes`.
    DataplaneRegister,
    /// Control Plane `DELETE /v5beta/participants/{pc}/dataplanes/{dataplaneId}`.
    DataplaneDelete,
    /// Issuer Service `POST /v1beta/participants/{ctx}/holders`.
    HolderCreate,
    /// Issuer Service `DELETE /v1beta/participants/{ctx}/holders/{holderId}`.
    HolderDelete,
    /// Issuer Service `POST /v1beta/participants/{ctx}/credentials/query`.
    CredentialQuery,
    /// Issuer Service `POST /v1beta/participants/{ctx}/credentials/{id}/revoke`.
    CredentialRevoke,
    /// Siglet `POST /transfer-type-mappings`.
    TransferTypeCreate,
    /// Siglet `GET /transfer-type-mappings/{pc}`.
    TransferTypeGet,
    /// Siglet `PUT /transfer-type-mappings/{pc}`.
    TransferTypeReplace,
    /// Siglet `DELETE /transfer-type-mappings/{pc}`.
    TransferTypeDelete,
    /// Siglet `POST /key-mappings`.
    KeyMappingCreate,
    /// Siglet `GET /key-mappings/{pc}`.
    KeyMappingGet,
    /// Siglet `PUT /key-mappings/{pc}`.
    KeyMappingReplace,
    /// Siglet `DELETE /key-mappings/{pc}`.
    KeyMappingDelete,
}

/// One row of [`ROUTES`].
pub(crate) struct RouteSpec {
    pub route: Route,
    pub service: Service,
    pub method: Method,
    pub path: &'static str,
    /// The scope the bearer token must satisfy (EDC: `@RequiredScope`; Siglet: exact), or the
    /// jwtlet management role; empty for `/token`.
    pub requires: &'static str,
}

const fn spec(
    route: Route,
    service: Service,
    method: Method,
    path: &'static str,
    requires: &'static str,
) -> RouteSpec {
    RouteSpec {
        route,
        service,
        method,
        path,
        requires,
    }
}

use Route as R;
use Service as S;

const IH: &str = "/v1beta/participants";
const CP: &str = "/v5beta/participants";

/// Every guarded route. Scopes are today's `@RequiredScope`s of the EDC controllers (an
/// admin scope of the same prefix satisfies them), Siglet's read/write split, and jwtlet's
/// per-group roles.
pub(crate) static ROUTES: [RouteSpec; 31] = [
    spec(R::Token, S::JwtletToken, Method::POST, "/token", ""),
    spec(
        R::MappingsList,
        S::JwtletManagement,
        Method::GET,
        "/api/v1/mappings",
        crate::ROLE_READ,
    ),
    spec(
        R::MappingCreate,
        S::JwtletManagement,
        Method::POST,
        "/api/v1/mappings",
        crate::ROLE_MAPPINGS_WRITE,
    ),
    spec(
        R::MappingReplace,
        S::JwtletManagement,
        Method::PUT,
        "/api/v1/mappings/{client}/{pc}",
        crate::ROLE_MAPPINGS_WRITE,
    ),
    spec(
        R::MappingDelete,
        S::JwtletManagement,
        Method::DELETE,
        "/api/v1/mappings/{client}/{pc}",
        crate::ROLE_MAPPINGS_WRITE,
    ),
    spec(
        R::ClientMappingsDelete,
        S::JwtletManagement,
        Method::DELETE,
        "/api/v1/mappings/{client}",
        crate::ROLE_MAPPINGS_WRITE,
    ),
    spec(
        R::ScopesList,
        S::JwtletManagement,
        Method::GET,
        "/api/v1/scopes",
        crate::ROLE_READ,
    ),
    spec(
        R::ScopeCreate,
        S::JwtletManagement,
        Method::POST,
        "/api/v1/scopes",
        crate::ROLE_SCOPE_WRITE,
    ),
    spec(
        R::ScopeReplace,
        S::JwtletManagement,
        Method::PUT,
        "/api/v1/scopes/{scope}",
        crate::ROLE_SCOPE_WRITE,
    ),
    spec(
        R::ScopeDelete,
        S::JwtletManagement,
        Method::DELETE,
        "/api/v1/scopes/{scope}",
        crate::ROLE_SCOPE_WRITE,
    ),
    spec(
        R::IdentityHubCreate,
        S::IdentityHub,
        Method::POST,
        IH,
        "identity-api:admin",
    ),
    spec(
        R::IdentityHubDelete,
        S::IdentityHub,
        Method::DELETE,
        "/v1beta/participants/{pc}",
        "identity-api:participants:write",
    ),
    spec(
        R::CredentialRequest,
        S::IdentityHub,
        Method::POST,
        "/v1beta/participants/{pc}/credentials/request",
        "identity-api:credentials:write",
    ),
    spec(
        R::CredentialStatus,
        S::IdentityHub,
        Method::GET,
        "/v1beta/participants/{pc}/credentials/request/{pid}",
        "identity-api:credentials:read",
    ),
    spec(
        R::ControlPlaneCreate,
        S::ControlPlane,
        Method::POST,
        CP,
        "management-api:admin",
    ),
    spec(
        R::ControlPlaneDelete,
        S::ControlPlane,
        Method::DELETE,
        "/v5beta/participants/{pc}",
        "management-api:admin",
    ),
    spec(
        R::ControlPlaneConfig,
        S::ControlPlane,
        Method::PATCH,
        "/v5beta/participants/{pc}/config",
        "management-api:admin",
    ),
    spec(
        R::DataplaneRegister,
        S::ControlPlane,
        Method::PUT,
        "/v5beta/participants/{pc}/dataplanes",
        "management-api:dataplanes:write",
    ),
    spec(
        R::DataplaneDelete,
        S::ControlPlane,
        Method::DELETE,
        "/v5beta/participants/{pc}/dataplanes/{id}",
        "management-api:dataplanes:write",
    ),
    spec(
        R::HolderCreate,
        S::IssuerService,
        Method::POST,
        "/v1beta/participants/{ctx}/holders",
        "issuer-admin-api:holders:write",
    ),
    spec(
        R::HolderDelete,
        S::IssuerService,
        Method::DELETE,
        "/v1beta/participants/{ctx}/holders/{holder}",
        "issuer-admin-api:holders:write",
    ),
    spec(
        R::CredentialQuery,
        S::IssuerService,
        Method::POST,
        "/v1beta/participants/{ctx}/credentials/query",
        "issuer-admin-api:credentials:read",
    ),
    spec(
        R::CredentialRevoke,
        S::IssuerService,
        Method::POST,
        "/v1beta/participants/{ctx}/credentials/{id}/revoke",
        "issuer-admin-api:credentials:write",
    ),
    spec(
        R::TransferTypeCreate,
        S::Siglet,
        Method::POST,
        "/transfer-type-mappings",
        "siglet-mgmt-api:write",
    ),
    spec(
        R::TransferTypeGet,
        S::Siglet,
        Method::GET,
        "/transfer-type-mappings/{pc}",
        "siglet-mgmt-api:read",
    ),
    spec(
        R::TransferTypeReplace,
        S::Siglet,
        Method::PUT,
        "/transfer-type-mappings/{pc}",
        "siglet-mgmt-api:write",
    ),
    spec(
        R::TransferTypeDelete,
        S::Siglet,
        Method::DELETE,
        "/transfer-type-mappings/{pc}",
        "siglet-mgmt-api:write",
    ),
    spec(
        R::KeyMappingCreate,
        S::Siglet,
        Method::POST,
        "/key-mappings",
        "siglet-mgmt-api:write",
    ),
    spec(
        R::KeyMappingGet,
        S::Siglet,
        Method::GET,
        "/key-mappings/{pc}",
        "siglet-mgmt-api:read",
    ),
    spec(
        R::KeyMappingReplace,
        S::Siglet,
        Method::PUT,
        "/key-mappings/{pc}",
        "siglet-mgmt-api:write",
    ),
    spec(
        R::KeyMappingDelete,
        S::Siglet,
        Method::DELETE,
        "/key-mappings/{pc}",
        "siglet-mgmt-api:write",
    ),
];

/// The route `service` serves for this method and matched path template.
pub(crate) fn find(service: Service, method: &Method, path: &str) -> Option<&'static RouteSpec> {
    ROUTES
        .iter()
        .find(|r| r.service == service && r.method == *method && r.path == path)
}

/// The path template of `route`, for the routers.
pub(crate) fn path_of(route: Route) -> &'static str {
    ROUTES
        .iter()
        .find(|r| r.route == route)
        .map(|r| r.path)
        .unwrap_or_default()
}
