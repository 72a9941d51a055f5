//! Request bodies as clients send them. Server-owned fields (`id`, `version`, states
//! and timestamps) are not part of these types, so a client can never set them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::model::{ActivitySpec, CellCapacity, DataspaceSpec, Properties, UtilisationBand};

/// A tenant to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewTenant {
    /// The tenant's own properties.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
}

/// A change to a tenant's properties: keys set, then keys removed.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TenantPatch {
    /// Keys to set, replacing their values; the others stay.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
    /// Keys to remove, after the ones set.
    #[serde(default)]
    pub removed: Vec<String>,
    /// The version the client read; a stale one is a conflict.
    pub version: Option<i64>,
}

/// A change to a participant profile: its VPAs' properties.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfilePatch {
    /// VPA type → the properties to set (a null value removes the key); the others stay.
    #[schema(value_type = Object)]
    pub vpa_properties: Map<String, Value>,
    /// The version the client read; a stale one is a conflict (as `If-Match`).
    pub version: Option<i64>,
}

/// A cell to register.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewCell {
    /// The cluster's own id; unique among cells unless empty.
    #[serde(default)]
    pub external_id: String,
    /// `initial`, `pending`, `active`, `disposing`, `disposed`, `locked`, `offline`,
    /// `error` or `cordoned`; `active` when absent. `PATCH` changes it later.
    pub state: Option<String>,
    /// When the cell entered its state (RFC 3339), as the client knows it; now when absent.
    pub state_timestamp: Option<String>,
    /// Per-cell settings, handed to plugins with every VPA placed in the cell.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
    /// Labels placement requirements match (`{"region": "eu"}`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How many participants the cell takes; absent: no limit.
    pub capacity: Option<CellCapacity>,
}

/// A change to a cell: what is present is set, the rest stays.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CellPatch {
    /// The new state: `active`, `cordoned` (takes no new participants), or another of
    /// upstream's states; `draining` and `drained` belong to `POST /cells/{id}/drain`.
    pub state: Option<String>,
    /// Labels to set, replacing their values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Label keys to remove, after those set.
    #[serde(default)]
    pub removed_labels: Vec<String>,
    /// The new capacity, `{"maxParticipants": 100}`; `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CellCapacity>)]
    pub capacity: Option<Option<CellCapacity>>,
    /// Properties to set, replacing their values.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
    /// Property keys to remove, after those set.
    #[serde(default)]
    pub removed_properties: Vec<String>,
    /// The version the client read; a stale one is a conflict.
    pub version: Option<i64>,
}

/// Tells a field sent as `null` (Some(None)) from one left out (None).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Moves a participant to another cell.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewMigration {
    /// The cell to move to, by id or external id.
    pub target_cell_id: String,
}

/// Drains a cell.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewDrain {
    /// How many migrations run at once, 1 to 256; 4 when absent.
    pub parallelism: Option<i64>,
}

/// Decommissions a tenant.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewDecommission {
    /// How many participants are disposed at once, 1 to 256; 8 when absent.
    pub parallelism: Option<i64>,
}

/// Plans a rebalance.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewRebalancePlan {
    /// The utilisation to bring every cell within; the fleet's mean ± 0.1 when absent.
    pub band: Option<UtilisationBand>,
    /// Only these cells (ids or external ids) are weighed and moved between; every cell
    /// when absent.
    pub cell_ids: Option<Vec<String>>,
    /// How many migrations run at once when it is executed, 1 to 256; 4 when absent.
    pub parallelism: Option<i64>,
}

/// A dataspace profile to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewDataspaceProfile {
    /// What the dataspace asks of its participants.
    #[serde(default)]
    pub dataspace_spec: DataspaceSpec,
    /// Upstream's artifacts of the dataspace: kept and returned as given.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// The profile's own properties; `cfm.orchestrationDefinitionId` selects the template
    /// its participants deploy with.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
}

/// A deployment of a dataspace profile to a cell.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewDataspaceDeployment {
    /// Upstream sends the profile id in the body too; the path's id is authoritative.
    #[serde(default)]
    #[allow(dead_code)]
    pub profile_id: String,
    /// The cell, by id or external id; an unknown one is a 400.
    pub cell_id: String,
}

/// A participant to onboard: its profile is created and its VPAs deployed.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewParticipantProfileDeployment {
    /// The participant's DID.
    #[schema(pattern = r"^did:[a-z0-9]+:\S+$")]
    pub identifier: String,
    /// The cell asked for, by id or external id. It must be active and serve one of the
    /// dataspace profiles; an unknown id falls back to placement in the least loaded cell.
    pub cell_id: Option<String>,
    /// The dataspaces the participant joins.
    #[serde(default)]
    pub dataspace_profile_ids: Vec<String>,
    /// Dataspace profile id → the participant's roles there (an array of strings): which
    /// of that dataspace's credential specs apply to it.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub participant_roles: Map<String, Value>,
    /// VPA type (`cfm.connector`, ...) → the properties that VPA starts with.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vpa_properties: Map<String, Value>,
    /// The profile's own properties.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
}

/// A query: a predicate and the page of matches wanted.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryRequest {
    /// A predicate such as `identifier LIKE '%provider%'`; empty matches everything.
    #[serde(default)]
    pub predicate: String,
    /// Results to skip.
    #[serde(default)]
    pub offset: i64,
    /// Page size; 0 or over 10000 means 10000.
    #[serde(default)]
    pub limit: i64,
}

impl QueryRequest {
    /// The page asked for (0 or over the maximum means the maximum).
    pub fn page(&self) -> crate::store::Page {
        crate::store::Page::new(Some(self.offset), Some(self.limit))
    }
}

/// An orchestration to start now, as upstream's tenant manager sends it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrchestrationManifest {
    /// The orchestration's id, the client's: a second manifest with it starts nothing.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    pub id: String,
    /// Whom it is for (a participant profile's id); also the participant context id when
    /// the payload names none.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    pub correlation_id: String,
    /// Which activity list runs (`cfm.orchestration.vpa.deploy`, ...), from the newest
    /// definition that defines it.
    pub orchestration_type: String,
    /// Base data: `cfm.participant.id` (required), `cfm.vpa.data`, `cfm.vpa.credentials`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Map<String, Value>,
}

/// An orchestration template to create; it is validated as a whole.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewOrchestrationDefinition {
    /// The template's id (upstream's templateRef), kept as given; chosen by the server when
    /// absent. 1 to 128 letters, digits, `.`, `_`, `-` or `:`.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    pub id: Option<String>,
    /// What the template provisions, for people.
    #[serde(default)]
    pub description: String,
    /// Upstream's schema field: stored and returned as given.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub schema: Value,
    /// Orchestration type (`cfm.orchestration.vpa.deploy`, ...) → its activities: known
    /// types, unique ids, known dependencies, no cycles, every required input available.
    pub activities: BTreeMap<String, Vec<ActivitySpec>>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}
