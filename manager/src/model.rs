//! cfm's resources, in upstream CFM's JSON shapes (field names, omit-when-empty rules).
//!
//! These types are what the store returns and what the API sends; request bodies have
//! their own types in `api::requests`, so a client can never set an id or a version.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub type Properties = Map<String, Value>;

/// The four VPA types every participant profile gets, in upstream's order.
pub const VPA_TYPES: [&str; 4] = [
    "cfm.connector",
    "cfm.credentialservice",
    "cfm.dataplane",
    "cfm.issuer",
];

/// The profile property that holds the deploy orchestration's output.
pub const VPA_STATE_PROPERTY: &str = "cfm.vpa.state";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Tenant {
    pub id: String,
    pub version: i64,
    #[schema(value_type = Object)]
    pub properties: Properties,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cell {
    pub id: String,
    pub version: i64,
    pub external_id: String,
    pub state: String,
    pub state_timestamp: String,
    #[schema(value_type = Object)]
    pub properties: Properties,
}

/// Lifecycle states of cells and deployments.
pub const DEPLOYMENT_STATES: &[&str] = &[
    "initial",
    "pending",
    "active",
    "disposing",
    "disposed",
    "locked",
    "offline",
    "error",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataspaceSpec {
    #[serde(default)]
    pub protocol_stack: Vec<String>,
    #[serde(default)]
    pub credential_specs: Vec<CredentialSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CredentialSpec {
    #[serde(default)]
    pub id: String,
    #[serde(default, rename = "type")]
    pub credential_type: String,
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub format: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataspaceProfile {
    pub id: String,
    pub version: i64,
    pub dataspace_spec: DataspaceSpec,
    pub deployments: Vec<DataspaceDeployment>,
    #[serde(skip_serializing_if = "Map::is_empty", default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataspaceDeployment {
    pub id: String,
    pub version: i64,
    pub state: String,
    pub state_timestamp: String,
    pub cell_id: String,
    pub external_cell_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantProfile {
    pub id: String,
    pub version: i64,
    pub identifier: String,
    pub tenant_id: String,
    #[schema(value_type = Object)]
    pub participant_roles: Map<String, Value>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub vpas: Vec<Vpa>,
    #[serde(skip_serializing_if = "Map::is_empty", default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
    pub error: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_detail: Option<String>,
}

/// A virtual participant agent: one of the participant's runtime roles in a cell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Vpa {
    pub id: String,
    pub version: i64,
    pub state: String,
    pub state_timestamp: String,
    #[serde(rename = "type")]
    pub vpa_type: String,
    pub cell_id: String,
    #[serde(skip_serializing_if = "Map::is_empty", default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityDefinition {
    #[serde(rename = "type")]
    #[schema(pattern = r"^[a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*$")]
    pub activity_type: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub input_schema: Value,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub output_schema: Value,
}

/// An orchestration template: activities per orchestration type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrchestrationDefinition {
    pub id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub schema: Value,
    pub activities: std::collections::BTreeMap<String, Vec<ActivitySpec>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivitySpec {
    pub id: String,
    #[serde(rename = "type")]
    pub activity_type: String,
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// Orchestration states, numbered as upstream numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrchestrationState {
    Initialized = 0,
    Running = 1,
    Completed = 2,
    Errored = 3,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Orchestration {
    pub id: String,
    pub correlation_id: String,
    pub definition_id: String,
    pub state: i64,
    pub state_timestamp: String,
    pub created_timestamp: String,
    pub orchestration_type: String,
    pub steps: Vec<Step>,
    #[schema(value_type = Object)]
    pub processing_data: Properties,
    #[schema(value_type = Object)]
    pub output_data: Properties,
    /// Activity id → true for every completed activity (upstream's shape).
    #[schema(value_type = Object)]
    pub completed: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_detail: Option<String>,
}

/// One activity of a running orchestration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub id: String,
    #[serde(rename = "type")]
    pub activity_type: String,
    pub depends_on: Vec<String>,
    /// pending | dispatched | completed | failed
    pub state: String,
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub started_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub completed_timestamp: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// Now, as the RFC 3339 UTC timestamp every resource carries.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
