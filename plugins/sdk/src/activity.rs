//! The typed view of one activity invocation and the [`Plugin`] trait.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{ActivityRequest, ActivityResult, Error, Reschedule};

/// Well-known processing-data keys.
pub mod keys {
    /// The VPAs being provisioned: an array of [`Vpa`](crate::Vpa).
    pub const VPA_DATA: &str = "cfm.vpa.data";
    /// The dataspace profiles' credential specs (`id`, `type`, `issuer`, `format`).
    pub const VPA_CREDENTIALS: &str = "cfm.vpa.credentials";
    /// Output of the vault plugin: where the participant's API key is stored.
    pub const CREDENTIAL_PATH: &str = "credentialPath";
    /// A migration's cells and phase: read it with [`Activity::migration`](crate::Activity::migration).
    pub const MIGRATION: &str = "cfm.migration";
    /// An upgrade's versions: read it with [`Activity::upgrade`](crate::Activity::upgrade).
    pub const UPGRADE: &str = "cfm.upgrade";
}

/// Where a verify's output lists the drift the plugin found itself (see [`Outcome::drifted`]).
const DRIFT: &str = "cfm.drift";
/// Set by an agent host that dry-runs a verify's writes.
const DRY_RUN: &str = "cfm.dryRun";
/// Where a verify's output says why the activity could not be checked.
const UNVERIFIED: &str = "cfm.unverified";

/// Provisions a migrating participant in its target cell (the plugin's deploy runs).
pub const MIGRATE: &str = "cfm.orchestration.vpa.migrate";
/// Disposes of what a migrated participant left in its source cell (dispose runs).
pub const MIGRATE_SOURCE: &str = "cfm.orchestration.vpa.migrate.source";
/// Disposes of what a failed migration made in its target cell (dispose runs).
pub const MIGRATE_ROLLBACK: &str = "cfm.orchestration.vpa.migrate.rollback";
/// Brings an active participant to another version of its template: a plugin's deploy
/// runs again (it must be idempotent), with [`Activity::upgrade`] saying the versions.
pub const UPGRADE: &str = "cfm.orchestration.vpa.upgrade";

/// Applies a change of a participant's VPA properties (its sizing): a plugin's deploy
/// runs again with the new VPA data.
pub const UPDATE: &str = "cfm.orchestration.vpa.update";

/// Checks that a participant's effects exist and match, changing nothing: the host runs
/// every write capability as a dry run that reports drift instead of writing, and refuses
/// outbound requests other than reads. [`Plugin::verify`] serves it; by default it is the
/// plugin's deploy, whose idempotent writes then say what differs.
pub const VERIFY: &str = "cfm.orchestration.vpa.verify";

/// Repairs what a verify found drifted: a plugin's deploy runs again.
pub const RECONCILE: &str = "cfm.orchestration.vpa.reconcile";

/// An upgrade as an activity sees it: the processing data holds what provisioned the
/// participant so far (the deploy's outputs among them).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Upgrade {
    /// The orchestration definition (template) the participant runs.
    pub template_id: String,
    /// The version it is on until this upgrade completes.
    pub from_version: i64,
    /// The version this upgrade brings it to.
    pub to_version: i64,
    /// The rollout that started it, when one did.
    #[serde(default)]
    pub rollout_id: Option<String>,
}

/// Which part of a migration an activity runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationPhase {
    /// Provisioning the target cell; the participant still lives in the source.
    Target,
    /// The participant lives in the target now; cleaning up the source.
    Source,
    /// Provisioning the target failed; undoing it. The participant stays in the source.
    Rollback,
}

/// One of a migration's two cells.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationCell {
    /// The cell's id.
    pub cell_id: String,
    /// Its externally visible id, when it has one.
    #[serde(default)]
    pub external_cell_id: Option<String>,
    /// Its properties: per-cell service endpoints.
    #[serde(default)]
    pub cell_properties: Option<Map<String, Value>>,
}

