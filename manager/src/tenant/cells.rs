//! Cells: the shared runtime clusters participants are placed in.

use sqlx::{AssertSqlSafe, Row};

use crate::error::{ManagerError, Result};
use crate::model::{Cell, DEPLOYMENT_STATES, Properties, new_id, now};
use crate::store::{Conn, Db, from_json, to_json};

pub struct NewCell {
    pub external_id: String,
    pub state: Option<String>,
    pub properties: Properties,
}

pub async fn create(db: &Db, new: NewCell) -> Result<Cell> {
    let state = new.state.unwrap_or_else(|| "active".into());
    if !DEPLOYMENT_STATES.contains(&state.as_str()) {
        return Err(ManagerError::bad_request(format!(
            "state '{state}' is not one of {}",
            DEPLOYMENT_STATES.join(", ")
        )));
    }
    let cell = Cell {
        id: new_id(),
        version: 0,
        external_id: new.external_id,
        state,
        state_timestamp: now(),
        properties: new.properties,
    };
    let inserted = sqlx::query(
        "INSERT INTO cells (id, version, external_id, state, state_timestamp, properties)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&cell.id)
    .bind(cell.version)
    .bind(&cell.external_id)
    .bind(&cell.state)
    .bind(&cell.state_timestamp)
    .bind(to_json(&cell.properties))
    .execute(db.writer())
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ManagerError::conflict(format!(
            "a cell with externalId '{}' already exists",
            cell.external_id
        )));
    }
    Ok(cell)
}

pub async fn list(db: &Db) -> Result<Vec<Cell>> {
    let rows = sqlx::query(AssertSqlSafe(format!("{SELECT} ORDER BY id")))
        .fetch_all(db.read())
        .await?;
    rows.iter().map(read).collect()
}

/// Finds a cell by its id or, failing that, its external id.
pub async fn find(conn: &mut Conn, id_or_external: &str) -> Result<Option<Cell>> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "{SELECT} WHERE id = $1 OR (external_id = $1 AND external_id <> '') ORDER BY id = $1 DESC LIMIT 1"
    )))
    .bind(id_or_external)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(read).transpose()
}

const SELECT: &str =
    "SELECT id, version, external_id, state, state_timestamp, properties FROM cells";

fn read(row: &crate::store::Row) -> Result<Cell> {
    Ok(Cell {
        id: row.get("id"),
        version: row.get("version"),
        external_id: row.get("external_id"),
        state: row.get("state"),
        state_timestamp: row.get("state_timestamp"),
        properties: from_json(row.get("properties"), "cell properties")?,
    })
}
