//! The Kubernetes cluster backend: the real `kube` client over HTTP against the API-server
//! stand-in (cfm-standins), since no kube-apiserver can run on these machines. Server-side
//! apply, resourceVersion, conflicts and status codes as the API server has them; and the
//! real `k8s` plugin deploying and disposing a participant's objects through it.

use std::sync::Arc;

use cfm_host::capability::cluster::kubernetes::KubernetesCluster;
use cfm_host::capability::cluster::{ClusterBackend, ObjectRef};
use cfm_host::capability::{BackendError, Change};
use cfm_host::runtime::HostOptions;
use cfm_host::{AgentHost, Audit, Backends};
use cfm_protocol::ActivityOutcome;
use cfm_standins::kubernetes::KubeApi;
use serde_json::{Value, json};

use crate::support;

async fn cluster(api: &KubeApi) -> KubernetesCluster {
    KubernetesCluster::connect(Some(&api.url), "cfm")
        .await
        .unwrap()
}

fn object(kind: &str, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef::new(kind, namespace, name).unwrap()
}

fn config_map(value: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "ctx", "namespace": "cfm-p1"}, "data": {"key": value}})
}

/// A malformed API server URL is refused without repeating it: it may hold credentials.
#[tokio::test]
async fn a_malformed_server_url_is_refused_without_echoing_it() {
    let refused = KubernetesCluster::connect(Some("https://admin:hunter2 x@[::1"), "cfm")
        .await
        .err()
        .expect("a malformed URL was accepted")
        .to_string();
    assert!(refused.contains("does not parse"), "{refused}");
    assert!(!refused.contains("hunter2"), "{refused}");
}

#[tokio::test]
async fn objects_are_applied_read_and_deleted() {
    let api = KubeApi::start().await;
    let kube = cluster(&api).await;
    let namespace = object("Namespace", "cfm-p1", "cfm-p1");
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cfm-p1"}});
    let cm = object("ConfigMap", "cfm-p1", "ctx");

    // The API server wants the namespace first.
    let err = kube.apply(&cm, config_map("a")).await.unwrap_err();
    assert!(matches!(err, BackendError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("not found"), "{err}");

    assert_eq!(
        kube.apply(&namespace, ns.clone()).await.unwrap(),
        Change::Created
    );
    assert_eq!(
        kube.apply(&cm, config_map("a")).await.unwrap(),
        Change::Created
    );
    let version = |api: &KubeApi| {
        api.object("v1", "configmaps", "cfm-p1", "ctx").unwrap()["metadata"]["resourceVersion"]
            .clone()
    };
    let first = version(&api);
    assert_eq!(
        kube.apply(&cm, config_map("a")).await.unwrap(),
        Change::Unchanged
    );
    assert_eq!(
        version(&api),
        first,
        "a no-op apply changed resourceVersion"
    );
    assert_eq!(
        kube.apply(&cm, config_map("b")).await.unwrap(),
        Change::Updated
    );
    assert_ne!(version(&api), first);

    let read = kube.get(&cm).await.unwrap().unwrap();
    assert_eq!(read["data"]["key"], "b");
    assert_eq!(read["metadata"]["managedFields"][0]["manager"], "cfm");

    assert!(kube.delete(&cm).await.unwrap());
    assert!(!kube.delete(&cm).await.unwrap());
    assert!(kube.get(&cm).await.unwrap().is_none());
    assert!(kube.delete(&namespace).await.unwrap());
    assert!(api.names().is_empty(), "{:?}", api.names());
}

#[tokio::test]
async fn fields_changed_by_hand_are_set_back_and_unknown_kinds_refused() {
    let api = KubeApi::start().await;
    let kube = cluster(&api).await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cfm-p1"}});
    kube.apply(&object("Namespace", "cfm-p1", "cfm-p1"), ns)
        .await
        .unwrap();
    let cm = object("ConfigMap", "cfm-p1", "ctx");
    kube.apply(&cm, config_map("a")).await.unwrap();

    // Someone edits cfm's field with kubectl, and adds one of their own.
    let mut edited = config_map("edited");
    edited["data"]["theirs"] = json!("kept");
    api.apply_as("kubectl", edited);
    assert_eq!(
        kube.apply(&cm, config_map("a")).await.unwrap(),
        Change::Updated
    );
    let now = api.object("v1", "configmaps", "cfm-p1", "ctx").unwrap();
    assert_eq!(now["data"]["key"], "a");
    assert_eq!(now["data"]["theirs"], "kept");

    let odd = object("CronJob", "cfm-p1", "x");
    let err = kube
        .apply(&odd, json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "x", "namespace": "cfm-p1"}}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("known kinds"), "{err}");
}

