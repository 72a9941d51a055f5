//! The `cfm.k8s.runtime` activity: gives each participant a namespace in its cell's
//! cluster, holding a `participant-context` ConfigMap that the participant's workloads
//! read their identity and VPA placement from, an Ingress routing its protocol endpoint
//! (`<pc>.<host suffix>`) to its connector, a NetworkPolicy admitting traffic only from
//! its own namespace and the ingress controller's, and, when the vault activity issued
//! one, a `vault-access` Secret with the runtime's credential for its secrets.

use cfm_plugin_sdk::{
    Activity, CapabilityResultExt, Error, MigrationPhase, Outcome, Plugin, RUNTIME_ACCESS_SECRET,
    Vpa, cluster, is_dns_label, keys, log, secrets,
};
use serde_json::{Map, Value, json};

const CONFIG_MAP: &str = "participant-context";
const ACCESS_SECRET: &str = "vault-access";
const ROUTE: &str = "protocol-endpoint";
const ISOLATION: &str = "participant-isolation";

/// The plugin's `[plugin.settings]` table.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Settings {
    /// The protocol endpoint's host is `<participant-context-id>.<this>`.
    ingress_host_suffix: String,
    /// The ingress controller's namespace, admitted by the NetworkPolicy.
    ingress_namespace: String,
    /// The participant's connector Service and port the route leads to.
    protocol_service: String,
    protocol_port: u16,
    /// The path of the protocol (DSP) API.
    protocol_path: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ingress_host_suffix: "participants.cfm.local".into(),
            ingress_namespace: "ingress-nginx".into(),
            protocol_service: "connector".into(),
            protocol_port: 8282,
            protocol_path: "/api/dsp".into(),
        }
    }
}
/// Lets operators select everything belonging to a participant with one label.
const PARTICIPANT_LABEL: &str = "cfm.participant-context-id";

struct K8s;

/// `cfm-<participant-context-id>`, checked to be a valid namespace name so that a
/// malformed id fails with a clear message rather than an API-server rejection.
/// A valid name also keeps the id short enough to be a label value (≤ 63 chars).
fn namespace(activity: &Activity<Settings>) -> Result<String, Error> {
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
fn context_data(activity: &Activity<Settings>) -> Result<Map<String, Value>, Error> {
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
    // Each VPA's properties (replicas, resources, ...) for the workloads to size
    // themselves by: a change of them reaches the cluster with the next update.
    for vpa in &vpas {
        if let Some(properties) = vpa.properties.as_ref().filter(|p| !p.is_empty()) {
            data.insert(
                format!("vpa.{}", vpa.vpa_type),
                Value::String(Value::Object(properties.clone()).to_string()),
            );
        }
    }
    // Present only when the vault activity ran earlier in this orchestration.
    if let Some(path) = activity.data_value::<String>(keys::CREDENTIAL_PATH)? {
        data.insert(keys::CREDENTIAL_PATH.into(), path.into());
    }
    Ok(data)
}

/// The `participant-context` ConfigMap holding `data`.
fn context_config_map(namespace: &str, pc: &str, data: Map<String, Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIG_MAP,
            "namespace": namespace,
            "labels": { PARTICIPANT_LABEL: pc },
        },
        "data": data,
    })
}

/// Output of a migration's deploy that found the namespace serving the source cell.
const SHARED_CLUSTER_OUTPUT: &str = "k8sClusterSharedWith";

/// The cell the participant's namespace serves, from its ConfigMap; None without one.
fn serving_cell(namespace: &str) -> Result<Option<String>, Error> {
    Ok(cluster::get("ConfigMap", namespace, CONFIG_MAP)
        .context(format!("read ConfigMap {namespace}/{CONFIG_MAP}"))?
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|map| map.pointer("/data/cellId")?.as_str().map(str::to_string)))
}

fn apply(manifest: Value, what: &str) -> Result<(), Error> {
    let change = cluster::apply(&manifest.to_string()).context(format!("apply {what}"))?;
    log::info(&format!("{what}: {}", change.as_str()));
    Ok(())
}

impl Plugin for K8s {
    type Settings = Settings;

