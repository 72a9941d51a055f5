//! A stand-in for the part of the Kubernetes API server cfm's cluster backend uses: get,
//! server-side apply and delete of objects, core (`/api/v1`) and grouped (`/apis/{g}/{v}`),
//! namespaced and cluster-scoped.
//!
//! What it keeps faithful: the paths; `PATCH` with `application/apply-patch+yaml` and a
//! required `fieldManager` (else 415 and 400); the body's `apiVersion`, `kind` and
//! `metadata.name` must match the path (400); a namespaced object needs its namespace to
//! exist (404); `resourceVersion` changes only when an object does, so an apply that changes
//! nothing keeps it; field ownership per manager, with a 409 `Conflict` when another manager
//! owns a field the apply would change, unless `force=true`; 201 on create, 200 otherwise;
//! errors as `Status` objects; deleting a namespace deletes what is in it; a Secret's
//! `stringData` is stored base64-encoded under `data`. On request
//! ([`KubeApi::terminate_namespaces_for`]) a deleted namespace stays `Terminating` for a
//! while, refusing new content with 403 "being terminated", as namespace finalization
//! does; and scripted answers ([`KubeApi::fail_next`]) stand in for throttling (429) and
//! conflicts. What it leaves out: watches, lists, validation against OpenAPI schemas,
//! admission, finalizers other than the namespace's.

// Over 500 lines, one job: the part of the Kubernetes API server cfm's client uses
// (server-side apply, get, delete, discovery), with the API server's error shapes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The API server stand-in on a free loopback port; stopped on drop.
pub struct KubeApi {
    /// The API server's base URL (`http://127.0.0.1:<port>`).
    pub url: String,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

type Shared = Arc<Mutex<Cluster>>;

#[derive(Default)]
struct Cluster {
    objects: BTreeMap<Key, Stored>,
    resource_version: u64,
    /// How long a deleted namespace stays `Terminating`; zero deletes it at once.
    terminate_for: std::time::Duration,
    /// Namespaces being terminated, and when they are gone.
    terminating: BTreeMap<String, std::time::Instant>,
    /// Statuses the next requests are answered with, whatever they ask.
    scripted: std::collections::VecDeque<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    group_version: String,
    plural: String,
    namespace: String,
    name: String,
}

/// The keys from the object's root to a leaf (label keys hold dots, so no dotted string).
type FieldPath = Vec<String>;

struct Stored {
    object: Value,
    /// Leaf field path → the field manager that set it last.
    owners: BTreeMap<FieldPath, String>,
}

impl KubeApi {
    /// Starts the stand-in over an empty cluster: no objects, not even a namespace.
    pub async fn start() -> Self {
        let state: Shared = Arc::default();
        let app = Router::new().fallback(handle).with_state(state.clone());
        let (url, task) = crate::serve(app).await;
        Self { url, state, task }
    }

