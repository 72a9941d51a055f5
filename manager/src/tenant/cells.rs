//! Cells: the shared runtime clusters participants are placed in.

use std::collections::{BTreeMap, HashMap};

use sqlx::{AssertSqlSafe, Row};

use crate::error::{ManagerError, Result};
use crate::lifecycle::MigrationState;
use crate::model::{
    Cell, CellCapacity, CellUsage, DEPLOYMENT_STATES, FLEET_CELL_STATES, Properties, is_cell_state,
    new_id, now,
};
use crate::query::{Literal, Params};
use crate::store::{self, Conn, Db, Page, Paged, Table, from_json, to_json};
use crate::tenant::{drains, profiles, tenants};

/// A cell to create, as the API received it.
pub struct NewCell {
    /// The cluster's own id; unique among cells unless empty.
    pub external_id: String,
    /// A cell state (see [`is_cell_state`]) but `draining` and `drained`; `active` when absent.
    pub state: Option<String>,
    /// When the cell entered its state (RFC 3339), kept as given; now when absent.
    pub state_timestamp: Option<String>,
    /// Per-cell settings, handed to plugins with every VPA placed in the cell.
    pub properties: Properties,
    /// Labels placement requirements match.
    pub labels: BTreeMap<String, String>,
    /// How many participants it takes; None: no limit.
    pub capacity: Option<CellCapacity>,
}

/// A change to a cell: what is present is set, the rest stays.
#[derive(Debug, Default)]
pub struct Patch {
    /// The new state: any cell state but `draining` (a drain sets it) and `drained`.
    pub state: Option<String>,
    /// Labels to set (replacing their values).
    pub labels: BTreeMap<String, String>,
    /// Label keys to remove, after those set.
    pub removed_labels: Vec<String>,
    /// The new capacity: `Some(None)` removes the limit.
    pub capacity: Option<Option<CellCapacity>>,
    /// Properties to set (replacing their values).
    pub properties: Properties,
    /// Property keys to remove, after those set.
    pub removed_properties: Vec<String>,
}

/// Creates a cell; an unknown state is a bad request, a taken `external_id` a conflict.
pub async fn create(db: &Db, new: NewCell) -> Result<Cell> {
    let state = new.state.unwrap_or_else(|| "active".into());
    check_settable_state(&state)?;
    validate(&new.labels, new.capacity)?;
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
        labels: new.labels,
        capacity: new.capacity,
        usage: CellUsage::default(),
    };
    let inserted = sqlx::query(
        "INSERT INTO cells (id, version, external_id, state, state_timestamp, properties, labels, max_participants)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(&cell.id)
    .bind(cell.version)
    .bind(&cell.external_id)
    .bind(&cell.state)
    .bind(&cell.state_timestamp)
    .bind(to_json(&cell.properties)?)
    .bind(to_json(&cell.labels)?)
    .bind(cell.capacity.map(|c| c.max_participants))
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

/// A page of cells, sorted by id, each with its usage.
pub async fn list(db: &Db, page: Page) -> Result<Paged<Cell>> {
    let (rows, total) = store::paged(db, SELECT, None, page).await?;
    let cells = rows.iter().map(read).collect::<Result<_>>()?;
    let items = with_usage(&mut *db.acquire().await?, cells).await?;
    Ok(Paged { items, total, page })
}

/// The cell `id` with its usage; a missing one is "not found".
pub async fn get(conn: &mut Conn, id: &str) -> Result<Cell> {
    let row = sqlx::query(AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ManagerError::not_found(format!("cell '{id}' not found")))?;
    let mut cell = read(&row)?;
    cell.usage = usage_of(conn, &cell.id, cell.capacity).await?;
    Ok(cell)
}

/// Every cell with its usage, sorted by id: what placement and rebalancing weigh.
pub async fn all(conn: &mut Conn) -> Result<Vec<Cell>> {
    let cells = all_uncounted(conn).await?;
    with_usage(conn, cells).await
}

/// Every cell sorted by id, its usage left at zero: for callers that count only the
/// cells they need ([`usage_of`]), since counting them all scans every participant.
pub(crate) async fn all_uncounted(conn: &mut Conn) -> Result<Vec<Cell>> {
    let rows = sqlx::query(AssertSqlSafe(format!("{SELECT} ORDER BY id")))
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(read).collect()
}

/// The cells `ids` sorted by id, uncounted as [`all_uncounted`], each share-locked for
/// the rest of the transaction in that order as it is read.
pub(crate) async fn shared_uncounted(conn: &mut Conn, ids: &[&str]) -> Result<Vec<Cell>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut params = Params::default();
    let marks: Vec<String> = ids
        .iter()
        .map(|id| params.push(Literal::Text(id.to_string())))
        .collect();
    let lock = store::for_share(conn);
    let sql = format!(
        "{SELECT} WHERE id IN ({}) ORDER BY id{lock}",
        marks.join(", ")
    );
    let rows = params.query(sql).fetch_all(&mut *conn).await?;
    rows.iter().map(read).collect()
}

