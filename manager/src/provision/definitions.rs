//! Activity definitions and orchestration definitions (templates), validated on create.

use std::collections::{BTreeMap, BTreeSet};

use cfm_protocol::keys;
use cfm_protocol::orchestration_types::VPA_DEPLOY;
use serde_json::Value;
use sqlx::Row;

use crate::error::{ManagerError, Result};
use crate::model::{ActivityDefinition, ActivitySpec, OrchestrationDefinition, new_id, now};
use crate::store::{Conn, Db, from_json, to_json};

/// Creates or replaces an activity definition (upstream's upsert).
pub async fn put_activity(conn: &mut Conn, definition: &ActivityDefinition) -> Result<()> {
    // The type names a queue topic (a JetStream subject), so it follows topic rules.
    if cfm_queue::check_topic(&definition.activity_type).is_err() {
        return Err(ManagerError::bad_request(format!(
            "activity type '{}' must be dot-separated tokens of letters, digits, '-' and '_' (^[a-zA-Z0-9_-]+(\\.[a-zA-Z0-9_-]+)*$)",
            definition.activity_type
        )));
    }
    for (name, schema) in [
        ("inputSchema", &definition.input_schema),
        ("outputSchema", &definition.output_schema),
    ] {
        if !schema.is_object() {
            return Err(ManagerError::bad_request(format!(
                "{name} must be a JSON object"
            )));
        }
        // The parts of JSON Schema the data-flow check reads must be well formed.
        if schema
            .get("required")
            .is_some_and(|r| !r.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
        {
            return Err(ManagerError::bad_request(format!(
                "{name}.required must be an array of strings"
            )));
        }
        if schema.get("properties").is_some_and(|p| !p.is_object()) {
            return Err(ManagerError::bad_request(format!(
                "{name}.properties must be an object"
            )));
        }
    }
    sqlx::query(
        "INSERT INTO activity_definitions (type, description, input_schema, output_schema) VALUES ($1, $2, $3, $4)
         ON CONFLICT (type) DO UPDATE SET description = excluded.description,
           input_schema = excluded.input_schema, output_schema = excluded.output_schema",
    )
    .bind(&definition.activity_type)
    .bind(&definition.description)
    .bind(to_json(&definition.input_schema)?)
    .bind(to_json(&definition.output_schema)?)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every activity definition, sorted by type.
pub async fn list_activities(db: &Db) -> Result<Vec<ActivityDefinition>> {
    let rows = sqlx::query(
        "SELECT type, description, input_schema, output_schema FROM activity_definitions ORDER BY type",
    )
    .fetch_all(db.read())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ActivityDefinition {
                activity_type: row.get("type"),
                description: row.get("description"),
                input_schema: from_json(row.get("input_schema"), "input schema")?,
                output_schema: from_json(row.get("output_schema"), "output schema")?,
            })
        })
        .collect()
}

/// A client-chosen template id (upstream's templateRef) must be one path segment that is
/// safe in a URL and in logs: 1 to 128 letters, digits, `.`, `_`, `-` or `:`.
pub fn check_template_ref(id: &str) -> Result<()> {
    super::manifests::check_id("orchestration definition id", id)
}

/// Validates and stores a new orchestration definition under `id` (a new one if None).
pub async fn create_orchestration(
    conn: &mut Conn,
    id: Option<String>,
    description: String,
    schema: serde_json::Value,
    activities: BTreeMap<String, Vec<ActivitySpec>>,
) -> Result<OrchestrationDefinition> {
    validate_against_known(conn, &schema, &activities).await?;
    let definition = OrchestrationDefinition {
        id: id.unwrap_or_else(new_id),
        version: 1,
        description,
        schema,
        activities,
    };
    let created_at = next_created_at(conn).await?;
    let inserted = sqlx::query(
        "INSERT INTO orchestration_definitions (id, version, description, schema, activities, created_at)
         VALUES ($1, 1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&definition.id)
    .bind(&definition.description)
    .bind(to_json(&definition.schema)?)
    .bind(to_json(&definition.activities)?)
    .bind(&created_at)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ManagerError::conflict(format!(
            "orchestration definition '{}' already exists",
            definition.id
        )));
    }
    keep_version(conn, &definition, &created_at).await?;
    Ok(definition)
}

