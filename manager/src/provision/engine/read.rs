//! Reading orchestrations back: by id for the engine, by predicate for the API.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::Row;

use super::Engine;
use crate::error::{ManagerError, Result};
use crate::model::{Orchestration, Step, StepState};
use crate::query::{Field, Literal, Params, Predicate};
use crate::store::{self, Conn, Page, from_json};

impl Engine {
    /// Reads an orchestration with its steps.
    pub async fn get(&self, id: &str) -> Result<Orchestration> {
        let predicate = Predicate::default().and_equals("id", Literal::Text(id.to_string()));
        // A read by id is cheap and the engine's own: not queued behind API predicates.
        self.read(self.db.read(), &predicate, Page::default())
            .await?
            .pop()
            .ok_or_else(|| ManagerError::not_found(format!("orchestration '{id}' not found")))
    }

    /// How many orchestrations match a predicate in all, counted up to [`store::COUNT_LIMIT`] + 1 (see
    /// [`store::Total::counted`]).
    pub async fn count(&self, predicate: &Predicate) -> Result<i64> {
        let count =
            predicate.select_count_capped(SELECT, &orchestration_field, self.db.backend())?;
        store::count(self.db.queries(), count).await
    }

    /// Orchestrations matching a predicate (upstream's `/orchestrations/query`), sorted by
    /// id, each with its steps.
    pub async fn query(&self, predicate: &Predicate, page: Page) -> Result<Vec<Orchestration>> {
        self.read(self.db.queries(), predicate, page).await
    }

    async fn read(
        &self,
        pool: &sqlx::AnyPool,
        predicate: &Predicate,
        page: Page,
    ) -> Result<Vec<Orchestration>> {
        let mut conn = pool.acquire().await?;
        let rows = predicate
            .select_page(SELECT, &orchestration_field, self.db.backend(), page)?
            .fetch_all(&mut *conn)
            .await?;
        let ids: Vec<String> = rows.iter().map(|row| row.get("id")).collect();
        let mut steps = steps_of(&mut conn, &ids).await?;
        rows.iter()
            .zip(&ids)
            .map(|(row, id)| read_orchestration(row, &steps.remove(id).unwrap_or_default()))
            .collect()
    }
}

/// The steps of the orchestrations `ids`, each in its template's order: one round trip
/// for a page, instead of one per orchestration.
async fn steps_of(conn: &mut Conn, ids: &[String]) -> Result<HashMap<String, Vec<store::Row>>> {
    let mut by_orchestration: HashMap<String, Vec<store::Row>> = HashMap::new();
    if ids.is_empty() {
        return Ok(by_orchestration);
    }
    let mut params = Params::default();
    let placeholders: Vec<String> = ids
        .iter()
        .map(|id| params.push(Literal::Text(id.clone())))
        .collect();
    let sql = format!(
        "SELECT orchestration_id, activity_id, activity_type, depends_on, state, attempt, last_error, started_at, completed_at
         FROM orchestration_steps WHERE orchestration_id IN ({}) ORDER BY orchestration_id, position",
        placeholders.join(", ")
    );
    for row in params.query(sql).fetch_all(conn).await? {
        by_orchestration
            .entry(row.get("orchestration_id"))
            .or_default()
            .push(row);
    }
    Ok(by_orchestration)
}

/// A step as the engine works with it.
pub(super) struct StepRow {
    pub activity_id: String,
    pub activity_type: String,
    pub depends_on: Vec<String>,
    pub state: StepState,
    pub attempt: i64,
    pub retries: i64,
    /// The plugin that ran it, once completed and where the agent named it.
    pub plugin_digest: Option<String>,
}

/// The step columns [`step_rows`] reads; qualified where a join with `orchestrations`
/// would make a name ambiguous.
pub(super) const STEP_COLUMNS: &str = "activity_id, activity_type, depends_on, orchestration_steps.state AS state, attempt, retries, plugin_digest";

pub(super) fn step_rows(rows: &[store::Row]) -> Result<Vec<StepRow>> {
    rows.iter()
        .map(|r| {
            Ok(StepRow {
                activity_id: r.get("activity_id"),
                activity_type: r.get("activity_type"),
                depends_on: from_json(r.get("depends_on"), "step dependencies")?,
                state: step_state(r)?,
                attempt: r.get("attempt"),
                retries: r.get("retries"),
                plugin_digest: r.get("plugin_digest"),
            })
        })
        .collect()
}

fn read_orchestration(row: &store::Row, step_rows: &[store::Row]) -> Result<Orchestration> {
    let mut steps = Vec::with_capacity(step_rows.len());
    let mut completed = serde_json::Map::new();
    for s in step_rows {
        let step = Step {
            id: s.get("activity_id"),
            activity_type: s.get("activity_type"),
            depends_on: from_json(s.get("depends_on"), "step dependencies")?,
            state: step_state(s)?,
            attempts: s.get("attempt"),
            last_error: s.get("last_error"),
            started_timestamp: s.get("started_at"),
            completed_timestamp: s.get("completed_at"),
        };
        if step.state == StepState::Completed {
            completed.insert(step.id.clone(), Value::Bool(true));
        }
        steps.push(step);
    }
    Ok(Orchestration {
        id: row.get("id"),
        correlation_id: row.get("correlation_id"),
        definition_id: row.get("definition_id"),
        definition_version: row.get("definition_version"),
        state: row.get("state"),
        state_timestamp: row.get("state_timestamp"),
        created_timestamp: row.get("created_timestamp"),
        orchestration_type: row.get("orchestration_type"),
        steps,
        processing_data: from_json(row.get("processing_data"), "processing data")?,
        output_data: from_json(row.get("output_data"), "output data")?,
        completed,
        error_detail: row.get("error_detail"),
    })
}

/// Query fields of orchestrations and where they are stored.
fn orchestration_field(field: &str) -> Option<Field> {
    Some(match field {
        "id" => Field::Text("id"),
        "correlationId" => Field::Text("correlation_id"),
        "definitionId" => Field::Text("definition_id"),
        "definitionVersion" => Field::Integer("definition_version"),
        "orchestrationType" => Field::Text("orchestration_type"),
        "state" => Field::Integer("state"),
        "stateTimestamp" => Field::Text("state_timestamp"),
        "createdTimestamp" => Field::Text("created_timestamp"),
        "errorDetail" => Field::Text("error_detail"),
        _ => return None,
    })
}

/// A row's `state` column as a [`StepState`] (or `Option<StepState>` where a join may
/// find no step); a state no release writes is corrupt data, not a panic.
pub(super) fn step_state<'r, T>(row: &'r store::Row) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get("state")
        .map_err(|e| ManagerError::Corrupt(format!("step state: {e}")))
}

const SELECT: &str =
    "SELECT id, correlation_id, definition_id, definition_version, orchestration_type, state,
      state_timestamp, created_timestamp, processing_data, output_data, error_detail
    FROM orchestrations";
