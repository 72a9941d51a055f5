//! The OpenAPI 3.1 document of the REST API, generated from the handlers' annotations
//! and the request and response types, and served at `/api/v1alpha1/openapi.json`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{events, provision, tenant};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cfm",
        description = "Connector Fabric Manager: tenants, participant profiles, cells, dataspace profiles and the orchestrations that provision them. Wire-compatible with upstream CFM's v1alpha1 API."
    ),
    servers((url = "/api/v1alpha1")),
    paths(
        tenant::list_tenants,
        tenant::create_tenant,
        tenant::query_tenants,
        tenant::get_tenant,
        tenant::patch_tenant,
        tenant::delete_tenant,
        tenant::decommission_tenant,
        tenant::get_decommission,
        tenant::list_profiles,
        tenant::deploy_profile,
        tenant::get_profile,
        tenant::dispose_profile,
        tenant::retry_profile,
        tenant::verify_profile,
        tenant::reconcile_profile,
        tenant::patch_profile,
        tenant::profile_history,
        tenant::profile_capability_calls,
        tenant::query_profiles,
        tenant::infrastructure::list_cells,
        tenant::infrastructure::create_cell,
        tenant::infrastructure::get_cell,
        tenant::infrastructure::delete_cell,
        tenant::infrastructure::patch_cell,
        tenant::infrastructure::drain_cell,
        tenant::infrastructure::get_drain,
        tenant::infrastructure::control_drain,
        tenant::infrastructure::plan_rebalance,
        tenant::infrastructure::list_rebalance_plans,
        tenant::infrastructure::get_rebalance_plan,
        tenant::infrastructure::control_rebalance_plan,
        tenant::rollouts::create_rollout,
        tenant::rollouts::list_rollouts,
        tenant::rollouts::get_rollout,
        tenant::rollouts::list_rollout_participants,
        tenant::rollouts::control_rollout,
        tenant::migrate_profile,
        tenant::list_migrations,
        tenant::infrastructure::list_dataspaces,
        tenant::infrastructure::create_dataspace,
        tenant::infrastructure::get_dataspace,
        tenant::infrastructure::delete_dataspace,
        tenant::infrastructure::deploy_dataspace,
        events::stream,
        provision::list_activities,
        provision::put_activity,
        provision::delete_activity,
        provision::list_orchestrations,
        provision::create_orchestration,
        provision::get_orchestration_definition,
        provision::delete_orchestration_definition,
        provision::add_orchestration_version,
        provision::list_orchestration_versions,
        provision::get_orchestration_version,
        provision::start_orchestration,
        provision::query_orchestrations,
        provision::get_orchestration,
        provision::cancel_orchestration,
    ),
    modifiers(&BearerTokens),
    security(("bearer" = []))
)]
/// The API's OpenAPI document, derived by utoipa; [`document`] serves it as JSON.
pub struct ApiDoc;

/// The JSON document, built once.
pub fn document() -> &'static str {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    JSON.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into()))
}

/// Declares bearer-token auth and the 401 and 403 answers every route can give.
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        let error = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in [
                    ("401", "Missing or invalid bearer token"),
                    ("403", "The token lacks the scope the route needs"),
                ] {
                    operation.responses.responses.insert(
                        status.to_string(),
                        ResponseBuilder::new()
                            .description(description)
                            .content("application/json", error())
                            .build()
                            .into(),
                    );
                }
            }
        }
    }
}
