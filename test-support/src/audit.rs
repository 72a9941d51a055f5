//! Reading the agent host's audit log, and checks that each object was written once.

use crate::*;

/// The audit records the agent host wrote.
pub fn read_audit(data_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(data_dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Per object, how many audit records over the logs of `dirs` say each effect
/// (`created`, `unchanged`, ...).
pub fn audit_effects(dirs: &[PathBuf]) -> HashMap<String, HashMap<String, usize>> {
    let mut effects: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for dir in dirs {
        for record in read_audit(dir) {
            if let (Some(target), Some(effect)) =
                (record["target"].as_str(), record["effect"].as_str())
            {
                *effects
                    .entry(target.into())
                    .or_default()
                    .entry(effect.into())
                    .or_default() += 1;
            }
        }
    }
    effects
}

/// Per object, how many of the capability calls the API serves for the participants
/// `ids` of `tenant` say each effect: the same shape as [`audit_effects`], from the
/// managers' copy instead of the agents' logs.
pub async fn served_effects(
    api: &crate::Api,
    tenant: &str,
    ids: &[String],
) -> HashMap<String, HashMap<String, usize>> {
    let mut effects: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for id in ids {
        let calls = api
            .get_json(&format!(
                "/tenants/{tenant}/participant-profiles/{id}/capability-calls"
            ))
            .await;
        for call in calls.as_array().unwrap() {
            if let (Some(target), Some(effect)) = (call["target"].as_str(), call["effect"].as_str())
            {
                *effects
                    .entry(target.into())
                    .or_default()
                    .entry(effect.into())
                    .or_default() += 1;
            }
        }
    }
    effects
}

/// The objects every onboarding writes.
pub fn onboarding_targets(id: &str) -> [String; 5] {
    [
        format!("participants/{id}/api-key"),
        format!("participants/{id}/slow-marker"),
        format!("Namespace//cfm-{id}"),
        format!("ConfigMap/cfm-{id}/participant-context"),
        format!("{id}.participants.cfm.local CNAME"),
    ]
}

/// Each object was written by exactly one run: created once, never touched again.
pub fn assert_each_written_once(effects: &HashMap<String, HashMap<String, usize>>, ids: &[String]) {
    for id in ids {
        for target in onboarding_targets(id) {
            let seen = effects.get(&target).cloned().unwrap_or_default();
            assert_eq!(
                seen,
                HashMap::from([("created".to_string(), 1)]),
                "{target}"
            );
        }
    }
}

/// Each object was created at most once; runs after the first found it in place. (A
/// host killed between its write and the audit record leaves only the later runs'
/// `unchanged` records.)
pub fn assert_each_created_at_most_once(
    effects: &HashMap<String, HashMap<String, usize>>,
    ids: &[String],
) {
    for id in ids {
        for target in onboarding_targets(id) {
            let seen = effects.get(&target).cloned().unwrap_or_default();
            let created = seen.get("created").copied().unwrap_or(0);
            assert!(created <= 1, "{target} created {created} times: {seen:?}");
            assert!(!seen.is_empty(), "{target} never written");
            let others: Vec<&String> = seen
                .keys()
                .filter(|k| *k != "created" && *k != "unchanged")
                .collect();
            assert!(others.is_empty(), "{target}: {seen:?}");
        }
    }
}
