//! Where a participant goes: the cell it is placed in (by state, dataspace deployments,
//! required labels and capacity, then the operator's spread or pack policy), and the
//! orchestration template its dataspace profiles or cell select.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use crate::error::{CellRefusal, ManagerError, Result};
use crate::model::{
    Cell, DataspaceProfile, ParticipantProfile, PlacementPolicy, Properties,
    REQUIRED_CELL_LABELS_PROPERTY,
};
use crate::provision::definitions;
use crate::store::{self, Backend, Conn, Table};
use crate::tenant::{cells, dataspaces};

/// What a participant needs of its cell.
#[derive(Debug, Clone, Default)]
pub(crate) struct Requirements {
    /// The cells with an active deployment of one of the participant's dataspace
    /// profiles, one of which it must be in; None (any cell) when it names none.
    pub serving: Option<HashSet<String>>,
    /// Labels the cell must carry with these values.
    pub labels: BTreeMap<String, String>,
    /// A cell that may not be chosen: the one a migrating participant leaves.
    pub excluded: Option<String>,
}

impl Requirements {
    /// What a placed participant needs of a cell it moves to: what placed it, and not
    /// the cell it is in. Dataspace profiles deleted since are no longer asked for.
    pub(crate) async fn of_moving(conn: &mut Conn, profile: &ParticipantProfile) -> Result<Self> {
        let mut dataspaces = Vec::with_capacity(profile.dataspace_profile_ids.len());
        for id in &profile.dataspace_profile_ids {
            match dataspaces::get(conn, id).await {
                Ok(dataspace) => dataspaces.push(dataspace),
                Err(ManagerError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self {
            serving: Self::serving_of(&dataspaces),
            labels: Self::labels_of(&profile.properties, &dataspaces)?,
            excluded: profile.vpas.first().map(|v| v.cell_id.clone()),
        })
    }

    /// The cells with an active deployment of one of `dataspaces` (read with their
    /// deployments); None, every cell, when there are none.
    pub(crate) fn serving_of(dataspaces: &[DataspaceProfile]) -> Option<HashSet<String>> {
        if dataspaces.is_empty() {
            return None;
        }
        let active = dataspaces
            .iter()
            .flat_map(|d| &d.deployments)
            .filter(|deployment| deployment.state == "active");
        Some(
            active
                .map(|deployment| deployment.cell_id.clone())
                .collect(),
        )
    }

    /// The labels a participant's and its dataspace profiles' `cfm.requiredCellLabels`
    /// ask for; two that ask different values of one label are a bad request.
    pub(crate) fn labels_of(
        profile: &Properties,
        dataspaces: &[DataspaceProfile],
    ) -> Result<BTreeMap<String, String>> {
        let mut labels = BTreeMap::new();
        let sources = std::iter::once(("the participant".to_string(), profile)).chain(
            dataspaces
                .iter()
                .map(|d| (format!("dataspace profile '{}'", d.id), &d.properties)),
        );
        for (whose, properties) in sources {
            let Some(asked) = properties.get(REQUIRED_CELL_LABELS_PROPERTY) else {
                continue;
            };
            let asked = asked.as_object().ok_or_else(|| {
                ManagerError::bad_request(format!(
                    "{whose}'s {REQUIRED_CELL_LABELS_PROPERTY} must be an object of strings"
                ))
            })?;
            for (key, value) in asked {
                let value = value.as_str().ok_or_else(|| {
                    ManagerError::bad_request(format!(
                        "{whose}'s {REQUIRED_CELL_LABELS_PROPERTY}.{key} must be a string"
                    ))
                })?;
                match labels.insert(key.clone(), value.to_string()) {
                    Some(other) if other != value => {
                        return Err(ManagerError::bad_request(format!(
                            "cell label '{key}' is required to be both '{other}' and '{value}'"
                        )));
                    }
                    _ => {}
                }
            }
        }
        Ok(labels)
    }
}

/// Picks the cell and locks it for the rest of the transaction, so that concurrent
/// placements (on any replica) take turns at its capacity. The requested cell is
/// honoured when it can take the participant; an unknown one (upstream clients send stale
/// ids) falls back to placement by `policy`. When nothing fits, the error names every
/// cell considered and why it was refused.
pub(crate) async fn place(
    conn: &mut Conn,
    requested: Option<&str>,
    needs: &Requirements,
    policy: PlacementPolicy,
) -> Result<Cell> {
    // Uncounted: counting a cell's participants costs a scan of them, done below only
    // where capacity or spreading needs it.
    let mut cells = cells::all_uncounted(conn).await?;
    let requested = match requested.filter(|r| !r.is_empty()) {
        Some(wanted) => cells::find(conn, wanted).await?.map(|c| c.id),
        None => None,
    };
    if let Some(id) = &requested {
        cells.retain(|c| &c.id == id);
    }
    let (mut fitting, mut refused): (Vec<Cell>, Vec<CellRefusal>) = (Vec::new(), Vec::new());
    for cell in cells {
        match refusal(&cell, needs) {
            Some(reason) => refused.push(CellRefusal {
                cell_id: cell.id,
                reason,
            }),
            None => fitting.push(cell),
        }
    }
    fitting.sort_by(|a, b| a.id.cmp(&b.id));
    let spreading = fitting.len() > 1;
    let mut locked = match store::backend_of(conn) {
        // The transaction has held SQLite's one write lock since it began: what it read
        // is current, and no other placement runs until it ends.
        Backend::Sqlite => fitting,
        Backend::Postgres => locked_again(conn, fitting).await?,
    };
    // A cell without a capacity is counted only to spread participants over several.
    for cell in locked.iter_mut() {
        if cell.capacity.is_some() || spreading {
            cell.usage = cells::usage_of(conn, &cell.id, cell.capacity).await?;
        }
    }
    order(&mut locked, policy);
    for cell in locked {
        match refusal(&cell, needs) {
            None => return Ok(cell),
            Some(reason) => refused.push(CellRefusal {
                cell_id: cell.id,
                reason,
            }),
        }
    }
    refused.sort_by(|a, b| a.cell_id.cmp(&b.cell_id));
    Err(ManagerError::NoCellFits { cells: refused })
}

/// The candidates `fitting` (sorted by id) read again, each locked, in one order for all
/// placements so that two never deadlock: first those with a capacity exclusively, so
/// that concurrent placements (on any replica) take turns at them; then all of them
/// shared, as they are read again, which keeps a drain or an edit of a cell from slipping
/// in. Read again because another placement may have filled a cell meanwhile.
async fn locked_again(conn: &mut Conn, fitting: Vec<Cell>) -> Result<Vec<Cell>> {
    for candidate in fitting.iter().filter(|c| c.capacity.is_some()) {
        store::lock_row(conn, Table::Cells, &candidate.id).await?;
    }
    let ids: Vec<&str> = fitting.iter().map(|c| c.id.as_str()).collect();
    let mut locked = Vec::with_capacity(fitting.len());
    for cell in cells::shared_uncounted(conn, &ids).await? {
        let Some(candidate) = fitting.iter().find(|f| f.id == cell.id) else {
            continue;
        };
        // Given a capacity after it was read and before it was shared: what is read now
        // stays (an edit waits for the shared lock), but the capacity needs placements
        // to take turns.
        if cell.capacity.is_some() && candidate.capacity.is_none() {
            store::lock_row(conn, Table::Cells, &cell.id).await?;
        }
        locked.push(cell);
    }
    Ok(locked)
}

/// Why `cell` cannot take the participant; None when it can.
pub(crate) fn refusal(cell: &Cell, needs: &Requirements) -> Option<String> {
    if needs.excluded.as_deref() == Some(cell.id.as_str()) {
        return Some("is the participant's own cell".into());
    }
    if cell.state != "active" {
        return Some(format!("is {}", cell.state));
    }
    if needs
        .serving
        .as_ref()
        .is_some_and(|s| !s.contains(&cell.id))
    {
        return Some("has no active deployment of the participant's dataspace profiles".into());
    }
    for (key, value) in &needs.labels {
        match cell.labels.get(key) {
            Some(have) if have == value => {}
            Some(have) => return Some(format!("has label {key}={have}, not {value}")),
            None => return Some(format!("lacks label {key}={value}")),
        }
    }
    if let Some(capacity) = cell.capacity
        && cell.usage.taken() >= capacity.max_participants
    {
        return Some(format!(
            "is full ({} of {} places taken)",
            cell.usage.taken(),
            capacity.max_participants
        ));
    }
    None
}

/// Best first: spread takes the least utilised cell, pack the most utilised one. Cells
/// without a capacity are weighed by their participant count after those with one.
fn order(cells: &mut [Cell], policy: PlacementPolicy) {
    let weight = |cell: &Cell| {
        (
            cell.usage.utilisation.unwrap_or(f64::MAX),
            cell.usage.taken(),
        )
    };
    cells.sort_by(|a, b| {
        let (ua, ta) = weight(a);
        let (ub, tb) = weight(b);
        let by_load = match policy {
            PlacementPolicy::Spread => ua.total_cmp(&ub).then(ta.cmp(&tb)),
            PlacementPolicy::Pack => match (a.capacity, b.capacity) {
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                _ => ub.total_cmp(&ua).then(tb.cmp(&ta)),
            },
        };
        by_load.then_with(|| a.id.cmp(&b.id))
    });
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
