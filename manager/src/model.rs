//! cfm's resources, in upstream CFM's JSON shapes (field names, omit-when-empty rules).
//!
//! These types are what the store returns and what the API sends; request bodies have
//! their own types in `api::requests`, so a client can never set an id or a version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::lifecycle::{
    DecommissionState, DrainState, MigrationState, OrchestrationState, PlanState, RolloutState,
    RolloutTargetState, StepState, VpaState,
};

/// Free-form JSON properties of a resource, queryable as `properties.<key>`.
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

/// An organisation whose participants cfm provisions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Tenant {
    /// The tenant's id, chosen by the server.
    pub id: String,
    /// Incremented on every change; sent back in `If-Match` to make a change conditional.
    pub version: i64,
    /// The tenant's own properties, set and removed by `PATCH`.
    #[schema(value_type = Object)]
    pub properties: Properties,
}

/// A shared runtime cluster participants are placed in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cell {
    /// The cell's id, chosen by the server.
    pub id: String,
    /// The version a conditional delete (`If-Match`) names.
    pub version: i64,
    /// The cluster's own id; unique among cells unless empty. Requests may name the cell by it.
    pub external_id: String,
    /// One of upstream's [`DEPLOYMENT_STATES`] or cfm's [`FLEET_CELL_STATES`]; only an
    /// `active` cell takes new participants.
    pub state: String,
    /// When the cell entered its state (RFC 3339).
    pub state_timestamp: String,
    /// Per-cell settings: handed to plugins with every VPA placed here, and
    /// `cfm.orchestrationDefinitionId` may select the template its participants deploy with.
    #[schema(value_type = Object)]
    pub properties: Properties,
    /// Labels placement matches requirements against (`region`, `tier`, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub labels: BTreeMap<String, String>,
    /// How many participants the cell takes; absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub capacity: Option<CellCapacity>,
    /// What the cell holds now, against its capacity. Computed, never stored.
    #[serde(default)]
    pub usage: CellUsage,
}

/// A cell's capacity.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellCapacity {
    /// The most participants (not disposed, plus those migrating in) the cell holds.
    pub max_participants: i64,
}

/// What a cell holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellUsage {
    /// Participants placed in the cell whose VPAs are not disposed.
    pub participants: i64,
    /// Participants being migrated into the cell: their place is reserved.
    pub arriving: i64,
    /// `(participants + arriving) / maxParticipants`; absent without a capacity.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub utilisation: Option<f64>,
}

impl CellUsage {
    /// The places taken: participants plus those arriving.
    pub fn taken(&self) -> i64 {
        self.participants + self.arriving
    }
}

/// How placement chooses among the cells that can take a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementPolicy {
    /// The least utilised cell (fewest participants where no capacity is set): load spreads.
    #[default]
    Spread,
    /// The most utilised cell that still has room: cells fill one after another.
    Pack,
}

impl std::str::FromStr for PlacementPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "spread" => Ok(Self::Spread),
            "pack" => Ok(Self::Pack),
            _ => Err(format!(
                "'{text}' is not a placement policy: spread or pack"
            )),
        }
    }
}

/// The property (of a participant profile or a dataspace profile) naming the cell labels
/// its participants need: `{"region": "eu"}`.
pub const REQUIRED_CELL_LABELS_PROPERTY: &str = "cfm.requiredCellLabels";

/// cfm's own cell states, beside upstream's [`DEPLOYMENT_STATES`]: `cordoned` takes no new
/// participants, `draining` has its participants moved out, `drained` is empty and takes none.
pub const FLEET_CELL_STATES: &[&str] = &["cordoned", "draining", "drained"];

/// Whether `state` is a cell state: one of upstream's or of [`FLEET_CELL_STATES`].
pub fn is_cell_state(state: &str) -> bool {
    DEPLOYMENT_STATES.contains(&state) || FLEET_CELL_STATES.contains(&state)
}