/// Changes a cell's state, labels, capacity or properties. With `expected_version`, a
/// cell changed since the client read it is a conflict. A cell being drained keeps its
/// state until the drain ends or is cancelled.
pub async fn patch(db: &Db, id: &str, patch: Patch, expected_version: Option<i64>) -> Result<Cell> {
    let mut tx = store::write(db).await?;
    if !store::lock_row(&mut tx, Table::Cells, id).await? {
        return Err(ManagerError::not_found(format!("cell '{id}' not found")));
    }
    let mut cell = get(&mut tx, id).await?;
    tenants::check_version("cell", id, cell.version, expected_version)?;
    if let Some(state) = patch.state.filter(|s| *s != cell.state) {
        check_settable_state(&state)?;
        if let Some(drain) = drains::unfinished_of(&mut tx, id).await? {
            return Err(ManagerError::conflict(format!(
                "cell '{id}' is being drained (drain '{}' is {}); cancel the drain before changing its state",
                drain.id, drain.state
            )));
        }
        cell.state = state;
        cell.state_timestamp = now();
    }
    cell.labels.extend(patch.labels);
    for key in &patch.removed_labels {
        cell.labels.remove(key);
    }
    if let Some(capacity) = patch.capacity {
        cell.capacity = capacity;
    }
    cell.properties.extend(patch.properties);
    for key in &patch.removed_properties {
        cell.properties.remove(key);
    }
    validate(&cell.labels, cell.capacity)?;
    cell.version += 1;
    write_back(&mut tx, &cell).await?;
    tx.commit().await?;
    cell.usage = with_utilisation(Some(cell.usage), cell.capacity);
    Ok(cell)
}

/// Moves a cell to `state` inside the caller's transaction (drains do).
pub(crate) async fn set_state(conn: &mut Conn, id: &str, state: &str) -> Result<()> {
    sqlx::query(
        "UPDATE cells SET state = $1, state_timestamp = $2, version = version + 1 WHERE id = $3 AND state <> $1",
    )
    .bind(state)
    .bind(now())
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The usage of one cell.
pub(crate) async fn usage_of(
    conn: &mut Conn,
    id: &str,
    capacity: Option<CellCapacity>,
) -> Result<CellUsage> {
    let participants: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM participant_profiles WHERE cell_id = $1 AND disposed = 0",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let arriving: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM migrations WHERE target_cell_id = $1 AND state IN ({})",
        MigrationState::RESERVING_SQL
    )))
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(with_utilisation(
        Some(CellUsage {
            participants,
            arriving,
            utilisation: None,
        }),
        capacity,
    ))
}