    /// The stored object (`apiVersion` like `v1` or `networking.k8s.io/v1`, the plural
    /// resource name, the namespace or "" for cluster-scoped objects).
    pub fn object(
        &self,
        api_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = Key {
            group_version: api_version.into(),
            plural: plural.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.cluster().objects.get(&key).map(|s| s.object.clone())
    }

    /// Removes an object behind its managers' backs (as someone with kubectl would):
    /// whether it was there.
    pub fn remove(&self, api_version: &str, plural: &str, namespace: &str, name: &str) -> bool {
        let key = Key {
            group_version: api_version.into(),
            plural: plural.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.cluster().objects.remove(&key).is_some()
    }

    /// Every object, as `apiVersion/plural/namespace/name`.
    pub fn names(&self) -> Vec<String> {
        self.cluster()
            .objects
            .keys()
            .map(|k| {
                format!(
                    "{}/{}/{}/{}",
                    k.group_version, k.plural, k.namespace, k.name
                )
            })
            .collect()
    }

    /// From now on a deleted namespace stays `Terminating` for `period` before it and its
    /// content are gone, as on a real cluster where finalization takes time.
    pub fn terminate_namespaces_for(&self, period: std::time::Duration) {
        self.cluster().terminate_for = period;
    }

    /// Answers the next requests with these statuses (429, 409, 500...), one each.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.cluster().scripted.extend(statuses);
    }

    /// How many scripted answers are still to be given.
    pub fn scripted_left(&self) -> usize {
        self.cluster().scripted.len()
    }

    /// Applies `object` as another field manager would (a person with kubectl, say).
    pub fn apply_as(&self, manager: &str, object: Value) {
        let key = key_of(&object).expect("an object with apiVersion, kind and metadata");
        let mut cluster = self.cluster();
        apply(&mut cluster, key, object, manager, true).expect("applied");
    }

    /// The cluster as it is now: terminations whose time has come are finished.
    fn cluster(&self) -> MutexGuard<'_, Cluster> {
        let mut cluster = self.state.lock().unwrap_or_else(|p| p.into_inner());
        finish_terminations(&mut cluster);
        cluster
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Params {
    field_manager: Option<String>,
    force: Option<bool>,
}

async fn handle(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let Some(key) = parse_path(uri.path()) else {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
        .into_response();
    };
    let mut cluster = state.lock().unwrap_or_else(|p| p.into_inner());
    finish_terminations(&mut cluster);
    if let Some(code) = cluster.scripted.pop_front() {
        return scripted(code).into_response();
    }
    let result = match method {
        Method::GET => get(&cluster, &key),
        Method::DELETE => delete(&mut cluster, &key),
        Method::PATCH => patch(&mut cluster, key, &params, &headers, &body),
        _ => Err(failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    };
    match result {
        Ok(response) => response,
        Err(status) => status.into_response(),
    }
}

type Answer = Result<Response, ApiStatus>;

fn get(cluster: &Cluster, key: &Key) -> Answer {
    match cluster.objects.get(key) {
        Some(stored) => Ok(axum::Json(stored.object.clone()).into_response()),
        None => Err(not_found(key)),
    }
}

fn delete(cluster: &mut Cluster, key: &Key) -> Answer {
    let is_namespace = key.plural == "namespaces" && key.group_version == "v1";
    if is_namespace && !cluster.terminate_for.is_zero() {
        let Some(stored) = cluster.objects.get_mut(key) else {
            return Err(not_found(key));
        };
        stored.object["status"] = json!({"phase": "Terminating"});
        // Clients look only at whether it is set.
        stored.object["metadata"]["deletionTimestamp"] = "1970-01-01T00:00:00Z".into();
        let gone_at = std::time::Instant::now() + cluster.terminate_for;
        cluster
            .terminating
            .entry(key.name.clone())
            .or_insert(gone_at);
        return Ok(ApiStatus {
            code: StatusCode::OK,
            reason: "",
            message: "terminating".into(),
        }
        .into_response());
    }
    if cluster.objects.remove(key).is_none() {
        return Err(not_found(key));
    }
    if is_namespace {
        cluster.objects.retain(|k, _| k.namespace != key.name);
    }
    Ok(ApiStatus {
        code: StatusCode::OK,
        reason: "",
        message: "deleted".into(),
    }
    .into_response())
}

fn patch(
    cluster: &mut Cluster,
    key: Key,
    params: &Params,
    headers: &HeaderMap,
    body: &str,
) -> Answer {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/apply-patch+yaml" {
        return Err(failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml (got '{content_type}')"
            ),
        ));
    }
    let Some(manager) = params.field_manager.as_deref().filter(|m| !m.is_empty()) else {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "fieldManager is required for apply requests",
        ));
    };
    // JSON is YAML; cfm's client sends JSON.
    let object: Value = serde_json::from_str(body).map_err(|e| {
        failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("error decoding the body: {e}"),
        )
    })?;
    let Some(body_key) = key_of(&object) else {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the object needs apiVersion, kind and metadata.name",
        ));
    };
    if body_key != key {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the apiVersion, kind, namespace or name in the body does not match the request path",
        ));
    }
    if !key.namespace.is_empty() {
        let namespace = Key {
            group_version: "v1".into(),
            plural: "namespaces".into(),
            namespace: String::new(),
            name: key.namespace.clone(),
        };
        if !cluster.objects.contains_key(&namespace) {
            return Err(not_found(&namespace));
        }
        if cluster.terminating.contains_key(&key.namespace) && !cluster.objects.contains_key(&key) {
            return Err(failure(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                    key.plural, key.name, key.namespace
                ),
            ));
        }
    }
    let created = !cluster.objects.contains_key(&key);
    let stored = apply(cluster, key, object, manager, params.force.unwrap_or(false))?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, axum::Json(stored)).into_response())
}