/// Lifecycle states of deployments (upstream's), which cells share.
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

/// What a dataspace asks of its participants.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataspaceSpec {
    /// The protocols of the dataspace, e.g. `dsp-2025-1`, `dcp-2025-1`; stored as given.
    #[serde(default)]
    pub protocol_stack: Vec<String>,
    /// The credentials participants of the dataspace need; deploys receive those that
    /// apply to the participant's roles as `cfm.vpa.credentials`.
    #[serde(default)]
    pub credential_specs: Vec<CredentialSpec>,
}

/// A verifiable credential participants of a dataspace request from an issuer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CredentialSpec {
    /// The credential's id, as requested from the issuer.
    #[serde(default)]
    pub id: String,
    /// The credential type, e.g. `MembershipCredential`.
    #[serde(default, rename = "type")]
    pub credential_type: String,
    /// The DID of the issuer that issues it; empty: any issuer.
    #[serde(default)]
    pub issuer: String,
    /// The format it is issued in, e.g. `vc20-bssl/jwt`.
    #[serde(default)]
    pub format: String,
    /// The participant role it is for; empty: every participant of the dataspace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
}

/// A dataspace's settings and credential specs, and the cells it is deployed to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataspaceProfile {
    /// The profile's id, chosen by the server.
    pub id: String,
    /// The profile's version; no route changes it.
    pub version: i64,
    /// What the dataspace asks of its participants.
    pub dataspace_spec: DataspaceSpec,
    /// Upstream's artifacts of the dataspace (references, as strings): kept as given.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub artifacts: Vec<String>,
    /// The cells the dataspace is deployed to: only those take its participants.
    pub deployments: Vec<DataspaceDeployment>,
    /// The profile's own properties; `cfm.orchestrationDefinitionId` selects the template
    /// its participants deploy with.
    #[serde(skip_serializing_if = "Map::is_empty", default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
}

/// A dataspace profile's deployment to one cell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataspaceDeployment {
    /// The deployment's id, chosen by the server.
    pub id: String,
    /// The deployment's version; no route changes it.
    pub version: i64,
    /// `active` from creation, and no route changes it; the cell takes the dataspace's
    /// participants only while it is.
    pub state: String,
    /// When the deployment entered its state (RFC 3339).
    pub state_timestamp: String,
    /// The cell's id.
    pub cell_id: String,
    /// The cell's external id.
    pub external_cell_id: String,
}

/// A participant of a tenant: its DID, its roles, and the VPAs provisioned for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantProfile {
    /// The profile's id, chosen by the server; also the participant context id plugins see.
    pub id: String,
    /// Incremented whenever the VPAs change state.
    pub version: i64,
    /// The participant's DID.
    pub identifier: String,
    /// The tenant the participant belongs to.
    pub tenant_id: String,
    /// Dataspace profile id → the participant's roles there (an array of strings).
    #[schema(value_type = Object)]
    pub participant_roles: Map<String, Value>,
    /// The dataspaces the participant joined: those its deployment named, or, when it named
    /// none, those deployed to its cell (every one, when none is), as upstream derives them.
    #[serde(default)]
    pub dataspace_profile_ids: Vec<String>,
    /// The participant's four VPAs, one of each type, all in one cell.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub vpas: Vec<Vpa>,
    /// The client's properties; once deployed also `cfm.vpa.state`, the deploy's output.
    #[serde(skip_serializing_if = "Map::is_empty", default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
    /// Whether one of the participant's orchestrations failed; stays set once it is.
    pub error: bool,
    /// Why the last failed orchestration failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_detail: Option<String>,
    /// The move to another cell under way, if one is (on reads of one profile).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub migration: Option<Migration>,
    /// A change of VPA properties asked for and being applied (VPA type → the properties
    /// it will have); the VPAs show the properties applied so far.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<Object>)]
    pub pending_vpa_properties: Option<Map<String, Value>>,
    /// The orchestration definition the participant was provisioned with.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub template_id: Option<String>,
    /// Which version of it: the deploy's, then each completed upgrade's.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub template_version: Option<i64>,
    /// The plugins that provisioned the participant: for each activity type, the one
    /// that last ran it. Sorted by activity type.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub plugin_digests: Vec<PluginDigest>,
    /// What the last verify (or reconcile) of the participant found; absent before the first.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub drift: Option<Drift>,
    /// How many verifies found the participant drifted.
    #[serde(default)]
    pub drift_count: i64,
}