/// Deletes a cell with its dataspace deployments and the records of participants
/// decommissioned there. Refused while a participant placed in it is not `disposed`.
pub async fn delete(db: &Db, id: &str, expected_version: Option<i64>) -> Result<()> {
    let mut tx = store::write(db).await?;
    store::lock_row(&mut tx, Table::Cells, id).await?;
    let cell = get(&mut tx, id).await?;
    tenants::check_version("cell", id, cell.version, expected_version)?;
    profiles::refuse_while_participants_live(&mut tx, profiles::Owner::Cell(id)).await?;
    if let Some(drain) = drains::unfinished_of(&mut tx, id).await? {
        return Err(ManagerError::conflict(format!(
            "cell '{id}' is being drained (drain '{}'); cancel the drain first",
            drain.id
        )));
    }
    for statement in [
        "DELETE FROM migrations WHERE profile_id IN (SELECT id FROM participant_profiles WHERE cell_id = $1)",
        "DELETE FROM capability_calls WHERE participant_context_id IN (SELECT id FROM participant_profiles WHERE cell_id = $1)",
        "DELETE FROM participant_profiles WHERE cell_id = $1",
        "DELETE FROM dataspace_deployments WHERE cell_id = $1",
        "DELETE FROM drains WHERE cell_id = $1",
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

const SELECT: &str = "SELECT id, version, external_id, state, state_timestamp, properties, labels, max_participants FROM cells";

/// `draining` and `drained` are a drain's to set; the rest an operator may.
fn check_settable_state(state: &str) -> Result<()> {
    if matches!(state, "draining" | "drained") {
        return Err(ManagerError::bad_request(format!(
            "state '{state}' is set by draining the cell: POST /cells/{{id}}/drain"
        )));
    }
    if !is_cell_state(state) {
        return Err(ManagerError::bad_request(format!(
            "state '{}' is not one of {}, {}",
            state.chars().take(64).collect::<String>(),
            DEPLOYMENT_STATES.join(", "),
            FLEET_CELL_STATES.join(", ")
        )));
    }
    Ok(())
}

/// Label keys and values are short printable text; a capacity is not negative.
fn validate(labels: &BTreeMap<String, String>, capacity: Option<CellCapacity>) -> Result<()> {
    for (key, value) in labels {
        let fine = |s: &str, max: usize| s.len() <= max && !s.chars().any(char::is_control);
        if key.is_empty() || !fine(key, 63) || !fine(value, 253) {
            return Err(ManagerError::bad_request(
                "labels are keys of 1 to 63 characters with values of at most 253, without control characters",
            ));
        }
    }
    if labels.len() > 64 {
        return Err(ManagerError::bad_request("a cell has at most 64 labels"));
    }
    if capacity.is_some_and(|c| c.max_participants < 0) {
        return Err(ManagerError::bad_request(
            "capacity.maxParticipants must not be negative",
        ));
    }
    Ok(())
}

async fn write_back(conn: &mut Conn, cell: &Cell) -> Result<()> {
    sqlx::query(
        "UPDATE cells SET state = $1, state_timestamp = $2, properties = $3, labels = $4,
           max_participants = $5, version = $6 WHERE id = $7",
    )
    .bind(&cell.state)
    .bind(&cell.state_timestamp)
    .bind(to_json(&cell.properties)?)
    .bind(to_json(&cell.labels)?)
    .bind(cell.capacity.map(|c| c.max_participants))
    .bind(cell.version)
    .bind(&cell.id)
    .execute(conn)
    .await?;
    Ok(())
}

/// `cells`, each with its usage (counted for all cells at once).
async fn with_usage(conn: &mut Conn, mut cells: Vec<Cell>) -> Result<Vec<Cell>> {
    let usage = usage(conn).await?;
    for cell in &mut cells {
        cell.usage = with_utilisation(usage.get(&cell.id).copied(), cell.capacity);
    }
    Ok(cells)
}

/// Participants and arrivals of every cell that has any, by cell id.
async fn usage(conn: &mut Conn) -> Result<HashMap<String, CellUsage>> {
    let mut usage: HashMap<String, CellUsage> = HashMap::new();
    let placed = sqlx::query(
        "SELECT cell_id, COUNT(*) AS n FROM participant_profiles WHERE disposed = 0 GROUP BY cell_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in placed {
        usage.entry(row.get("cell_id")).or_default().participants = row.get("n");
    }
    let arriving = sqlx::query(AssertSqlSafe(format!(
        "SELECT target_cell_id, COUNT(*) AS n FROM migrations WHERE state IN ({}) GROUP BY target_cell_id",
        MigrationState::RESERVING_SQL
    )))
    .fetch_all(&mut *conn)
    .await?;
    for row in arriving {
        usage.entry(row.get("target_cell_id")).or_default().arriving = row.get("n");
    }
    Ok(usage)
}

fn with_utilisation(usage: Option<CellUsage>, capacity: Option<CellCapacity>) -> CellUsage {
    let mut usage = usage.unwrap_or_default();
    usage.utilisation = capacity.map(|c| {
        if c.max_participants == 0 {
            // A cell that takes nobody is full; JSON has no infinity.
            1.0
        } else {
            usage.taken() as f64 / c.max_participants as f64
        }
    });
    usage
}

fn read(row: &crate::store::Row) -> Result<Cell> {
    Ok(Cell {
        id: row.get("id"),
        version: row.get("version"),
        external_id: row.get("external_id"),
        state: row.get("state"),
        state_timestamp: row.get("state_timestamp"),
        properties: from_json(row.get("properties"), "cell properties")?,
        labels: from_json(row.get("labels"), "cell labels")?,
        capacity: row
            .get::<Option<i64>, _>("max_participants")
            .map(|max_participants| CellCapacity { max_participants }),
        usage: CellUsage::default(),
    })
}