impl MigrationCell {
    /// The cell property `name` as text, if the cell has it.
    pub fn cell_property(&self, name: &str) -> Option<&str> {
        self.cell_properties.as_ref()?.get(name)?.as_str()
    }
}

/// A migration as an activity sees it: the VPA data names the cell it acts on (the
/// target in the `target` and `rollback` phases, the source in the `source` phase).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Migration {
    /// The migration's id.
    pub id: String,
    /// Which part this activity runs.
    pub phase: MigrationPhase,
    /// The cell the participant leaves.
    pub source: MigrationCell,
    /// The cell it moves to.
    pub target: MigrationCell,
}

impl Migration {
    /// The cell this activity acts on.
    pub fn acting(&self) -> &MigrationCell {
        match self.phase {
            MigrationPhase::Source => &self.source,
            MigrationPhase::Target | MigrationPhase::Rollback => &self.target,
        }
    }

    /// The migration's other cell: where the participant lives (or will) when this
    /// activity's cell is being emptied, so that a backend both share is left alone.
    pub fn other(&self) -> &MigrationCell {
        match self.phase {
            MigrationPhase::Source => &self.target,
            MigrationPhase::Target | MigrationPhase::Rollback => &self.source,
        }
    }
}

/// Settings type for plugins that take none: accepts any settings table.
pub type NoSettings = serde::de::IgnoredAny;

/// The orchestration types a built-in plugin serves, from `request.discriminator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `cfm.orchestration.vpa.deploy`
    Deploy,
    /// `cfm.orchestration.vpa.dispose`
    Dispose,
    /// `cfm.orchestration.vpa.verify`: a deploy whose writes are dry runs.
    Verify,
    /// Any other orchestration type (a lifecycle event's, say), named by the request's
    /// discriminator: served only by plugins that implement [`Plugin::other`].
    Other,
}

impl Operation {
    /// Maps a discriminator onto an operation; anything else is fatal because
    /// redelivering it will not make the plugin understand it.
    pub fn from_discriminator(discriminator: &str) -> Result<Self, Error> {
        match discriminator {
            "cfm.orchestration.vpa.deploy" | MIGRATE | UPGRADE | UPDATE | RECONCILE => {
                Ok(Operation::Deploy)
            }
            VERIFY => Ok(Operation::Verify),
            "cfm.orchestration.vpa.dispose" | MIGRATE_SOURCE | MIGRATE_ROLLBACK => {
                Ok(Operation::Dispose)
            }
            other => Err(Self::unsupported(other)),
        }
    }

    /// The failure for an orchestration type a plugin does not serve.
    pub fn unsupported(discriminator: &str) -> Error {
        Error::Fatal(format!(
            "unsupported orchestration type '{discriminator}': expected \
             cfm.orchestration.vpa.deploy or cfm.orchestration.vpa.dispose"
        ))
    }
}

/// One virtual participant agent from `cfm.vpa.data`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Vpa {
    /// The VPA's id.
    #[serde(default)]
    pub id: String,
    /// What kind of agent this is (for example a connector or credential service).
    pub vpa_type: String,
    /// The cell the VPA runs in.
    #[serde(default)]
    pub cell_id: String,
    /// The cell's externally visible id, when it differs from `cell_id`.
    #[serde(default)]
    pub external_cell_id: Option<String>,
    /// Free-form properties.
    #[serde(default)]
    pub properties: Option<Map<String, Value>>,
    /// The properties of the cell the VPA runs in: where per-cell service endpoints live.
    #[serde(default)]
    pub cell_properties: Option<Map<String, Value>>,
}

impl Vpa {
    /// The cell property `name` as text, if the cell has it.
    pub fn cell_property(&self, name: &str) -> Option<&str> {
        self.cell_properties.as_ref()?.get(name)?.as_str()
    }