/// Whether a participant's effects in its backends are as its provisioning left them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// Where the last check stands.
    pub state: DriftState,
    /// When it started.
    pub checked_at: String,
    /// The verify orchestration that checked.
    pub verify_id: String,
    /// The reconcile orchestration that repaired what drifted, once one started.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reconcile_id: Option<String>,
    /// The activities whose effects differ, or which could not be checked.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub activities: Vec<ActivityDrift>,
    /// Why the verify or the repair failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
}

/// Where a participant's drift check stands: `verifying` → `in-sync` or `drifted`, a
/// drifted one being reconciled `repairing` → `repaired` or `repair-failed`; `unverified`
/// when the verify itself failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DriftState {
    /// The verify runs.
    Verifying,
    /// Every checked effect is as provisioned.
    InSync,
    /// Some effect differs, and no repair was asked for.
    Drifted,
    /// What drifted is being re-applied.
    Repairing,
    /// What drifted was re-applied.
    Repaired,
    /// Re-applying what drifted failed; `detail` says why.
    RepairFailed,
    /// The verify failed; `detail` says why.
    Unverified,
}

impl DriftState {
    /// The stored (and queried) form.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftState::Verifying => "verifying",
            DriftState::InSync => "in-sync",
            DriftState::Drifted => "drifted",
            DriftState::Repairing => "repairing",
            DriftState::Repaired => "repaired",
            DriftState::RepairFailed => "repair-failed",
            DriftState::Unverified => "unverified",
        }
    }
}

/// What a verify found of one activity's effects.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityDrift {
    /// The activity's id in the template.
    pub activity_id: String,
    /// Its activity type.
    pub activity_type: String,
    /// Each write its verify would have made (`{capability, operation, target, change}`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    #[schema(value_type = Vec<Object>)]
    pub findings: Vec<Value>,
    /// Why its plugin could not check it, when it could not.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unverified: Option<String>,
}

/// Which plugin ran an activity type for a participant.
#[derive(
    Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct PluginDigest {
    /// The activity type.
    pub activity_type: String,
    /// The sha256 of the plugin's component file, lowercase hex.
    pub sha256: String,
}

/// A virtual participant agent: one of the participant's runtime roles in a cell.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Vpa {
    /// The VPA's id, chosen by the server.
    pub id: String,
    /// Incremented on every state change.
    pub version: i64,
    /// Where the VPA is in its lifecycle; all four of a participant move together.
    pub state: VpaState,
    /// When the VPA entered its state (RFC 3339).
    pub state_timestamp: String,
    /// `cfm.connector`, `cfm.credentialservice`, `cfm.dataplane` or `cfm.issuer`.
    #[serde(rename = "type")]
    pub vpa_type: String,
    /// The cell the VPA runs in.
    pub cell_id: String,
    /// The properties the deploy request gave this VPA type (`vpaProperties`).
    #[serde(skip_serializing_if = "Map::is_empty", default)]
    #[schema(value_type = Object)]
    pub properties: Properties,
}

/// An activity type templates may use, and the data it needs and produces.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityDefinition {
    /// The activity type: dot-separated tokens, since it names the queue topic its work
    /// travels on; agent hosts run it with the plugin configured for it.
    #[serde(rename = "type")]
    #[schema(pattern = r"^[a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*$")]
    pub activity_type: String,
    /// What the activity does, for people.
    #[serde(default)]
    pub description: String,
    /// A JSON Schema of its input: the keys it lists as `required` must be in the base
    /// data or produced by an activity it depends on.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub input_schema: Value,
    /// A JSON Schema of its output: its `properties` are the keys it produces for later
    /// activities.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub output_schema: Value,
}