/// Adds the next version of the orchestration definition `id`, which becomes what its id
/// names: new deployments run it, and a rollout brings existing participants to it.
/// Participants on older versions keep them (their dispose and migrations run the
/// version that provisioned them).
pub async fn add_version(
    conn: &mut Conn,
    id: &str,
    description: String,
    schema: serde_json::Value,
    activities: BTreeMap<String, Vec<ActivitySpec>>,
) -> Result<OrchestrationDefinition> {
    // Locks the row: two new versions at once get consecutive numbers.
    let current: Option<i64> = sqlx::query_scalar(
        "UPDATE orchestration_definitions SET version = version WHERE id = $1 RETURNING version",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let current = current.ok_or_else(|| {
        ManagerError::not_found(format!("orchestration definition '{id}' not found"))
    })?;
    validate_against_known(conn, &schema, &activities).await?;
    let definition = OrchestrationDefinition {
        id: id.to_string(),
        version: current + 1,
        description,
        schema,
        activities,
    };
    sqlx::query(
        "UPDATE orchestration_definitions SET version = $1, description = $2, schema = $3, activities = $4
         WHERE id = $5",
    )
    .bind(definition.version)
    .bind(&definition.description)
    .bind(to_json(&definition.schema)?)
    .bind(to_json(&definition.activities)?)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    keep_version(conn, &definition, &now()).await?;
    tracing::info!(definition = %id, version = definition.version, "orchestration definition versioned");
    Ok(definition)
}

/// Version `version` of the orchestration definition `id`; "not found" when either is
/// unknown.
pub async fn get_version(
    conn: &mut Conn,
    id: &str,
    version: i64,
) -> Result<OrchestrationDefinition> {
    let row = sqlx::query(
        "SELECT id, version, description, schema, activities FROM orchestration_definition_versions
         WHERE id = $1 AND version = $2",
    )
    .bind(id)
    .bind(version)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| {
        ManagerError::not_found(format!(
            "version {version} of orchestration definition '{id}' not found"
        ))
    })?;
    read(&row)
}

