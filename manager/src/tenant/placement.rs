//! Where a new participant goes: the cell it is placed in, and the orchestration
//! template its dataspace profiles or cell select.

use serde_json::Value;
use sqlx::{AssertSqlSafe, Row};

use crate::error::{ManagerError, Result};
use crate::model::{Cell, DataspaceProfile, Properties};
use crate::provision::definitions;
use crate::store::Conn;
use crate::tenant::cells;

/// Picks the cell: the requested one when it exists, is active and serves the
/// participant's dataspaces; otherwise the active serving cell with the fewest participants.
/// Upstream clients send stale cell ids, so an unknown id falls back to placement.
pub(super) async fn place(
    conn: &mut Conn,
    requested: Option<&str>,
    dataspace_profile_ids: &[String],
) -> Result<Cell> {
    // Active cells serving at least one of the dataspace profiles (any cell when none is
    // asked for), least loaded first.
    let serving = if dataspace_profile_ids.is_empty() {
        "TRUE".to_string()
    } else {
        let marks = (1..=dataspace_profile_ids.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "EXISTS (SELECT 1 FROM dataspace_deployments d
               WHERE d.cell_id = c.id AND d.state = 'active' AND d.profile_id IN ({marks}))"
        )
    };
    let mut query = sqlx::query(AssertSqlSafe(format!(
        "SELECT c.id, (SELECT COUNT(*) FROM participant_profiles p WHERE p.cell_id = c.id) AS load
         FROM cells c WHERE c.state = 'active' AND {serving} ORDER BY load, c.id"
    )));
    for id in dataspace_profile_ids {
        query = query.bind(id);
    }
    let candidates = query.fetch_all(&mut *conn).await?;
    let ids: Vec<String> = candidates.iter().map(|r| r.get("id")).collect();
    let chosen = match requested {
        Some(wanted) if !wanted.is_empty() => match cells::find(conn, wanted).await? {
            Some(cell) if ids.contains(&cell.id) => Some(cell.id),
            Some(cell) => {
                return Err(ManagerError::conflict(format!(
                    "cell '{wanted}' is {} or has no active deployment of the participant's dataspace profiles",
                    cell.state
                )));
            }
            None => ids.first().cloned(),
        },
        _ => ids.first().cloned(),
    };
    let id = chosen.ok_or_else(|| {
        ManagerError::conflict(
            "no active cell has an active deployment of the participant's dataspace profiles",
        )
    })?;
    cells::find(conn, &id)
        .await?
        .ok_or_else(|| ManagerError::Corrupt(format!("cell '{id}' vanished")))
}

/// The template a participant's dataspace profiles (first) or cell select with
/// [`definitions::TEMPLATE_PROPERTY`]; None to use the newest. Dataspace profiles that
/// select different templates are a conflict the operator must resolve.
pub(super) fn chosen_template(
    dataspaces: &[DataspaceProfile],
    cell: &Cell,
) -> Result<Option<String>> {
    let named = |properties: &Properties, whose: String| -> Result<Option<String>> {
        match properties.get(definitions::TEMPLATE_PROPERTY) {
            None => Ok(None),
            Some(Value::String(id)) => Ok(Some(id.clone())),
            Some(_) => Err(ManagerError::conflict(format!(
                "{whose}'s {} must be a string",
                definitions::TEMPLATE_PROPERTY
            ))),
        }
    };
    let mut chosen: Option<(String, &str)> = None;
    for dataspace in dataspaces {
        let whose = format!("dataspace profile '{}'", dataspace.id);
        if let Some(id) = named(&dataspace.properties, whose)? {
            match &chosen {
                Some((other, by)) if *other != id => {
                    return Err(ManagerError::conflict(format!(
                        "dataspace profiles '{by}' and '{}' select different orchestration definitions ('{other}', '{id}')",
                        dataspace.id
                    )));
                }
                _ => chosen = Some((id, &dataspace.id)),
            }
        }
    }
    match chosen {
        Some((id, _)) => Ok(Some(id)),
        None => named(&cell.properties, format!("cell '{}'", cell.id)),
    }
}

/// The dataspaces a participant that names none joins: those with an active deployment to
/// its cell, or every dataspace profile when the cell has none (upstream's rule).
pub(super) async fn implied_dataspaces(conn: &mut Conn, cell_id: &str) -> Result<Vec<String>> {
    let deployed: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT profile_id FROM dataspace_deployments
         WHERE cell_id = $1 AND state = 'active' ORDER BY profile_id",
    )
    .bind(cell_id)
    .fetch_all(&mut *conn)
    .await?;
    if !deployed.is_empty() {
        return Ok(deployed);
    }
    Ok(
        sqlx::query_scalar("SELECT id FROM dataspace_profiles ORDER BY id")
            .fetch_all(&mut *conn)
            .await?,
    )
}