fn first_version() -> i64 {
    1
}

/// An orchestration template: activities per orchestration type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrchestrationDefinition {
    /// The definition's id, chosen by the server; `cfm.orchestrationDefinitionId` names it.
    pub id: String,
    /// 1 when created, one more with each new version; the id names the newest.
    #[serde(default = "first_version")]
    pub version: i64,
    /// What the template provisions, for people.
    #[serde(default)]
    pub description: String,
    /// Upstream's schema field: stored and returned as given.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub schema: Value,
    /// Orchestration type (`cfm.orchestration.vpa.deploy`, ...) → its activities, a DAG
    /// through their `dependsOn`.
    pub activities: std::collections::BTreeMap<String, Vec<ActivitySpec>>,
}

/// One activity of an orchestration template.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivitySpec {
    /// The activity's id, unique within its orchestration type.
    pub id: String,
    /// The activity type that runs it; its activity definition must exist.
    #[serde(rename = "type")]
    pub activity_type: String,
    /// Ids of the activities that must complete before this one is dispatched.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// One run of an orchestration template's activities for one orchestration type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Orchestration {
    /// The orchestration's id, chosen by the server.
    pub id: String,
    /// What it works on: the participant profile's id for deploys and disposes.
    pub correlation_id: String,
    /// The template it runs.
    pub definition_id: String,
    /// Which version of it.
    #[serde(default = "first_version")]
    pub definition_version: i64,
    /// 0 initialized, 1 running, 2 completed, 3 errored (upstream's numbers).
    pub state: i64,
    /// When it entered its state (RFC 3339).
    pub state_timestamp: String,
    /// When it was started (RFC 3339).
    pub created_timestamp: String,
    /// Which of the template's activity lists runs (`cfm.orchestration.vpa.deploy`, ...).
    pub orchestration_type: String,
    /// Its activities, in the template's order.
    pub steps: Vec<Step>,
    /// The base data merged with every completed activity's output: what the next
    /// activities receive.
    #[schema(value_type = Object)]
    pub processing_data: Properties,
    /// The completed activities' outputs alone.
    #[schema(value_type = Object)]
    pub output_data: Properties,
    /// Activity id → true for every completed activity (upstream's shape).
    #[schema(value_type = Object)]
    pub completed: Map<String, Value>,
    /// Why it errored: which activity failed and how, or who cancelled it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_detail: Option<String>,
}

/// One activity of a running orchestration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// The activity's id in the template.
    pub id: String,
    /// The activity type that runs it.
    #[serde(rename = "type")]
    pub activity_type: String,
    /// Ids of the activities that complete before this one is dispatched.
    pub depends_on: Vec<String>,
    /// Where the step is.
    pub state: StepState,
    /// The number of its latest attempt: 0 before it is dispatched, 1 on the first, one
    /// more for every retry or reschedule.
    pub attempts: i64,
    /// The reason of its latest retry or failure.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error: Option<String>,
    /// When it was first dispatched (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub started_timestamp: Option<String>,
    /// When it completed, failed or was cancelled (RFC 3339).
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

/// A fresh random id (UUID v4) for a new resource.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A fresh id for a participant profile, which is also its participant context id: a UUID
/// v4 as 32 lowercase hex digits, the form upstream's participant contexts take, so it is
/// a path segment, a DNS label and a Kubernetes name alike.
pub fn new_participant_context_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A move of a participant from one cell to another, make-before-break.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    /// The migration's id, chosen by the server.
    pub id: String,
    /// The participant profile that moves.
    pub profile_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// The cell it leaves.
    pub source_cell_id: String,
    /// The cell it moves to.
    pub target_cell_id: String,
    /// Where the move stands.
    pub state: MigrationState,
    /// The drain that started it, if one did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub drain_id: Option<String>,
    /// Why provisioning, rollback or cleanup failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_detail: Option<String>,
    /// When it started (RFC 3339).
    pub created_at: String,
    /// When its state last changed (RFC 3339).
    pub updated_at: String,
}