    /// The first of `vpas`, whose cell hosts the participant. Fatal when there is
    /// none: a deploy without VPAs has nothing to place.
    pub fn primary(vpas: &[Vpa]) -> Result<&Vpa, Error> {
        vpas.first().ok_or_else(|| {
            Error::Fatal(format!(
                "processing data has no VPA in '{}'",
                keys::VPA_DATA
            ))
        })
    }
}

/// A request with its JSON inputs parsed, handed to [`Plugin::deploy`] and
/// [`Plugin::dispose`].
#[derive(Debug)]
pub struct Activity<S> {
    request: ActivityRequest,
    operation: Operation,
    settings: S,
    data: Map<String, Value>,
}

impl<S: DeserializeOwned> Activity<S> {
    /// Parses the request's discriminator, settings and processing data.
    pub fn parse(request: ActivityRequest) -> Result<Self, Error> {
        let operation =
            Operation::from_discriminator(&request.discriminator).unwrap_or(Operation::Other);
        let settings = parse_json(&request.settings, "settings")?;
        let data = parse_json(&request.processing_data, "processing data")?;
        Ok(Activity {
            request,
            operation,
            settings,
            data,
        })
    }
}

impl<S> Activity<S> {
    /// The raw request.
    pub fn request(&self) -> &ActivityRequest {
        &self.request
    }

    /// Deploy, dispose, or another orchestration type (see [`Operation::Other`]). A
    /// migration's phases are deploys (target) and disposes (source, rollback); an
    /// upgrade, and an update of VPA properties, is a deploy run again.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// The migration this activity is part of; None outside migrations.
    pub fn migration(&self) -> Result<Option<Migration>, Error> {
        if !self.request.discriminator.starts_with(MIGRATE) {
            return Ok(None);
        }
        self.data_value(keys::MIGRATION)
    }

    /// The upgrade this activity is part of; None outside upgrades.
    pub fn upgrade(&self) -> Result<Option<Upgrade>, Error> {
        if self.request.discriminator != UPGRADE {
            return Ok(None);
        }
        self.data_value(keys::UPGRADE)
    }

    /// The plugin's settings table.
    pub fn settings(&self) -> &S {
        &self.settings
    }

    /// The participant context being provisioned; grants are scoped by it.
    pub fn participant_context_id(&self) -> &str {
        &self.request.participant_context_id
    }

    /// The participant's DID.
    pub fn participant_id(&self) -> &str {
        &self.request.participant_id
    }

    /// Stable across redeliveries of this activity in this orchestration.
    pub fn idempotency_key(&self) -> &str {
        &self.request.idempotency_key
    }

    /// The whole processing data object.
    pub fn data(&self) -> &Map<String, Value> {
        &self.data
    }

    /// Reads processing-data `key` as a `T`; `None` when the key is absent or null.
    pub fn data_value<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.data.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|error| Error::json(format!("processing data '{key}'"), error)),
        }
    }

    /// The VPAs in `cfm.vpa.data`; empty when the key is absent.
    pub fn vpas(&self) -> Result<Vec<Vpa>, Error> {
        Ok(self.data_value(keys::VPA_DATA)?.unwrap_or_default())
    }

    /// A setting a cell may override: the cell property `property` of the participant's
    /// first VPA when its cell has one, else `configured` (the plugin's own setting).
    pub fn cell_setting(&self, property: &str, configured: &str) -> Result<String, Error> {
        let vpas = self.vpas()?;
        Ok(vpas
            .first()
            .and_then(|vpa| vpa.cell_property(property))
            .unwrap_or(configured)
            .to_string())
    }

    /// The state handed back by this activity's previous [`Outcome::Reschedule`].
    pub fn state<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        self.request
            .state
            .as_deref()
            .map(|state| serde_json::from_str(state).map_err(|error| Error::json("state", error)))
            .transpose()
    }

    /// The participant's own secrets folder, `participants/<participant-context-id>`,
    /// which is what the default secrets grants are scoped to.
    pub fn secrets_root(&self) -> String {
        format!("participants/{}", self.participant_context_id())
    }

    /// The secret `name` inside [`Activity::secrets_root`].
    pub fn secret_path(&self, name: &str) -> String {
        format!("{}/{name}", self.secrets_root())
    }
}