/// A Secret's `stringData` is write-only: the API server stores it base64-encoded under
/// `data` (where its keys win) and never returns it.
fn fold_string_data(secret: &mut Value) {
    use base64::Engine;
    let Some(Value::Object(plain)) = secret.as_object_mut().and_then(|s| s.remove("stringData"))
    else {
        return;
    };
    let mut data = secret["data"]
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    for (name, value) in plain {
        let text = value
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| value.to_string());
        data.insert(
            name,
            base64::engine::general_purpose::STANDARD
                .encode(text)
                .into(),
        );
    }
    secret["data"] = Value::Object(data);
}

/// Server-side apply of `object` by `manager`: its fields are set and owned by the manager,
/// fields it owned before and no longer sets are removed.
fn apply(
    cluster: &mut Cluster,
    key: Key,
    object: Value,
    manager: &str,
    force: bool,
) -> Result<Value, ApiStatus> {
    let applied = leaves(&object);
    let (mut current, mut owners, metadata) = match cluster.objects.get(&key) {
        Some(stored) => (
            leaves(&stored.object),
            stored.owners.clone(),
            stored.object["metadata"].clone(),
        ),
        None => (BTreeMap::new(), BTreeMap::new(), Value::Null),
    };
    let conflicts: Vec<String> = applied
        .iter()
        .filter(|(path, value)| {
            current.get(*path).is_some_and(|v| v != *value)
                && owners.get(*path).is_some_and(|owner| owner != manager)
        })
        .map(|(path, _)| format!(".{} (owned by \"{}\")", path.join("."), owners[path]))
        .collect();
    if !conflicts.is_empty() && !force {
        return Err(failure(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Apply failed with {} conflict(s): {}",
                conflicts.len(),
                conflicts.join(", ")
            ),
        ));
    }
    // Fields this manager set before and leaves out now go away.
    let dropped: Vec<FieldPath> = owners
        .iter()
        .filter(|(path, owner)| *owner == manager && !applied.contains_key(*path))
        .map(|(path, _)| path.clone())
        .collect();
    for path in dropped {
        current.remove(&path);
        owners.remove(&path);
    }
    for (path, value) in &applied {
        current.insert(path.clone(), value.clone());
        owners.insert(path.clone(), manager.to_string());
    }
    let mut next = unflatten(&current);
    if key.plural == "secrets" {
        fold_string_data(&mut next);
    }
    let before = cluster
        .objects
        .get(&key)
        .map(|s| strip_server_fields(&s.object));
    let changed = before.as_ref() != Some(&strip_server_fields(&next));
    let resource_version = if changed {
        cluster.resource_version += 1;
        cluster.resource_version.to_string()
    } else {
        metadata["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_string()
    };
    let managers: Vec<Value> = owners
        .values()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|m| json!({"manager": m, "operation": "Apply"}))
        .collect();
    let uid = metadata["uid"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| format!("uid-{}-{}", key.name, cluster.resource_version));
    let meta = next["metadata"].as_object_mut().expect("metadata");
    meta.insert("resourceVersion".into(), resource_version.into());
    meta.insert("uid".into(), uid.into());
    meta.insert("managedFields".into(), Value::Array(managers));
    cluster.objects.insert(
        key,
        Stored {
            object: next.clone(),
            owners,
        },
    );
    Ok(next)
}