/// The draining of a cell, with its progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drain {
    /// The drain's id, chosen by the server.
    pub id: String,
    /// Incremented on every change of state.
    pub version: i64,
    /// The cell being drained.
    pub cell_id: String,
    /// Where the drain stands.
    pub state: DrainState,
    /// How many of its migrations run at once.
    pub parallelism: i64,
    /// Participants in the cell when the drain started.
    pub total: i64,
    /// Participants it has moved out.
    pub moved: i64,
    /// Its migrations under way.
    pub in_flight: i64,
    /// Its migrations that failed and left their participant in the cell.
    pub failed: i64,
    /// Participants still placed in the cell (not disposed).
    pub remaining: i64,
    /// What holds it up, when something does (no cell has room, participants that cannot move).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
    /// When it started (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

/// The utilisation a rebalance aims every cell at: `min ≤ utilisation ≤ max`, as
/// fractions of each cell's `maxParticipants`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UtilisationBand {
    /// The least utilisation a cell should have, 0 to 1.
    pub min: f64,
    /// The most utilisation a cell should have, `min` to 1.
    pub max: f64,
}

/// A cell as a rebalance plan found it, and as the plan leaves it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedCell {
    /// The cell's id.
    pub cell_id: String,
    /// The cell's version when planned: a changed cell makes the plan stale.
    pub version: i64,
    /// Its `maxParticipants`.
    pub max_participants: i64,
    /// Places taken when planned (participants plus those arriving).
    pub participants: i64,
    /// Places taken once the plan's moves are done.
    pub planned: i64,
    /// `participants / maxParticipants`.
    pub utilisation: f64,
    /// `planned / maxParticipants`.
    pub planned_utilisation: f64,
}

/// One participant a rebalance plan moves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedMove {
    /// The participant profile.
    pub profile_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// The cell it leaves.
    pub source_cell_id: String,
    /// The cell it goes to.
    pub target_cell_id: String,
    /// `planned`, `skipped` (not started: why in `detail`), or the state of the
    /// migration it started (`provisioning`, `switched`, `completed`, `rolled-back`, ...).
    pub state: String,
    /// The migration the move started.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub migration_id: Option<String>,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
}

/// How far a rebalance plan's execution has got.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanProgress {
    /// Moves whose participant is in its target cell.
    pub moved: i64,
    /// Moves whose migration is under way.
    pub in_flight: i64,
    /// Moves whose migration failed (the participant stayed in its source).
    pub failed: i64,
    /// Moves not started: the participant or target changed meanwhile.
    pub skipped: i64,
    /// Moves not started yet.
    pub remaining: i64,
}

/// Moves that bring every cell's utilisation within a band: computed as a dry run,
/// stored, executed on request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebalancePlan {
    /// The plan's id, chosen by the server.
    pub id: String,
    /// Incremented on every change of state.
    pub version: i64,
    /// Where the plan stands.
    pub state: PlanState,
    /// The utilisation aimed at.
    pub band: UtilisationBand,
    /// How many of its migrations run at once.
    pub parallelism: i64,
    /// The cells weighed: active cells with a capacity.
    pub cells: Vec<PlannedCell>,
    /// The moves, in the order they start.
    pub moves: Vec<PlannedMove>,
    /// Cells left out: not active, or without a capacity (so without a utilisation).
    pub excluded_cells: Vec<crate::error::CellRefusal>,
    /// Cells the plan leaves outside the band, and why no move helps.
    pub unresolved_cells: Vec<crate::error::CellRefusal>,
    /// How far execution has got.
    pub progress: PlanProgress,
    /// Why it stops short of the band (cut short), was refused as stale, or how it
    /// ended.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
    /// When it was computed (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// After this, executing it is refused as stale (RFC 3339).
    pub expires_at: String,
}