/// What the stand-in enforces, straight over HTTP, so its answers can be trusted.
#[tokio::test]
async fn the_stand_in_answers_as_the_api_server_does() {
    let api = KubeApi::start().await;
    let http = reqwest::Client::new();
    let ns_url = format!("{}/api/v1/namespaces/cfm-p1", api.url);
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cfm-p1"}});
    let apply = |url: &str, query: &str, body: &Value, content_type: &str| {
        let sent = http
            .patch(format!("{url}{query}"))
            .header("content-type", content_type)
            .body(body.to_string())
            .send();
        async { sent.await.unwrap() }
    };
    let yaml = "application/apply-patch+yaml";
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(apply(&ns_url, "", &ns, yaml).await), 400);
    let json_patch = "application/merge-patch+json";
    assert_eq!(
        status(apply(&ns_url, "?fieldManager=a", &ns, json_patch).await),
        415
    );
    assert_eq!(
        status(apply(&ns_url, "?fieldManager=a", &ns, yaml).await),
        201
    );
    assert_eq!(
        status(apply(&ns_url, "?fieldManager=a", &ns, yaml).await),
        200
    );
    let other_name = format!("{}/api/v1/namespaces/cfm-p2", api.url);
    assert_eq!(
        status(apply(&other_name, "?fieldManager=a", &ns, yaml).await),
        400
    );

    let cm_url = format!("{}/api/v1/namespaces/cfm-p1/configmaps/ctx", api.url);
    let by_a = config_map("a");
    assert_eq!(
        status(apply(&cm_url, "?fieldManager=a", &by_a, yaml).await),
        201
    );
    let by_b = config_map("b");
    let conflict = apply(&cm_url, "?fieldManager=b", &by_b, yaml).await;
    assert_eq!(conflict.status().as_u16(), 409);
    let body: Value = conflict.json().await.unwrap();
    assert_eq!(
        (body["kind"].clone(), body["reason"].clone()),
        (json!("Status"), json!("Conflict"))
    );
    assert_eq!(
        status(apply(&cm_url, "?fieldManager=b&force=true", &by_b, yaml).await),
        200
    );
    assert_eq!(
        http.get(&cm_url)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["data"]["key"],
        "b"
    );

    // Deleting the namespace takes what is in it.
    assert_eq!(status(http.delete(&ns_url).send().await.unwrap()), 200);
    assert_eq!(status(http.get(&cm_url).send().await.unwrap()), 404);
    assert_eq!(
        status(
            http.get(format!("{}/api/v1/pods", api.url))
                .send()
                .await
                .unwrap()
        ),
        404
    );
}

/// What the built-in configuration grants the `k8s` plugin.
const K8S_GRANTS: &str = "[plugin.grants]\nsecrets = [\"participants/{participantContextId}/runtime-access\"]\n\
     [plugin.grants.cluster]\nnamespaces = [\"cfm-{participantContextId}\"]\n\
     kinds = [\"Namespace\", \"ConfigMap\", \"Secret\", \"Ingress\", \"NetworkPolicy\"]\n";

