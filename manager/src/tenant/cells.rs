//! Cells: the shared runtime clusters participants are placed in.

use sqlx::{AssertSqlSafe, Row};

use crate::error::{ManagerError, Result};
use crate::model::{Cell, DEPLOYMENT_STATES, Properties, new_id, now};
use crate::store::{self, Conn, Db, Page, Paged, Table, from_json, to_json};
use crate::tenant::{profiles, tenants};

/// A cell to create, as the API received it.
pub struct NewCell {
    /// The cluster's own id; unique among cells unless empty.
    pub external_id: String,
    /// One of [`DEPLOYMENT_STATES`]; `active` when absent.
    pub state: Option<String>,
    /// When the cell entered its state (RFC 3339), kept as given; now when absent.
    pub state_timestamp: Option<String>,
    /// Per-cell settings, handed to plugins with every VPA placed in the cell.
    pub properties: Properties,
}

/// Creates a cell; an unknown state is a bad request, a taken `external_id` a conflict.
pub async fn create(db: &Db, new: NewCell) -> Result<Cell> {
    let state = new.state.unwrap_or_else(|| "active".into());
    if !DEPLOYMENT_STATES.contains(&state.as_str()) {
        return Err(ManagerError::bad_request(format!(
            "state '{state}' is not one of {}",
            DEPLOYMENT_STATES.join(", ")
        )));
    }
    let state_timestamp = match new.state_timestamp {
        None => now(),
        Some(given) if chrono::DateTime::parse_from_rfc3339(&given).is_ok() => given,
        // Not echoed: it is the client's own text, of any length.
        Some(_) => {
            return Err(ManagerError::bad_request(
                "stateTimestamp is not an RFC 3339 timestamp",
            ));
        }
    };
    let cell = Cell {
        id: new_id(),
        version: 0,
        external_id: new.external_id,
        state,
        state_timestamp,
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
    .bind(to_json(&cell.properties)?)
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

/// A page of cells, sorted by id.
pub async fn list(db: &Db, page: Page) -> Result<Paged<Cell>> {
    let (rows, total) = store::paged(db, SELECT, None, page).await?;
    let items = rows.iter().map(read).collect::<Result<_>>()?;
    Ok(Paged { items, total, page })
}

/// The cell `id`; a missing one is "not found".
pub async fn get(conn: &mut Conn, id: &str) -> Result<Cell> {
    let row = sqlx::query(AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ManagerError::not_found(format!("cell '{id}' not found")))?;
    read(&row)
}

/// Deletes a cell with its dataspace deployments and the records of participants
/// decommissioned there. Refused while a participant placed in it is not `disposed`.
pub async fn delete(db: &Db, id: &str, expected_version: Option<i64>) -> Result<()> {
    let mut tx = store::write(db).await?;
    store::lock_row(&mut tx, Table::Cells, id).await?;
    let cell = get(&mut tx, id).await?;
    tenants::check_version("cell", id, cell.version, expected_version)?;
    profiles::refuse_while_participants_live(&mut tx, profiles::Owner::Cell(id)).await?;
    for statement in [
        "DELETE FROM participant_profiles WHERE cell_id = $1",
        "DELETE FROM dataspace_deployments WHERE cell_id = $1",
        "DELETE FROM cells WHERE id = $1",
    ] {
        sqlx::query(statement).bind(id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
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