/// How many failed upgrades a rollout tolerates before it pauses itself.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum FailureBudget {
    /// This many participants.
    Count(i64),
    /// This share of the selected participants, 0 to 100 (rounded down).
    Percent(f64),
}

/// Bringing the participants a selector picks to another version of their template, in
/// batches, with its progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The rollout's id, chosen by the server.
    pub id: String,
    /// Incremented on every change of state.
    pub version: i64,
    /// The orchestration definition whose participants it upgrades.
    pub template_id: String,
    /// The version it brings them to.
    pub target_version: i64,
    /// The predicate that selected the participants (over participant profiles).
    pub selector: String,
    /// Participants per batch: a batch starts when the one before it has finished.
    pub batch_size: i64,
    /// Upgrades that run at once, at most.
    pub max_parallel: i64,
    /// Failed upgrades tolerated, as asked.
    pub failure_budget: FailureBudget,
    /// The budget in participants.
    pub max_failures: i64,
    /// The wait between two batches, in milliseconds.
    pub pause_between_batches_ms: i64,
    /// Where the rollout stands.
    pub state: RolloutState,
    /// Participants selected.
    pub total: i64,
    /// The batch being worked on (from 0).
    pub batch: i64,
    /// Upgrades failed since it started or was last resumed: what the budget counts.
    pub failures: i64,
    /// Participants per state.
    pub progress: RolloutProgress,
    /// Why it paused or failed, when it did by itself.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

/// A rollout's participants per state.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutProgress {
    /// Not started yet.
    pub pending: i64,
    /// Upgrades under way.
    pub upgrading: i64,
    /// On the target version.
    pub upgraded: i64,
    /// Upgrades that failed (the participant stays on its old version).
    pub failed: i64,
    /// Left out: no longer qualifying, or the rollout was aborted first.
    pub skipped: i64,
}

/// One participant of a rollout: how its upgrade went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutTarget {
    /// The participant profile.
    pub profile_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its batch (from 0).
    pub batch: i64,
    /// Where its upgrade stands.
    pub state: RolloutTargetState,
    /// The template version it was on when its upgrade started.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from_version: Option<i64>,
    /// The upgrade orchestration (the latest, after a retry).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub orchestration_id: Option<String>,
    /// Upgrades started for it.
    pub attempts: i64,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

/// Decommissioning a tenant: its participants disposed, a few at a time, then the tenant
/// deleted; with its progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantDecommission {
    /// The decommission's id, chosen by the server.
    pub id: String,
    /// Incremented on every change of state.
    pub version: i64,
    /// The tenant.
    pub tenant_id: String,
    /// Where it stands.
    pub state: DecommissionState,
    /// Disposes that run at once, at most.
    pub parallelism: i64,
    /// Participants not yet disposed when it started.
    pub total: i64,
    /// Participants still to dispose (not `disposed`), counting those being disposed.
    pub remaining: i64,
    /// Participants being disposed now.
    pub disposing: i64,
    /// Why it failed (which participants could not be disposed, and why), or what it
    /// waits for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
    /// When it started (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

/// One orchestration of a participant's history: what ran, from which template version,
/// and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The orchestration's id: `GET /orchestrations/{id}` has its steps.
    pub orchestration_id: String,
    /// Deploy, upgrade, update, verify, reconcile, migrate (and its phases), dispose, keypair
    /// events.
    pub orchestration_type: String,
    /// The template it ran.
    pub definition_id: String,
    /// Which version of it.
    pub definition_version: i64,
    /// Upstream's number: 1 running, 2 completed, 3 errored.
    pub state: i64,
    /// When it started (RFC 3339).
    pub created_timestamp: String,
    /// When it last changed state (RFC 3339).
    pub state_timestamp: String,
    /// Why it errored.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_detail: Option<String>,
}