#[tokio::test]
async fn the_k8s_plugin_deploys_and_disposes_through_kubernetes() {
    let api = KubeApi::start().await;
    let config = support::config(&[("k8s", "cfm.k8s.runtime", K8S_GRANTS)]);
    let data = tempfile::tempdir().unwrap();
    let backends = Backends::embedded(data.path()).with_cluster(Arc::new(cluster(&api).await));
    let pc = "p-9";
    // What the vault plugin leaves for the runtime when runtime access is on.
    backends
        .secrets
        .put(
            &format!("participants/{pc}/runtime-access"),
            r#"{"roleId":"role-1","secretId":"secret-1"}"#,
        )
        .await
        .unwrap();
    let host = AgentHost::new(&config, backends, Audit::default(), HostOptions::default()).unwrap();
    let mut task = support::task("cfm.k8s.runtime", pc);
    let outcome = host.run(&task).await;
    assert!(
        matches!(outcome, ActivityOutcome::Complete { .. }),
        "{outcome:?}"
    );
    let context = api
        .object("v1", "configmaps", "cfm-p-9", "participant-context")
        .unwrap();
    assert_eq!(context["data"]["participantContextId"], pc);
    assert!(api.object("v1", "namespaces", "", "cfm-p-9").is_some());
    let route = api
        .object(
            "networking.k8s.io/v1",
            "ingresses",
            "cfm-p-9",
            "protocol-endpoint",
        )
        .unwrap();
    assert_eq!(
        route["spec"]["rules"][0]["host"],
        "p-9.participants.cfm.local"
    );
    let isolation = api
        .object(
            "networking.k8s.io/v1",
            "networkpolicies",
            "cfm-p-9",
            "participant-isolation",
        )
        .unwrap();
    assert_eq!(isolation["spec"]["policyTypes"], json!(["Ingress"]));
    // The credential handed over as a Secret, stored the way the API server keeps it.
    let access = api
        .object("v1", "secrets", "cfm-p-9", "vault-access")
        .unwrap();
    assert_eq!(access["data"]["secretId"], "c2VjcmV0LTE=");
    assert!(access.get("stringData").is_none(), "{access}");
    let access_version = access["metadata"]["resourceVersion"].clone();
    assert!(
        !data.path().join("cluster").exists(),
        "manifests were written too"
    );
    // A redelivery changes nothing.
    let version = context["metadata"]["resourceVersion"].clone();
    host.run(&task).await;
    assert_eq!(
        api.object("v1", "configmaps", "cfm-p-9", "participant-context")
            .unwrap()["metadata"]["resourceVersion"],
        version
    );
    assert_eq!(
        api.object("v1", "secrets", "cfm-p-9", "vault-access")
            .unwrap()["metadata"]["resourceVersion"],
        access_version
    );

    task.discriminator = support::DISPOSE.into();
    let outcome = host.run(&task).await;
    assert!(
        matches!(outcome, ActivityOutcome::Complete { .. }),
        "{outcome:?}"
    );
    assert!(api.names().is_empty(), "{:?}", api.names());
}

/// What a real cluster does between a dispose and the next deploy: the namespace is
/// `Terminating` for a while and refuses new content; the API server throttles (429) or
/// reports a conflict (409). None of them fails the activity.
#[tokio::test]
async fn a_terminating_namespace_throttling_and_conflicts_never_fail_the_activity() {
    let api = KubeApi::start().await;
    api.terminate_namespaces_for(std::time::Duration::from_millis(600));
    let config = support::config(&[("k8s", "cfm.k8s.runtime", K8S_GRANTS)]);
    let data = tempfile::tempdir().unwrap();
    let backends = Backends::embedded(data.path()).with_cluster(Arc::new(cluster(&api).await));
    let host = AgentHost::new(&config, backends, Audit::default(), HostOptions::default()).unwrap();
    let mut deploy = support::task("cfm.k8s.runtime", "p-t");
    let mut dispose = deploy.clone();
    dispose.discriminator = support::DISPOSE.into();
    let retried = |outcome: ActivityOutcome, why: &str| match outcome {
        ActivityOutcome::Retry { reason } => assert!(reason.contains(why), "{reason}"),
        other => panic!("expected a retry for {why}, got {other:?}"),
    };

    assert!(matches!(
        host.run(&deploy).await,
        ActivityOutcome::Complete { .. }
    ));
    assert!(matches!(
        host.run(&dispose).await,
        ActivityOutcome::Complete { .. }
    ));
    let namespace = api.object("v1", "namespaces", "", "cfm-p-t").unwrap();
    assert_eq!(namespace["status"]["phase"], "Terminating");

    // Deployed again at once (a compensated onboarding retried): the namespace is still
    // going away.
    deploy.attempt = 2;
    retried(host.run(&deploy).await, "being terminated");
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(api.object("v1", "namespaces", "", "cfm-p-t").is_none());

    // A conflict comes back to the engine as a retry of the activity; throttling is
    // waited out inside the call by kube's own retry (it honours Retry-After).
    api.fail_next(&[409]);
    retried(host.run(&deploy).await, "409");
    api.fail_next(&[429, 429]);
    assert!(matches!(
        host.run(&deploy).await,
        ActivityOutcome::Complete { .. }
    ));
    assert_eq!(
        api.scripted_left(),
        0,
        "the throttling answers were never served"
    );
    let namespace = api.object("v1", "namespaces", "", "cfm-p-t").unwrap();
    assert!(namespace.get("status").is_none(), "{namespace}");
    assert!(
        api.object("v1", "configmaps", "cfm-p-t", "participant-context")
            .is_some()
    );
}