/// The object's leaf fields by path, leaving out server-set metadata.
fn leaves(object: &Value) -> BTreeMap<FieldPath, Value> {
    fn walk(path: &mut FieldPath, value: &Value, out: &mut BTreeMap<FieldPath, Value>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    path.push(key.clone());
                    walk(path, child, out);
                    path.pop();
                }
            }
            leaf => {
                out.insert(path.clone(), leaf.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&mut Vec::new(), &strip_server_fields(object), &mut out);
    out
}

fn unflatten(leaves: &BTreeMap<FieldPath, Value>) -> Value {
    let mut root = Map::new();
    for (path, value) in leaves {
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let mut node = &mut root;
        for part in parents {
            node = node
                .entry(part.clone())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("an object on the path");
        }
        node.insert(last.clone(), value.clone());
    }
    Value::Object(root)
}

fn strip_server_fields(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "resourceVersion",
            "uid",
            "managedFields",
            "creationTimestamp",
        ] {
            meta.remove(field);
        }
    }
    object
}

/// `/api/v1/...` or `/apis/{group}/{version}/...`, then `[namespaces/{ns}/]{plural}/{name}`.
fn parse_path(path: &str) -> Option<Key> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", namespace, plural, name] => (*namespace, *plural, *name),
        [plural, name] => ("", *plural, *name),
        _ => return None,
    };
    Some(Key {
        group_version,
        plural: plural.into(),
        namespace: namespace.into(),
        name: name.into(),
    })
}

/// Where an object lives, from its own fields.
fn key_of(object: &Value) -> Option<Key> {
    let text = |ptr: &str| object.pointer(ptr).and_then(Value::as_str);
    let kind = text("/kind")?;
    Some(Key {
        group_version: text("/apiVersion")?.into(),
        plural: plural(kind),
        namespace: text("/metadata/namespace").unwrap_or("").into(),
        name: text("/metadata/name")?.into(),
    })
}

/// The API server's own rule for the resources cfm uses: lowercase, `y` → `ies`, else `s`.
fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None if lower.ends_with("ss") => format!("{lower}es"),
        None => format!("{lower}s"),
    }
}

/// Namespaces whose termination period has passed go, with everything in them.
fn finish_terminations(cluster: &mut Cluster) {
    let now = std::time::Instant::now();
    let gone: Vec<String> = cluster
        .terminating
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        cluster.terminating.remove(&name);
        cluster.objects.retain(|k, _| {
            k.namespace != name
                && !(k.plural == "namespaces" && k.namespace.is_empty() && k.name == name)
        });
    }
}

/// A scripted answer, worded as the API server words it.
fn scripted(code: u16) -> ApiStatus {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (reason, message) = match code.as_u16() {
        429 => (
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later",
        ),
        409 => (
            "Conflict",
            "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
        ),
        _ => (
            "InternalError",
            "an error on the server has prevented the request from succeeding",
        ),
    };
    failure(code, reason, message)
}

fn not_found(key: &Key) -> ApiStatus {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{}\" not found", key.plural, key.name),
    )
}

fn failure(code: StatusCode, reason: &'static str, message: &str) -> ApiStatus {
    ApiStatus {
        code,
        reason,
        message: message.to_string(),
    }
}

/// A `Status` object: what the API server answers errors and deletes with.
#[derive(Debug)]
struct ApiStatus {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl IntoResponse for ApiStatus {
    fn into_response(self) -> Response {
        let outcome = if self.code.is_success() {
            "Success"
        } else {
            "Failure"
        };
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": outcome, "message": self.message, "reason": self.reason,
            "code": self.code.as_u16(),
        });
        (self.code, axum::Json(body)).into_response()
    }
}