/// How a successful invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done, with an output object merged into the processing data.
    Complete(Map<String, Value>),
    /// Run again after `delay`, handing `state` back in [`Activity::state`].
    Reschedule {
        /// How long the engine waits before the next attempt.
        delay: Duration,
        /// Opaque to the engine.
        state: Value,
    },
}

impl Outcome {
    /// Completes with `output`, which must serialize to a JSON object because the
    /// engine merges it key by key into the processing data.
    pub fn complete(output: impl Serialize) -> Result<Self, Error> {
        match serde_json::to_value(output) {
            Ok(Value::Object(map)) => Ok(Outcome::Complete(map)),
            Ok(other) => Err(Error::Fatal(format!(
                "plugin output must be a JSON object, not {other}"
            ))),
            Err(error) => Err(Error::json("plugin output", error)),
        }
    }

    /// Completes with no output (`{}`).
    pub fn empty() -> Self {
        Outcome::Complete(Map::new())
    }

    /// Completes a verify with drift the plugin found itself, each a short text saying
    /// what differs (never a secret value); the host adds what its dry runs found.
    pub fn drifted(findings: impl IntoIterator<Item = String>) -> Self {
        let findings = findings.into_iter().map(Value::String).collect();
        let mut output = Map::new();
        output.insert(DRIFT.into(), Value::Array(findings));
        Outcome::Complete(output)
    }

    /// Completes a verify that cannot check this activity's effects (its services offer
    /// no read-only way to), saying why: the participant is not reported drifted for it;
    /// a reconcile re-runs it only when an activity it depends on drifted.
    pub fn unverifiable(reason: &str) -> Self {
        let mut output = Map::new();
        output.insert(UNVERIFIED.into(), Value::String(reason.into()));
        Outcome::Complete(output)
    }

    /// Asks to run again after `delay` with `state`.
    pub fn reschedule(delay: Duration, state: impl Serialize) -> Result<Self, Error> {
        let state = serde_json::to_value(state).map_err(|error| Error::json("state", error))?;
        Ok(Outcome::Reschedule { delay, state })
    }
}

impl From<Outcome> for ActivityResult {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Complete(output) => {
                ActivityResult::Complete(Value::Object(output).to_string())
            }
            Outcome::Reschedule { delay, state } => ActivityResult::Reschedule(Reschedule {
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                state: state.to_string(),
            }),
        }
    }
}

/// An activity plugin serving the VPA deploy and dispose orchestrations.
///
/// Both operations may be redelivered after a crash or timeout, so every write
/// must be idempotent: use `put-if-absent`, `apply`, `upsert`, and treat deleting
/// something already gone as success.
pub trait Plugin {
    /// The plugin's `settings` table; give fields serde defaults so an empty table works.
    type Settings: DeserializeOwned;

    /// Handles `cfm.orchestration.vpa.deploy`.
    fn deploy(activity: &Activity<Self::Settings>) -> Result<Outcome, Error>;

    /// Handles `cfm.orchestration.vpa.dispose`, undoing what deploy did.
    fn dispose(activity: &Activity<Self::Settings>) -> Result<Outcome, Error>;

    /// Handles `cfm.orchestration.vpa.verify`. By default deploy runs, with every write a
    /// dry run the host records as drift; a plugin whose deploy issues something anew
    /// each time, or must write to find out, checks what exists here instead and reports
    /// what differs with [`Outcome::drifted`].
    fn verify(activity: &Activity<Self::Settings>) -> Result<Outcome, Error> {
        Self::deploy(activity)
    }

    /// Handles any other orchestration type, `activity.request().discriminator`, for a
    /// plugin that serves one (a lifecycle event's, say). By default the activity fails.
    fn other(activity: &Activity<Self::Settings>) -> Result<Outcome, Error> {
        Err(Operation::unsupported(&activity.request().discriminator))
    }
}

