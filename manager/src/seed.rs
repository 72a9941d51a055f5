//! What a fresh data directory starts with: the built-in plugins' activity definitions
//! and a default deploy/dispose orchestration template on the local backends. Each
//! seeding step happens once per database, so definitions an operator later changes or
//! deletes stay that way.

use std::collections::BTreeMap;

use cfm_protocol::orchestration_types::{VPA_DEPLOY, VPA_DISPOSE};
use serde_json::json;

use crate::error::Result;
use crate::model::{ActivityDefinition, ActivitySpec};
use crate::provision::definitions;
use crate::store::{self, Db};

/// The id of the seeded deploy/dispose template on the local backends.
pub const DEFAULT_TEMPLATE_ID: &str = "cfm-default";
const SEEDED: &str = "seeded.v1";
/// v1 seeded the API-key EDC plugins' types, retired since; v2 seeds upstream's types.
const SEEDED_EDC_V: &str = "seeded.edc-v.v2";

/// The built-in activity types and what they do.
pub const BUILTIN_ACTIVITIES: &[(&str, &str)] = &[
    (
        "cfm.vault.credentials",
        "Per-participant secret path and generated access credential",
    ),
    (
        "cfm.k8s.runtime",
        "Participant runtime objects (namespace, configuration) in the cell",
    ),
    ("cfm.dns.routing", "DNS routing record of the participant"),
    (
        "jwtlet-activity",
        "Token-exchange mappings of the participant context at jwtlet",
    ),
    (
        "identityhub-activity",
        "Participant context, DID and key in the EDC Identity Hub",
    ),
    (
        "edcv-activity",
        "Participant context and its configuration in the EDC Control Plane",
    ),
    (
        "registration-activity",
        "The participant as a holder at the Issuer Service",
    ),
    (
        "onboarding-activity",
        "Credential request to the issuer, polled until issued; revocation on dispose",
    ),
    (
        "siglet-activity",
        "Transfer-type mappings at Siglet and the data plane at the Control Plane",
    ),
    (
        "keymanagement-activity",
        "Keypair lifecycle events: Siglet key mappings and the Control Plane's signing configuration",
    ),
];

/// Upstream's EDC-V activity types, served by the built-in `edc-v` plugin.
pub const EDC_V_ACTIVITIES: [&str; 7] = [
    "jwtlet-activity",
    "identityhub-activity",
    "edcv-activity",
    "registration-activity",
    "onboarding-activity",
    "siglet-activity",
    "keymanagement-activity",
];

/// Runs the seeding steps this database has not had yet; returns whether any ran.
pub async fn seed(db: &Db) -> Result<bool> {
    let default = seed_once(db, SEEDED, seed_default).await?;
    let edc_v = seed_once(db, SEEDED_EDC_V, seed_edc_v).await?;
    Ok(default || edc_v)
}

/// Runs `step` in a transaction unless `marker` says it ran before.
async fn seed_once<F>(db: &Db, marker: &str, step: F) -> Result<bool>
where
    F: AsyncFnOnce(&mut store::Tx) -> Result<()>,
{
    let mut tx = store::write(db).await?;
    if store::meta(&mut tx, marker).await?.is_some() {
        return Ok(false);
    }
    step(&mut tx).await?;
    store::set_meta(&mut tx, marker, &crate::model::now()).await?;
    tx.commit().await?;
    Ok(true)
}

fn spec(id: &str, activity_type: &str, deps: &[&str]) -> ActivitySpec {
    ActivitySpec {
        id: id.into(),
        activity_type: activity_type.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
    }
}

/// Creates any built-in activity definition that is missing.
async fn put_builtin_activities(tx: &mut store::Tx, types: &[&str]) -> Result<()> {
    for (activity_type, description) in BUILTIN_ACTIVITIES {
        if !types.contains(activity_type) {
            continue;
        }
        let definition = ActivityDefinition {
            activity_type: activity_type.to_string(),
            description: description.to_string(),
            input_schema: json!({"type": "object"}),
            output_schema: json!({"type": "object"}),
        };
        definitions::put_activity(tx, &definition).await?;
    }
    Ok(())
}

async fn seed_default(tx: &mut store::Tx) -> Result<()> {
    put_builtin_activities(
        tx,
        &[
            "cfm.vault.credentials",
            "cfm.k8s.runtime",
            "cfm.dns.routing",
        ],
    )
    .await?;
    // Credentials first, so the runtime objects can reference them; routing is independent.
    let activities = BTreeMap::from([
        (
            VPA_DEPLOY.to_string(),
            vec![
                spec("vault", "cfm.vault.credentials", &[]),
                spec("k8s", "cfm.k8s.runtime", &["vault"]),
                spec("dns", "cfm.dns.routing", &[]),
            ],
        ),
        (
            VPA_DISPOSE.to_string(),
            vec![
                spec("dns", "cfm.dns.routing", &[]),
                spec("k8s", "cfm.k8s.runtime", &[]),
                spec("vault", "cfm.vault.credentials", &["k8s"]),
            ],
        ),
    ]);
    definitions::create_orchestration(
        tx,
        Some(DEFAULT_TEMPLATE_ID.into()),
        "Default participant onboarding: credentials, runtime objects, routing".into(),
        json!({}),
        activities,
    )
    .await?;
    Ok(())
}

/// Upstream's EDC-V activity types, also for databases seeded before them. The `edc-v`
/// template that uses them ships as `templates/edc-v.json`: a template is chosen per
/// dataspace profile, so it is the operator's to add, not the newest by default.
async fn seed_edc_v(tx: &mut store::Tx) -> Result<()> {
    put_builtin_activities(tx, &EDC_V_ACTIVITIES).await
}
