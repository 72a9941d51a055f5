//! Request bodies as clients send them. Server-owned fields (`id`, `version`, states
//! and timestamps) are not part of these types, so a client can never set them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::model::{ActivitySpec, DataspaceSpec, Properties};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewTenant {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TenantPatch {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
    #[serde(default)]
    pub removed: Vec<String>,
    /// The version the client read; a stale one is a conflict.
    pub version: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewCell {
    #[serde(default)]
    pub external_id: String,
    pub state: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewDataspaceProfile {
    #[serde(default)]
    pub dataspace_spec: DataspaceSpec,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewDataspaceDeployment {
    /// Upstream sends the profile id in the body too; the path's id is authoritative.
    #[serde(default)]
    #[allow(dead_code)]
    pub profile_id: String,
    pub cell_id: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewParticipantProfileDeployment {
    /// The participant's DID.
    #[schema(pattern = r"^did:[a-z0-9]+:\S+$")]
    pub identifier: String,
    pub cell_id: Option<String>,
    #[serde(default)]
    pub dataspace_profile_ids: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub participant_roles: Map<String, Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vpa_properties: Map<String, Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
}

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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewOrchestrationDefinition {
    #[serde(default)]
    pub description: String,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub schema: Value,
    pub activities: BTreeMap<String, Vec<ActivitySpec>>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}