    fn deploy(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let namespace = namespace(activity)?;
        let pc = activity.participant_context_id();
        let data = context_data(activity)?;
        // A migration into a cell whose cluster the source shares finds the namespace
        // serving the source; a rollback must then hand it back rather than delete it.
        let shared_with = match activity.migration()? {
            Some(migration) => {
                serving_cell(&namespace)?.filter(|cell| *cell == migration.source.cell_id)
            }
            None => None,
        };

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
            context_config_map(&namespace, pc, data),
            &format!("ConfigMap {namespace}/{CONFIG_MAP}"),
        )?;
        let settings = activity.settings();
        let host = format!("{pc}.{}", settings.ingress_host_suffix.trim_matches('.'));
        apply(
            json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": {
                    "name": ROUTE,
                    "namespace": namespace,
                    "labels": { PARTICIPANT_LABEL: pc },
                },
                "spec": { "rules": [{ "host": host, "http": { "paths": [{
                    "path": settings.protocol_path,
                    "pathType": "Prefix",
                    "backend": { "service": {
                        "name": settings.protocol_service,
                        "port": { "number": settings.protocol_port },
                    }},
                }]}}]},
            }),
            &format!("Ingress {namespace}/{ROUTE}"),
        )?;
        apply(
            json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {
                    "name": ISOLATION,
                    "namespace": namespace,
                    "labels": { PARTICIPANT_LABEL: pc },
                },
                "spec": {
                    "podSelector": {},
                    "policyTypes": ["Ingress"],
                    "ingress": [
                        { "from": [{ "podSelector": {} }] },
                        { "from": [{ "namespaceSelector": { "matchLabels": {
                            "kubernetes.io/metadata.name": settings.ingress_namespace,
                        }}}]},
                    ],
                },
            }),
            &format!("NetworkPolicy {namespace}/{ISOLATION}"),
        )?;
        let handover = activity.secret_path(RUNTIME_ACCESS_SECRET);
        if let Some(access) = secrets::get(&handover)
            .context(format!("read the runtime's credential at {handover}"))?
        {
            let access: Value = serde_json::from_str(&access)
                .map_err(|e| Error::Fatal(format!("{handover} is not JSON: {e}")))?;
            apply(
                json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "Opaque",
                    "metadata": {
                        "name": ACCESS_SECRET,
                        "namespace": namespace,
                        "labels": { PARTICIPANT_LABEL: pc },
                    },
                    "stringData": access,
                }),
                &format!("Secret {namespace}/{ACCESS_SECRET}"),
            )?;
        }

        let mut output = json!({
            "participantContextId": pc,
            "namespace": namespace,
            "protocolEndpoint": format!("https://{host}{}", settings.protocol_path),
        });
        if let Some(cell) = shared_with {
            output[SHARED_CLUSTER_OUTPUT] = cell.into();
        }
        Outcome::complete(output)
    }

    fn dispose(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let namespace = namespace(activity)?;
        if let Some(migration) = activity.migration()? {
            // Each cell normally has its own cluster. Where two cells share one, the
            // namespace is the same object in both: the ConfigMap says which cell it
            // serves now, and a namespace serving the other cell is left alone.
            let other = &migration.other().cell_id;
            let shared = match migration.phase {
                MigrationPhase::Rollback => activity.data_value::<String>(SHARED_CLUSTER_OUTPUT)?,
                MigrationPhase::Source | MigrationPhase::Target => None,
            };
            if shared.as_ref() == Some(other) {
                // A rollback in a shared cluster: the source's ConfigMap back, nothing deleted.
                let mut data = context_data(activity)?;
                data.insert("cellId".into(), other.clone().into());
                apply(
                    context_config_map(&namespace, activity.participant_context_id(), data),
                    &format!("ConfigMap {namespace}/{CONFIG_MAP} (handed back to cell {other})"),
                )?;
                return Ok(Outcome::empty());
            }
            if serving_cell(&namespace)?.as_ref() == Some(other) {
                log::info(&format!(
                    "Namespace {namespace} serves cell {other}: left in place"
                ));
                return Ok(Outcome::empty());
            }
        }
        // Reverse order of creation: on a real cluster namespace deletion is
        // asynchronous, and touching objects inside a terminating namespace fails.
        let objects = [
            ("Secret", namespace.as_str(), ACCESS_SECRET),
            ("NetworkPolicy", namespace.as_str(), ISOLATION),
            ("Ingress", namespace.as_str(), ROUTE),
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
