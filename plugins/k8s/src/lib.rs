//! The `cfm.k8s.runtime` activity: gives each participant a namespace in its cell's
//! cluster, holding a `participant-context` ConfigMap that the participant's
//! workloads read their identity and VPA placement from.

use cfm_plugin_sdk::{
    Activity, CapabilityResultExt, Error, NoSettings, Outcome, Plugin, Vpa, cluster, is_dns_label,
    keys, log,
};
use serde_json::{Map, Value, json};

const CONFIG_MAP: &str = "participant-context";
/// Lets operators select everything belonging to a participant with one label.
const PARTICIPANT_LABEL: &str = "cfm.participant-context-id";

struct K8s;

/// `cfm-<participant-context-id>`, checked to be a valid namespace name so that a
/// malformed id fails with a clear message rather than an API-server rejection.
/// A valid name also keeps the id short enough to be a label value (≤ 63 chars).
fn namespace(activity: &Activity<NoSettings>) -> Result<String, Error> {
    let namespace = format!("cfm-{}", activity.participant_context_id());
    if is_dns_label(&namespace) {
        Ok(namespace)
    } else {
        Err(Error::Fatal(format!(
            "'{namespace}' is not a valid Kubernetes namespace name: the participant context id \
             must be lowercase letters, digits and '-', at most 59 characters"
        )))
    }
}

/// What the participant's workloads need to know, as ConfigMap data (strings only).
fn context_data(activity: &Activity<NoSettings>) -> Result<Map<String, Value>, Error> {
    let vpas = activity.vpas()?;
    let vpa_types: Vec<&str> = vpas.iter().map(|vpa| vpa.vpa_type.as_str()).collect();
    let mut data = Map::new();
    data.insert(
        "participantContextId".into(),
        activity.participant_context_id().into(),
    );
    data.insert("did".into(), activity.participant_id().into());
    data.insert("vpaTypes".into(), vpa_types.join(",").into());
    data.insert("cellId".into(), Vpa::primary(&vpas)?.cell_id.clone().into());
    // Present only when the vault activity ran earlier in this orchestration.
    if let Some(path) = activity.data_value::<String>(keys::CREDENTIAL_PATH)? {
        data.insert(keys::CREDENTIAL_PATH.into(), path.into());
    }
    Ok(data)
}

fn apply(manifest: Value, what: &str) -> Result<(), Error> {
    let change = cluster::apply(&manifest.to_string()).context(format!("apply {what}"))?;
    log::info(&format!("{what}: {}", change.as_str()));
    Ok(())
}

impl Plugin for K8s {
    type Settings = NoSettings;

    fn deploy(activity: &Activity<NoSettings>) -> Result<Outcome, Error> {
        let namespace = namespace(activity)?;
        let pc = activity.participant_context_id();
        let data = context_data(activity)?;

        // apply is create-or-update, so a redelivery converges on the same objects.
        apply(
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": { "name": namespace, "labels": { PARTICIPANT_LABEL: pc } },
            }),
            &format!("Namespace {namespace}"),
        )?;
        apply(
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": CONFIG_MAP,
                    "namespace": namespace,
                    "labels": { PARTICIPANT_LABEL: pc },
                },
                "data": data,
            }),
            &format!("ConfigMap {namespace}/{CONFIG_MAP}"),
        )?;

        Outcome::complete(json!({ "participantContextId": pc, "namespace": namespace }))
    }

    fn dispose(activity: &Activity<NoSettings>) -> Result<Outcome, Error> {
        let namespace = namespace(activity)?;
        // Reverse order of creation: on a real cluster namespace deletion is
        // asynchronous, and touching objects inside a terminating namespace fails.
        let objects = [
            ("ConfigMap", namespace.as_str(), CONFIG_MAP),
            // A Namespace is cluster-scoped. It is addressed with its own name as the
            // namespace argument, which also satisfies a host that checks that
            // argument against the namespace grants.
            ("Namespace", namespace.as_str(), namespace.as_str()),
        ];
        for (kind, object_namespace, name) in objects {
            let existed = cluster::delete(kind, object_namespace, name)
                .context(format!("delete {kind} {name}"))?;
            log::info(&format!(
                "{kind} {name}: {}",
                if existed { "deleted" } else { "already gone" }
            ));
        }
        Ok(Outcome::empty())
    }
}

cfm_plugin_sdk::export_plugin!(K8s);