/// Every version of the orchestration definition `id`, oldest first.
pub async fn list_versions(db: &Db, id: &str) -> Result<Vec<OrchestrationDefinition>> {
    let mut conn = db.acquire().await?;
    get_orchestration(&mut conn, id).await?;
    let rows = sqlx::query(
        "SELECT id, version, description, schema, activities FROM orchestration_definition_versions
         WHERE id = $1 ORDER BY version",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(read).collect()
}

/// The version a participant was provisioned with, so that undoing or moving it runs
/// what made it: that version when it is kept, else the definition's newest, else (the
/// definition deleted) None.
pub async fn provisioned_with(
    conn: &mut Conn,
    id: &str,
    version: i64,
) -> Result<Option<OrchestrationDefinition>> {
    match get_version(conn, id, version).await {
        Ok(definition) => return Ok(Some(definition)),
        Err(ManagerError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    match get_orchestration(conn, id).await {
        Ok(definition) => Ok(Some(definition)),
        Err(ManagerError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn keep_version(
    conn: &mut Conn,
    definition: &OrchestrationDefinition,
    created_at: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO orchestration_definition_versions (id, version, description, schema, activities, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&definition.id)
    .bind(definition.version)
    .bind(&definition.description)
    .bind(to_json(&definition.schema)?)
    .bind(to_json(&definition.activities)?)
    .bind(created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// [`validate`] against the activity definitions stored now.
async fn validate_against_known(
    conn: &mut Conn,
    schema: &Value,
    activities: &BTreeMap<String, Vec<ActivitySpec>>,
) -> Result<()> {
    if !schema.is_object() {
        return Err(ManagerError::bad_request("schema must be a JSON object"));
    }
    let rows = sqlx::query("SELECT type, input_schema, output_schema FROM activity_definitions")
        .fetch_all(&mut *conn)
        .await?;
    let mut known = BTreeMap::new();
    for row in &rows {
        let input: Value = from_json(row.get("input_schema"), "input schema")?;
        let output: Value = from_json(row.get("output_schema"), "output schema")?;
        known.insert(row.get::<String, _>("type"), DataFlow::of(&input, &output));
    }
    validate(activities, &known)
}

/// Now, or a millisecond after the newest definition if that is later: creation times
/// strictly increase, so "the newest definition" names one even when two are created
/// within the same millisecond. (The stored format sorts as text.)
async fn next_created_at(conn: &mut Conn) -> Result<String> {
    let newest: Option<String> =
        sqlx::query_scalar("SELECT MAX(created_at) FROM orchestration_definitions")
            .fetch_one(&mut *conn)
            .await?;
    let now = chrono::Utc::now();
    let after_newest = newest
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.to_utc() + chrono::Duration::milliseconds(1))
        .filter(|t| *t > now);
    Ok(after_newest
        .unwrap_or(now)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Deletes an activity definition no orchestration definition uses.
pub async fn delete_activity(db: &Db, activity_type: &str) -> Result<()> {
    let mut tx = crate::store::write(db).await?;
    let users: Vec<String> = all(&mut tx)
        .await?
        .into_iter()
        .filter(|d| {
            d.activities
                .values()
                .flatten()
                .any(|a| a.activity_type == activity_type)
        })
        .map(|d| d.id)
        .collect();
    if !users.is_empty() {
        return Err(ManagerError::bad_request(format!(
            "activity type '{activity_type}' is referenced by orchestration definition(s) {}",
            users.join(", ")
        )));
    }
    let deleted = sqlx::query("DELETE FROM activity_definitions WHERE type = $1")
        .bind(activity_type)
        .execute(&mut *tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(ManagerError::not_found(format!(
            "activity definition '{activity_type}' not found"
        )));
    }
    tx.commit().await?;
    Ok(())
}

/// Deletes an orchestration definition. Orchestrations already started keep running:
/// each holds its own copy of its steps.
pub async fn delete_orchestration(db: &Db, id: &str) -> Result<()> {
    let mut tx = crate::store::write(db).await?;
    let deleted = sqlx::query("DELETE FROM orchestration_definitions WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(ManagerError::not_found(format!(
            "orchestration definition '{id}' not found"
        )));
    }
    sqlx::query("DELETE FROM orchestration_definition_versions WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Every orchestration definition, oldest first.
pub async fn list_orchestrations(db: &Db) -> Result<Vec<OrchestrationDefinition>> {
    let mut conn = db.acquire().await?;
    all(&mut conn).await
}

/// The orchestration definition `id`; a missing one is "not found".
pub async fn get_orchestration(conn: &mut Conn, id: &str) -> Result<OrchestrationDefinition> {
    let row = sqlx::query(SELECT_ONE)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| {
            ManagerError::not_found(format!("orchestration definition '{id}' not found"))
        })?;
    read(&row)
}

/// The definition to run for `orchestration_type`: the one `chosen` names (a dataspace
/// profile's or cell's [`TEMPLATE_PROPERTY`]), else the newest one that defines it, so an
/// operator replaces the default template by posting a new one.
pub async fn select(
    conn: &mut Conn,
    orchestration_type: &str,
    chosen: Option<&str>,
) -> Result<Option<OrchestrationDefinition>> {
    let defines = |d: &OrchestrationDefinition| {
        d.activities
            .get(orchestration_type)
            .is_some_and(|a| !a.is_empty())
    };
    if let Some(id) = chosen {
        let definition = get_orchestration(conn, id).await.map_err(|e| match e {
            ManagerError::NotFound(_) => ManagerError::conflict(format!(
                "the selected orchestration definition '{id}' does not exist"
            )),
            other => other,
        })?;
        return Ok(defines(&definition).then_some(definition));
    }
    newest_defining(conn, orchestration_type, defines).await
}

/// The start of every statement that reads definitions whole: the columns [`read`] takes.
macro_rules! select_definitions {
    () => {
        "SELECT id, version, description, schema, activities FROM orchestration_definitions"
    };
}

/// The newest definition `defines` accepts, among those whose activities name
/// `orchestration_type`: the text filter finds them without reading every definition (an
/// operator may keep many templates) and is only ever wider than the check, since a
/// stored type is a type name and `_` is the one of its characters `LIKE` reads as a
/// wildcard. A type that is no type name is defined by none.
async fn newest_defining(
    conn: &mut Conn,
    orchestration_type: &str,
    defines: impl Fn(&OrchestrationDefinition) -> bool,
) -> Result<Option<OrchestrationDefinition>> {
    if !is_type_name(orchestration_type) {
        return Ok(None);
    }
    let rows = sqlx::query(concat!(
        select_definitions!(),
        " WHERE activities LIKE $1 ORDER BY created_at DESC, id DESC"
    ))
    .bind(format!("%\"{orchestration_type}\"%"))
    .fetch_all(conn)
    .await?;
    for row in &rows {
        let definition = read(row)?;
        if defines(&definition) {
            return Ok(Some(definition));
        }
    }
    Ok(None)
}

/// `definition` as an orchestration that brings a live participant to it (an upgrade,
/// an update of its VPA properties) runs it: its own `orchestration_type` activities, or
/// else its deploy activities re-run (plugins deploy idempotently). A conflict when it
/// defines neither.
pub fn redeploying(
    mut definition: OrchestrationDefinition,
    orchestration_type: &str,
) -> Result<OrchestrationDefinition> {
    let own = definition
        .activities
        .get(orchestration_type)
        .is_some_and(|a| !a.is_empty());
    if !own {
        let deploy = definition
            .activities
            .get(VPA_DEPLOY)
            .filter(|a| !a.is_empty())
            .cloned()
            .ok_or_else(|| {
                ManagerError::conflict(format!(
                    "version {} of orchestration definition '{}' defines neither {orchestration_type} nor {VPA_DEPLOY}",
                    definition.version, definition.id
                ))
            })?;
        definition
            .activities
            .insert(orchestration_type.into(), deploy);
    }
    Ok(definition)
}

/// The property of a dataspace profile or cell that names the orchestration definition
/// its participants are provisioned with.
pub const TEMPLATE_PROPERTY: &str = "cfm.orchestrationDefinitionId";

/// Oldest first.
async fn all(conn: &mut Conn) -> Result<Vec<OrchestrationDefinition>> {
    let rows = sqlx::query(concat!(select_definitions!(), " ORDER BY created_at, id"))
        .fetch_all(conn)
        .await?;
    rows.iter().map(read).collect()
}

static SELECT_ONE: &str = concat!(select_definitions!(), " WHERE id = $1");

fn read(row: &crate::store::Row) -> Result<OrchestrationDefinition> {
    Ok(OrchestrationDefinition {
        id: row.get("id"),
        version: row.get("version"),
        description: row.get("description"),
        schema: from_json(row.get("schema"), "orchestration schema")?,
        activities: from_json(row.get("activities"), "orchestration activities")?,
    })
}

/// At most this long: a name is a `LIKE` pattern's core when definitions are looked up
/// by it, and SQLite refuses patterns over 50,000 bytes.
const MAX_TYPE_NAME: usize = 256;

fn is_type_name(name: &str) -> bool {
    (1..=MAX_TYPE_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What an activity type needs and produces, read from its definition's JSON Schemas:
/// the `required` keys of its input, the `properties` of its output.
#[derive(Debug, Clone, Default)]
struct DataFlow {
    needs: Vec<String>,
    produces: BTreeSet<String>,
}

impl DataFlow {
    fn of(input: &Value, output: &Value) -> Self {
        let needs = input
            .get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let produces = output
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        Self { needs, produces }
    }
}

/// Known types, unique ids, known dependencies, no cycles, and every required input
/// produced by a dependency or present in the base data.
fn validate(
    activities: &BTreeMap<String, Vec<ActivitySpec>>,
    known: &BTreeMap<String, DataFlow>,
) -> Result<()> {
    let bad = |m: String| Err(ManagerError::bad_request(m));
    if activities.is_empty() {
        return bad("activities must define at least one orchestration type".into());
    }
    for (orchestration_type, list) in activities {
        if !is_type_name(orchestration_type) {
            return bad(format!(
                "orchestration type '{orchestration_type}' must match ^[a-zA-Z0-9._-]{{1,{MAX_TYPE_NAME}}}$"
            ));
        }
        let mut ids = BTreeSet::new();
        for activity in list {
            let at = format!("activity '{}' of {orchestration_type}", activity.id);
            if activity.id.is_empty() {
                return bad(format!(
                    "an activity of {orchestration_type} has an empty id"
                ));
            }
            if !ids.insert(activity.id.as_str()) {
                return bad(format!("{at} is defined twice"));
            }
            if !known.contains_key(&activity.activity_type) {
                return bad(format!(
                    "{at} has unknown activity type '{}'; create its activity definition first",
                    activity.activity_type
                ));
            }
        }
        for activity in list {
            for dep in &activity.depends_on {
                if !ids.contains(dep.as_str()) || *dep == activity.id {
                    return bad(format!(
                        "activity '{}' of {orchestration_type} depends on unknown activity '{dep}'",
                        activity.id
                    ));
                }
            }
        }
        if let Some(stuck) = cycle(list) {
            return bad(format!(
                "the activities of {orchestration_type} form a dependency cycle through '{stuck}'"
            ));
        }
    }
    check_data_flow(activities, known)
}

/// Every key an activity's input schema requires must be in the base data or produced
/// by one of its (transitive) dependencies. Orchestrations other than deploy start from
/// what the deploy gathered (dispose compensates a deploy), so they may also use what
/// the same template's deploy activities produce.
fn check_data_flow(
    activities: &BTreeMap<String, Vec<ActivitySpec>>,
    known: &BTreeMap<String, DataFlow>,
) -> Result<()> {
    let flow = |a: &ActivitySpec| known.get(&a.activity_type).cloned().unwrap_or_default();
    let deploy_outputs: BTreeSet<String> = activities
        .get(VPA_DEPLOY)
        .into_iter()
        .flatten()
        .flat_map(|a| flow(a).produces)
        .collect();
    for (orchestration_type, list) in activities {
        let by_id: BTreeMap<&str, &ActivitySpec> =
            list.iter().map(|a| (a.id.as_str(), a)).collect();
        for activity in list {
            let mut available: BTreeSet<String> =
                keys::BASE.iter().map(|k| k.to_string()).collect();
            if orchestration_type != VPA_DEPLOY {
                available.extend(deploy_outputs.iter().cloned());
            }
            let mut stack: Vec<&str> = activity.depends_on.iter().map(String::as_str).collect();
            let mut seen = BTreeSet::new();
            while let Some(id) = stack.pop() {
                if !seen.insert(id) {
                    continue;
                }
                if let Some(dep) = by_id.get(id) {
                    available.extend(flow(dep).produces);
                    stack.extend(dep.depends_on.iter().map(String::as_str));
                }
            }
            if let Some(missing) = flow(activity)
                .needs
                .iter()
                .find(|k| !available.contains(*k))
            {
                return Err(ManagerError::bad_request(format!(
                    "activity '{}' of {orchestration_type} requires input '{missing}', which neither the base data nor any activity it depends on produces",
                    activity.id
                )));
            }
        }
    }
    Ok(())
}

/// Kahn's algorithm: returns an activity on a cycle, if there is one.
fn cycle(list: &[ActivitySpec]) -> Option<String> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    loop {
        let ready: Vec<&str> = list
            .iter()
            .filter(|a| !done.contains(a.id.as_str()))
            .filter(|a| a.depends_on.iter().all(|d| done.contains(d.as_str())))
            .map(|a| a.id.as_str())
            .collect();
        if ready.is_empty() {
            return list
                .iter()
                .find(|a| !done.contains(a.id.as_str()))
                .map(|a| a.id.clone());
        }
        done.extend(ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, deps: &[&str]) -> ActivitySpec {
        ActivitySpec {
            id: id.into(),
            activity_type: "t".into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn check(list: Vec<ActivitySpec>) -> Result<()> {
        let known = BTreeMap::from([("t".to_string(), DataFlow::default())]);
        validate(&BTreeMap::from([("deploy".to_string(), list)]), &known)
    }

    fn typed(id: &str, activity_type: &str, deps: &[&str]) -> ActivitySpec {
        ActivitySpec {
            activity_type: activity_type.into(),
            ..spec(id, deps)
        }
    }

    #[test]
    fn required_inputs_must_flow_from_dependencies_or_base_data() {
        let flow = |needs: &[&str], produces: &[&str]| {
            DataFlow::of(
                &serde_json::json!({"type": "object", "required": needs}),
                &serde_json::json!({"properties": produces.iter().map(|p| (p.to_string(), serde_json::json!({}))).collect::<serde_json::Map<_, _>>()}),
            )
        };
        let known = BTreeMap::from([
            (
                "vault".to_string(),
                flow(&[keys::PARTICIPANT_ID], &["apiKeyPath"]),
            ),
            ("k8s".to_string(), flow(&["apiKeyPath"], &["namespace"])),
            ("dns".to_string(), flow(&["namespace"], &[])),
        ]);
        let template = |deploy: Vec<ActivitySpec>, dispose: Vec<ActivitySpec>| {
            BTreeMap::from([
                (VPA_DEPLOY.to_string(), deploy),
                ("cfm.orchestration.vpa.dispose".to_string(), dispose),
            ])
        };
        // Transitive: dns needs what k8s made, k8s what vault made.
        let good = template(
            vec![
                typed("v", "vault", &[]),
                typed("k", "k8s", &["v"]),
                typed("d", "dns", &["k"]),
            ],
            // Dispose may use what the deploy produced.
            vec![typed("d", "dns", &[])],
        );
        validate(&good, &known).unwrap();
        // k8s without its dependency on vault: named, with the missing key.
        let bad = template(
            vec![typed("v", "vault", &[]), typed("k", "k8s", &[])],
            vec![],
        );
        let err = validate(&bad, &known).unwrap_err().to_string();
        assert!(err.contains("'k'") && err.contains("'apiKeyPath'"), "{err}");
        // In the deploy itself, a sibling's output is not enough.
        let bad = template(
            vec![
                typed("v", "vault", &[]),
                typed("k", "k8s", &["v"]),
                typed("d", "dns", &[]),
            ],
            vec![],
        );
        let err = validate(&bad, &known).unwrap_err().to_string();
        assert!(err.contains("'d'") && err.contains("'namespace'"), "{err}");
    }

    #[test]
    fn valid_dag_passes() {
        check(vec![
            spec("a", &[]),
            spec("b", &["a"]),
            spec("c", &["a", "b"]),
        ])
        .unwrap();
    }

    #[test]
    fn cycles_unknown_deps_and_types_are_named() {
        let err = check(vec![spec("a", &["b"]), spec("b", &["a"])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cycle"), "{err}");
        let err = check(vec![spec("a", &["zz"])]).unwrap_err().to_string();
        assert!(err.contains("'zz'"), "{err}");
        let mut unknown = spec("a", &[]);
        unknown.activity_type = "nope".into();
        let err = check(vec![unknown]).unwrap_err().to_string();
        assert!(err.contains("'nope'"), "{err}");
        let err = check(vec![spec("a", &[]), spec("a", &[])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice"), "{err}");
    }

    /// A scratch database that knows activity type `t` (as `spec` makes them), and the
    /// directory that holds it.
    async fn knowing_activity_t() -> (tempfile::TempDir, crate::store::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_sqlite(&dir.path().join("cfm.db"))
            .await
            .unwrap();
        let activity = ActivityDefinition {
            activity_type: "t".into(),
            description: String::new(),
            input_schema: serde_json::json!({}),
            output_schema: serde_json::json!({}),
        };
        let mut conn = db.writer().acquire().await.unwrap();
        put_activity(&mut conn, &activity).await.unwrap();
        drop(conn);
        (dir, db)
    }

    /// Creates a definition running activity `a` (of type `t`) for each of `types`;
    /// returns its id.
    async fn defining(conn: &mut Conn, types: &[&str]) -> String {
        let activities = types
            .iter()
            .map(|t| (t.to_string(), vec![spec("a", &[])]))
            .collect();
        create_orchestration(conn, None, String::new(), serde_json::json!({}), activities)
            .await
            .unwrap()
            .id
    }

    #[tokio::test]
    async fn the_newest_definition_is_the_last_created_even_within_one_millisecond() {
        let (_dir, db) = knowing_activity_t().await;
        let mut conn = db.writer().acquire().await.unwrap();
        let mut created = Vec::new();
        for _ in 0..20 {
            created.push(defining(&mut conn, &["deploy"]).await);
        }
        let newest = select(&mut conn, "deploy", None).await.unwrap().unwrap();
        assert_eq!(Some(&newest.id), created.last());
        let order: Vec<String> = all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(order, created);
    }

    #[tokio::test]
    async fn the_newest_definition_of_a_type_is_found_past_newer_ones_its_text_filter_lets_through()
    {
        let (_dir, db) = knowing_activity_t().await;
        let mut conn = db.writer().acquire().await.unwrap();
        let underscored = defining(&mut conn, &["x_deploy"]).await;
        // Newer, and `LIKE '%"x_deploy"%'` matches it (`_` is any character), but it
        // defines another type; so does the upper-case twin (SQLite's `LIKE` ignores
        // case), and the type that contains the name does not pass the filter at all.
        let dotted = defining(&mut conn, &["x.deploy"]).await;
        defining(&mut conn, &["X_DEPLOY", "pre-x_deploy"]).await;
        let found = |definition: Option<OrchestrationDefinition>| definition.map(|d| d.id);
        assert_eq!(
            found(select(&mut conn, "x_deploy", None).await.unwrap()),
            Some(underscored)
        );
        assert_eq!(
            found(select(&mut conn, "x.deploy", None).await.unwrap()),
            Some(dotted)
        );
        let too_long = "x".repeat(MAX_TYPE_NAME + 1);
        for undefined in ["x", "deploy", "x%", "x\"deploy", "", &too_long] {
            assert_eq!(
                found(select(&mut conn, undefined, None).await.unwrap()),
                None,
                "{undefined:?}"
            );
        }
    }
}
