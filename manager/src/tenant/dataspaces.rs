//! Dataspace profiles (per-dataspace settings and credential specs) and their
//! deployments to cells.

use sqlx::{AssertSqlSafe, Row};

use crate::error::{ManagerError, Result};
use crate::model::{DataspaceDeployment, DataspaceProfile, DataspaceSpec, Properties, new_id, now};
use crate::store::{self, Conn, Db, Page, Paged, from_json, to_json};
use crate::tenant::{cells, profiles};

/// Creates a dataspace profile, deployed to no cell yet.
pub async fn create(
    db: &Db,
    spec: DataspaceSpec,
    artifacts: Vec<String>,
    properties: Properties,
) -> Result<DataspaceProfile> {
    let profile = DataspaceProfile {
        id: new_id(),
        version: 0,
        dataspace_spec: spec,
        artifacts,
        deployments: vec![],
        properties,
    };
    sqlx::query("INSERT INTO dataspace_profiles (id, version, dataspace_spec, artifacts, properties) VALUES ($1, $2, $3, $4, $5)")
        .bind(&profile.id)
        .bind(profile.version)
        .bind(to_json(&profile.dataspace_spec)?)
        .bind(to_json(&profile.artifacts)?)
        .bind(to_json(&profile.properties)?)
        .execute(db.writer())
        .await?;
    Ok(profile)
}

/// The dataspace profile `id` with its deployments; a missing one is "not found".
pub async fn get(conn: &mut Conn, id: &str) -> Result<DataspaceProfile> {
    read_one(conn, id, "").await
}

/// [`get`], share-locking the dataspace profile for the rest of the transaction, so it
/// cannot be deleted before the participant that joins it commits.
pub(crate) async fn share(conn: &mut Conn, id: &str) -> Result<DataspaceProfile> {
    let lock = store::for_share(conn);
    read_one(conn, id, lock).await
}

/// The profile and its deployments in one statement: a row per deployment, the profile's
/// columns repeated on each (one row without deployment columns when it has none).
/// `lock` applies to the profile's row alone.
async fn read_one(conn: &mut Conn, id: &str, lock: &str) -> Result<DataspaceProfile> {
    let lock = if lock.is_empty() {
        String::new()
    } else {
        format!("{lock} OF p")
    };
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT p.id, p.version, p.dataspace_spec, p.artifacts, p.properties, {DEPLOYMENT}
         FROM dataspace_profiles p
         LEFT JOIN (dataspace_deployments d JOIN cells c ON c.id = d.cell_id) ON d.profile_id = p.id
         WHERE p.id = $1 ORDER BY d.id{lock}"
    )))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let first = rows
        .first()
        .ok_or_else(|| ManagerError::not_found(format!("dataspace profile '{id}' not found")))?;
    let mut profile = read(first)?;
    profile.deployments = rows.iter().filter_map(read_deployment).collect();
    Ok(profile)
}

/// A page of dataspace profiles with their deployments, sorted by id.
pub async fn list(db: &Db, page: Page) -> Result<Paged<DataspaceProfile>> {
    let (rows, total) = crate::store::paged(
        db,
        "SELECT id, version, dataspace_spec, artifacts, properties FROM dataspace_profiles",
        None,
        page,
    )
    .await?;
    let mut conn = db.acquire().await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut profile = read(row)?;
        profile.deployments = deployments(&mut conn, &profile.id).await?;
        items.push(profile);
    }
    Ok(Paged { items, total, page })
}

/// Deletes a dataspace profile and its deployments. Refused while a participant that
/// is not `disposed` belongs to the dataspace.
pub async fn delete(db: &Db, id: &str) -> Result<()> {
    let mut tx = crate::store::write(db).await?;
    crate::store::lock_row(&mut tx, crate::store::Table::DataspaceProfiles, id).await?;
    get(&mut tx, id).await?;
    profiles::refuse_while_participants_live(&mut tx, profiles::Owner::DataspaceProfile(id))
        .await?;
    for statement in [
        "DELETE FROM dataspace_deployments WHERE profile_id = $1",
        "DELETE FROM dataspace_profiles WHERE id = $1",
    ] {
        sqlx::query(statement).bind(id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Deploys a dataspace profile to a cell (named by id or external id). Deploying it
/// again to the same cell returns the existing deployment.
pub async fn deploy(db: &Db, profile_id: &str, cell: &str) -> Result<DataspaceDeployment> {
    let mut tx = crate::store::write(db).await?;
    get(&mut tx, profile_id).await?;
    let cell = cells::find(&mut tx, cell)
        .await?
        .ok_or_else(|| ManagerError::bad_request(format!("cell '{cell}' not found")))?;
    let deployment = DataspaceDeployment {
        id: new_id(),
        version: 0,
        state: "active".into(),
        state_timestamp: now(),
        cell_id: cell.id.clone(),
        external_cell_id: cell.external_id.clone(),
    };
    sqlx::query(
        "INSERT INTO dataspace_deployments (id, version, profile_id, cell_id, state, state_timestamp)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (profile_id, cell_id) DO NOTHING",
    )
    .bind(&deployment.id)
    .bind(deployment.version)
    .bind(profile_id)
    .bind(&cell.id)
    .bind(&deployment.state)
    .bind(&deployment.state_timestamp)
    .execute(&mut *tx)
    .await?;
    let stored = deployments(&mut tx, profile_id)
        .await?
        .into_iter()
        .find(|d| d.cell_id == cell.id)
        .ok_or_else(|| ManagerError::Corrupt("deployment vanished".into()))?;
    tx.commit().await?;
    Ok(stored)
}

async fn deployments(conn: &mut Conn, profile_id: &str) -> Result<Vec<DataspaceDeployment>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {DEPLOYMENT} FROM dataspace_deployments d JOIN cells c ON c.id = d.cell_id
         WHERE d.profile_id = $1 ORDER BY d.id"
    )))
    .bind(profile_id)
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().filter_map(read_deployment).collect())
}

/// A deployment's columns, of `dataspace_deployments d` joined with its cell `c`, as
/// [`read_deployment`] reads them.
const DEPLOYMENT: &str = "d.id AS deployment_id, d.version AS deployment_version, d.state,
  d.state_timestamp, d.cell_id, c.external_id";

/// The deployment of a row with [`DEPLOYMENT`]'s columns; None where they are null (a
/// profile's row without one).
fn read_deployment(row: &crate::store::Row) -> Option<DataspaceDeployment> {
    Some(DataspaceDeployment {
        id: row.get::<Option<String>, _>("deployment_id")?,
        version: row.get("deployment_version"),
        state: row.get("state"),
        state_timestamp: row.get("state_timestamp"),
        cell_id: row.get("cell_id"),
        external_cell_id: row.get("external_id"),
    })
}

fn read(row: &crate::store::Row) -> Result<DataspaceProfile> {
    Ok(DataspaceProfile {
        id: row.get("id"),
        version: row.get("version"),
        dataspace_spec: from_json(row.get("dataspace_spec"), "dataspace spec")?,
        artifacts: from_json(row.get("artifacts"), "dataspace profile artifacts")?,
        deployments: vec![],
        properties: from_json(row.get("properties"), "dataspace profile properties")?,
    })
}
