//! What a fresh data directory starts with: the built-in plugins' activity definitions
//! and a default deploy/dispose orchestration template. Seeding happens once per
//! database, so definitions an operator later changes or deletes stay that way.

use std::collections::BTreeMap;

use cfm_protocol::orchestration_types::{VPA_DEPLOY, VPA_DISPOSE};
use serde_json::json;

use crate::error::Result;
use crate::model::{ActivityDefinition, ActivitySpec};
use crate::provision::definitions;
use crate::store::{self, Db};

pub const DEFAULT_TEMPLATE_ID: &str = "cfm-default";
const SEEDED: &str = "seeded.v1";

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
        "cfm.issuer.credentials",
        "Registration with the Issuer Service and credential requests",
    ),
];

/// Seeds a database that has never been seeded; returns whether it did.
pub async fn seed(db: &Db) -> Result<bool> {
    let mut tx = store::write(db).await?;
    if store::meta(&mut tx, SEEDED).await?.is_some() {
        return Ok(false);
    }
    for (activity_type, description) in BUILTIN_ACTIVITIES {
        let definition = ActivityDefinition {
            activity_type: activity_type.to_string(),
            description: description.to_string(),
            input_schema: json!({"type": "object"}),
            output_schema: json!({"type": "object"}),
        };
        definitions::put_activity(&mut tx, &definition).await?;
    }
    let spec = |id: &str, activity_type: &str, deps: &[&str]| ActivitySpec {
        id: id.into(),
        activity_type: activity_type.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
    };
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
        &mut tx,
        Some(DEFAULT_TEMPLATE_ID.into()),
        "Default participant onboarding: credentials, runtime objects, routing".into(),
        json!({}),
        activities,
    )
    .await?;
    store::set_meta(&mut tx, SEEDED, &crate::model::now()).await?;
    tx.commit().await?;
    Ok(true)
}