/// Runs `P` on one request: what [`export_plugin!`](crate::export_plugin) wires
/// the component's `execute` export to.
pub fn execute<P: Plugin>(request: ActivityRequest) -> ActivityResult {
    let outcome =
        Activity::<P::Settings>::parse(request).and_then(|activity| match activity.operation() {
            Operation::Deploy => P::deploy(&activity),
            Operation::Dispose => P::dispose(&activity),
            Operation::Verify => match activity.data().get(DRY_RUN) {
                Some(Value::Bool(true)) => P::verify(&activity),
                // An agent host that predates verify would let deploy's writes through.
                _ => Err(Error::Fatal(
                    "this agent host does not dry-run a verify's writes; upgrade it before verifying"
                        .into(),
                )),
            },
            Operation::Other => P::other(&activity),
        });
    match outcome {
        Ok(outcome) => outcome.into(),
        Err(error) => error.into(),
    }
}

/// Parses a JSON object input; the host may send an empty string for "nothing".
fn parse_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, Error> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|error| Error::json(what, error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CapabilityError;

    fn request(discriminator: &str, settings: &str, data: &str) -> ActivityRequest {
        ActivityRequest {
            orchestration_id: "o1".into(),
            activity_id: "a1".into(),
            activity_type: "test".into(),
            discriminator: discriminator.into(),
            attempt: 1,
            idempotency_key: "o1/a1".into(),
            participant_id: "did:web:example".into(),
            participant_context_id: "pc1".into(),
            processing_data: data.into(),
            settings: settings.into(),
            state: None,
        }
    }

    #[derive(serde::Deserialize)]
    struct Settings {
        #[serde(default)]
        zone: Option<String>,
    }

    struct Echo;

    impl Plugin for Echo {
        type Settings = Settings;

        fn deploy(activity: &Activity<Settings>) -> Result<Outcome, Error> {
            Outcome::complete(serde_json::json!({
                "zone": activity.settings().zone,
                "cell": Vpa::primary(&activity.vpas()?)?.cell_id,
            }))
        }

        fn dispose(_: &Activity<Settings>) -> Result<Outcome, Error> {
            Err(Error::Capability {
                action: "delete".into(),
                source: CapabilityError::Unavailable("down".into()),
            })
        }
    }

    const DEPLOY: &str = "cfm.orchestration.vpa.deploy";
    const DISPOSE: &str = "cfm.orchestration.vpa.dispose";

    #[test]
    fn dispatches_and_parses() {
        let data = r#"{"cfm.vpa.data":[{"id":"v","vpaType":"connector","cellId":"c1"}]}"#;
        let ActivityResult::Complete(output) =
            execute::<Echo>(request(DEPLOY, r#"{"zone":"z"}"#, data))
        else {
            panic!("expected complete");
        };
        assert_eq!(output, r#"{"cell":"c1","zone":"z"}"#);
    }

    #[test]
    fn an_upgrade_is_a_deploy_that_knows_its_versions() {
        let data = r#"{"cfm.vpa.data":[{"id":"v","vpaType":"connector","cellId":"c1"}],
            "cfm.upgrade":{"templateId":"t","fromVersion":1,"toVersion":3,"rolloutId":"r"}}"#;
        let activity = Activity::<Settings>::parse(request(UPGRADE, "{}", data)).unwrap();
        assert_eq!(activity.operation(), Operation::Deploy);
        let upgrade = activity.upgrade().unwrap().unwrap();
        assert_eq!((upgrade.from_version, upgrade.to_version), (1, 3));
        assert_eq!(upgrade.rollout_id.as_deref(), Some("r"));
        let deploy = Activity::<Settings>::parse(request(DEPLOY, "{}", data)).unwrap();
        assert_eq!(deploy.upgrade().unwrap(), None, "only an upgrade has one");
        let update = Activity::<Settings>::parse(request(UPDATE, "{}", data)).unwrap();
        assert_eq!(
            update.operation(),
            Operation::Deploy,
            "an update re-runs deploy"
        );
    }

    #[test]
    fn verify_runs_deploy_unless_the_plugin_checks_itself() {
        let data = r#"{"cfm.vpa.data":[{"id":"v","vpaType":"connector","cellId":"c1"}]}"#;
        assert!(
            matches!(execute::<Echo>(request(VERIFY, "{}", data)), ActivityResult::Fatal(m) if m.contains("dry-run")),
            "a verify on a host that does not dry-run must not deploy"
        );
        let dry = r#"{"cfm.dryRun":true,"cfm.vpa.data":[{"id":"v","vpaType":"connector","cellId":"c1"}]}"#;
        let ActivityResult::Complete(output) = execute::<Echo>(request(VERIFY, "{}", dry)) else {
            panic!("verify did not complete");
        };
        assert_eq!(output, r#"{"cell":"c1","zone":null}"#);
        let ActivityResult::Complete(drifted) =
            Outcome::drifted(["the key is missing".to_string()]).into()
        else {
            panic!("not complete");
        };
        assert_eq!(drifted, r#"{"cfm.drift":["the key is missing"]}"#);
        let ActivityResult::Complete(unverifiable) = Outcome::unverifiable("no read API").into()
        else {
            panic!("not complete");
        };
        assert_eq!(unverifiable, r#"{"cfm.unverified":"no read API"}"#);
        let reconcile = Activity::<Settings>::parse(request(RECONCILE, "{}", data)).unwrap();
        assert_eq!(reconcile.operation(), Operation::Deploy);
    }

    #[test]
    fn empty_settings_use_defaults_and_missing_vpas_are_fatal() {
        let result = execute::<Echo>(request(DEPLOY, "", "{}"));
        assert!(matches!(result, ActivityResult::Fatal(m) if m.contains("cfm.vpa.data")));
    }

    #[test]
    fn unknown_discriminator_and_bad_json_are_fatal() {
        assert!(matches!(
            execute::<Echo>(request("other", "{}", "{}")),
            ActivityResult::Fatal(m) if m.contains("'other'")
        ));
        assert!(matches!(
            execute::<Echo>(request(DEPLOY, "[", "{}")),
            ActivityResult::Fatal(m) if m.starts_with("invalid settings")
        ));
    }

    struct Lifecycle;

    impl Plugin for Lifecycle {
        type Settings = Settings;

        fn deploy(_: &Activity<Settings>) -> Result<Outcome, Error> {
            Ok(Outcome::empty())
        }

        fn dispose(_: &Activity<Settings>) -> Result<Outcome, Error> {
            Ok(Outcome::empty())
        }

        fn other(activity: &Activity<Settings>) -> Result<Outcome, Error> {
            assert_eq!(activity.operation(), Operation::Other);
            Outcome::complete(serde_json::json!({ "event": activity.request().discriminator }))
        }
    }

    #[test]
    fn other_orchestration_types_reach_plugins_that_serve_them() {
        let ActivityResult::Complete(output) =
            execute::<Lifecycle>(request("cfm.orchestration.keypair.activated", "{}", "{}"))
        else {
            panic!("expected complete");
        };
        assert_eq!(output, r#"{"event":"cfm.orchestration.keypair.activated"}"#);
    }

    #[test]
    fn unavailable_capability_retries() {
        assert!(matches!(
            execute::<Echo>(request(DISPOSE, "{}", "{}")),
            ActivityResult::Retry(m) if m == "delete: unavailable: down"
        ));
        let denied: ActivityResult = Error::Capability {
            action: "delete".into(),
            source: CapabilityError::Denied("no".into()),
        }
        .into();
        assert!(matches!(denied, ActivityResult::Fatal(_)));
    }

    #[test]
    fn outcome_must_be_an_object() {
        assert!(Outcome::complete(3).is_err());
    }
}
