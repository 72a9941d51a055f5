//! Rebalancing: moving participants between cells until every cell's utilisation is
//! within a band the operator names.
//!
//! A plan is computed as a dry run and stored with the facts it was computed from (each
//! cell's version and load, each moved participant's cell). The operator reads it, then
//! executes it; execution first checks those facts and refuses a plan the fleet has
//! moved away from. A running plan is a row that every replica's fleet loop tops up, as
//! a drain is, so it survives the loss of any replica; each move is a migration, and the
//! migrations' unique index keeps a participant from being moved twice at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{AssertSqlSafe, Row};

use crate::error::{CellRefusal, ManagerError, Result, describe_reasons};
use crate::lifecycle::{MigrationState, PlanState};
use crate::model::{
    Cell, PlanProgress, PlannedCell, PlannedMove, RebalancePlan, UtilisationBand, VpaState, new_id,
    now,
};
use crate::provision::Engine;
use crate::store::{self, Conn, Page, Paged, Table, from_json, to_json};
use crate::tenant::drains::{DEFAULT_PARALLELISM, MAX_PARALLELISM};
use crate::tenant::placement::{self, Requirements};
use crate::tenant::{cells, migrations, profiles};

/// How long a plan may wait to be executed before it is refused as stale.
pub const PLAN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// The most moves one plan holds; a fleet further out of balance takes several plans.
pub const MAX_MOVES: usize = 10_000;
/// Without a band, cells are aimed at the fleet's mean utilisation, give or take this.
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// Plans one list page holds at most: each carries its cells.
const MAX_LISTED: i64 = 100;
/// The most cells a plan may be asked to weigh by name.
pub const MAX_CELL_IDS: usize = 1_000;
/// Fit checks one plan may make: a fleet whose participants fit almost nowhere is cut
/// short (and says so) rather than planned for minutes.
const FIT_CHECKS: usize = 2_000_000;
/// A cell whose load changed by more than this share of its capacity since planning
/// (at least one place) makes the plan stale.
const LOAD_DRIFT: f64 = 0.1;

/// What an operator asks a plan for.
#[derive(Debug, Clone, Default)]
pub struct NewPlan {
    /// The band; the fleet's mean utilisation ± [`DEFAULT_TOLERANCE`] when absent.
    pub band: Option<UtilisationBand>,
    /// Only these cells (ids or external ids) are weighed; all when absent.
    pub cell_ids: Option<Vec<String>>,
    /// Migrations run at once when executed.
    pub parallelism: Option<i64>,
}

/// Computes and stores a plan; nothing moves until it is executed.
pub async fn plan(engine: &Engine, new: NewPlan) -> Result<RebalancePlan> {
    let parallelism = new.parallelism.unwrap_or(DEFAULT_PARALLELISM);
    if !(1..=MAX_PARALLELISM).contains(&parallelism) {
        return Err(ManagerError::bad_request(format!(
            "parallelism must be 1 to {MAX_PARALLELISM}"
        )));
    }
    if let Some(band) = new.band {
        check_band(band)?;
    }
    // Computed on a plain connection: the write lock is taken only to store the result.
    let mut conn = engine.db().acquire().await?;
    let mut fleet = cells::all(&mut conn).await?;
    if let Some(wanted) = &new.cell_ids {
        if wanted.len() > MAX_CELL_IDS {
            return Err(ManagerError::bad_request(format!(
                "cellIds names {} cells; at most {MAX_CELL_IDS}",
                wanted.len()
            )));
        }
        let wanted: HashSet<&str> = wanted.iter().map(String::as_str).collect();
        for id in &wanted {
            if !fleet.iter().any(|c| c.id == *id || c.external_id == *id) {
                let shown: String = id.chars().take(64).collect();
                return Err(ManagerError::bad_request(format!(
                    "cell '{shown}' does not exist"
                )));
            }
        }
        fleet.retain(|c| wanted.contains(c.id.as_str()) || wanted.contains(c.external_id.as_str()));
    }
    let (weighed, excluded_cells) = weighable(fleet);
    let band = match new.band {
        Some(band) => band,
        None => mean_band(&weighed)?,
    };
    let computed = Planner::new(&mut conn, band, weighed).run().await?;
    drop(conn);
    let timestamp = now();
    let expires_at = (chrono::Utc::now()
        + chrono::Duration::from_std(PLAN_LIFETIME).unwrap_or_default())
    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let plan = RebalancePlan {
        id: new_id(),
        version: 0,
        state: PlanState::Planned,
        band,
        parallelism,
        cells: computed.cells,
        moves: computed.moves,
        excluded_cells,
        unresolved_cells: computed.unresolved,
        progress: PlanProgress::default(),
        detail: computed.cut_short,
        created_at: timestamp.clone(),
        updated_at: timestamp,
        expires_at,
    };
    let mut tx = store::write(engine.db()).await?;
    insert(&mut tx, &plan).await?;
    tx.commit().await?;
    tracing::info!(plan = %plan.id, moves = plan.moves.len(), band_min = band.min, band_max = band.max,
        unresolved = plan.unresolved_cells.len(), "rebalance planned");
    get(engine, &plan.id).await
}

/// Plans sorted by id, with their progress but without their moves (read one plan for
/// those).
pub async fn list(engine: &Engine, page: Page) -> Result<Paged<RebalancePlan>> {
    let page = Page::new(Some(page.offset), Some(page.limit.min(MAX_LISTED)));
    let (rows, total) = store::paged(engine.db(), SELECT_PLAN, None, page).await?;
    let mut items = rows.iter().map(read_plan).collect::<Result<Vec<_>>>()?;
    let mut conn = engine.db().acquire().await?;
    for plan in &mut items {
        plan.progress = counted_progress(&mut conn, &plan.id).await?;
    }
    Ok(Paged { items, total, page })
}

/// One plan with its moves and progress.
pub async fn get(engine: &Engine, id: &str) -> Result<RebalancePlan> {
    let mut conn = engine.db().acquire().await?;
    fetch(&mut conn, id).await
}

/// Starts executing a planned plan, after checking that the fleet is still as it was
/// planned; a stale plan is marked so and refused. Executing a running plan again
/// answers it.
pub async fn execute(engine: &Engine, id: &str) -> Result<RebalancePlan> {
    let mut tx = store::write(engine.db()).await?;
    lock(&mut tx, id).await?;
    let plan = fetch(&mut tx, id).await?;
    match plan.state {
        PlanState::Running => return Ok(plan),
        PlanState::Planned => {}
        state => {
            return Err(ManagerError::conflict(format!(
                "rebalance plan '{id}' is {state}; compute a new one"
            )));
        }
    }
    // The plan's cells locked in id order (as placement takes them), then no other plan
    // may be moving participants between any of them: two plans computed side by side
    // would both fill the same target.
    let mut cell_ids: Vec<&str> = plan.cells.iter().map(|c| c.cell_id.as_str()).collect();
    cell_ids.sort_unstable();
    for cell_id in &cell_ids {
        store::lock_row(&mut tx, Table::Cells, cell_id).await?;
    }
    let running: Vec<String> =
        sqlx::query_scalar("SELECT id FROM rebalance_plans WHERE state = $1 AND id <> $2")
            .bind(PlanState::Running)
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
    for other in running {
        let other = fetch_head(&mut tx, &other).await?;
        if other
            .cells
            .iter()
            .any(|c| cell_ids.contains(&c.cell_id.as_str()))
        {
            return Err(ManagerError::conflict(format!(
                "rebalance plan '{}' is running over some of the same cells; wait for it or cancel it",
                other.id
            )));
        }
    }
    let reasons = staleness(&mut tx, &plan).await?;
    if !reasons.is_empty() {
        let detail = describe_reasons(&reasons);
        set_state(&mut tx, id, PlanState::Stale, Some(&detail)).await?;
        tx.commit().await?;
        tracing::info!(plan = %id, "rebalance plan refused as stale: {detail}");
        return Err(ManagerError::StalePlan { reasons });
    }
    set_state(&mut tx, id, PlanState::Running, plan.detail.as_deref()).await?;
    let plan = fetch(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(plan = %id, moves = plan.moves.len(), parallelism = plan.parallelism, "rebalance started");
    Ok(plan)
}

/// Cancels a plan: a planned one is discarded, a running one starts no further moves
/// (those under way finish). Cancelling a cancelled plan changes nothing.
pub async fn cancel(engine: &Engine, id: &str) -> Result<RebalancePlan> {
    let mut tx = store::write(engine.db()).await?;
    lock(&mut tx, id).await?;
    let plan = fetch(&mut tx, id).await?;
    match plan.state {
        PlanState::Planned | PlanState::Running => {
            set_state(&mut tx, id, PlanState::Cancelled, None).await?;
        }
        PlanState::Cancelled => return Ok(plan),
        state => {
            return Err(ManagerError::conflict(format!(
                "rebalance plan '{id}' is {state}; it can no longer be cancelled"
            )));
        }
    }
    let plan = fetch(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(plan = %id, "rebalance cancelled by the operator");
    Ok(plan)
}

/// One pass over the running plans: each is topped up to its parallelism, or ends. A
/// plan that fails is logged and the others still run.
pub async fn tick(engine: &Engine) -> Result<()> {
    let running: Vec<String> =
        sqlx::query_scalar("SELECT id FROM rebalance_plans WHERE state = $1 ORDER BY id")
            .bind(PlanState::Running)
            .fetch_all(engine.db().queries())
            .await?;
    for id in running {
        if let Err(e) = top_up(engine, &id).await {
            tracing::warn!(plan = %id, "rebalancing: {e}");
        }
    }
    Ok(())
}

/// Starts the plan's next moves up to its parallelism, or completes it: one transaction
/// per move, so that no transaction holds several participants' and cells' locks (taken
/// in no one order, they could deadlock with a migration started through the API).
async fn top_up(engine: &Engine, id: &str) -> Result<()> {
    loop {
        let engine = engine.claiming();
        let mut tx = store::write(engine.db()).await?;
        lock(&mut tx, id).await?;
        let plan = fetch_head(&mut tx, id).await?;
        if plan.state != PlanState::Running {
            return Ok(());
        }
        let progress = counted_progress(&mut tx, id).await?;
        if progress.remaining == 0 && progress.in_flight == 0 {
            let detail = format!(
                "{} moved, {} failed, {} skipped",
                progress.moved, progress.failed, progress.skipped
            );
            set_state(&mut tx, id, PlanState::Completed, Some(&detail)).await?;
            tx.commit().await?;
            tracing::info!(plan = %id, "rebalance completed: {detail}");
            return Ok(());
        }
        if progress.remaining == 0 || progress.in_flight >= plan.parallelism {
            return Ok(());
        }
        let Some((position, planned)) = next_planned(&mut tx, id).await? else {
            return Ok(());
        };
        match start_move(&engine, &mut tx, &planned).await {
            Ok(Ok(migration_id)) => {
                record_move(
                    &mut tx,
                    id,
                    position,
                    MoveState::Started,
                    Some(&migration_id),
                    None,
                )
                .await?;
                tx.commit().await?;
                engine.committed();
            }
            Ok(Err(why)) => {
                tracing::info!(plan = %id, profile = %planned.profile_id, "move skipped: {why}");
                record_move(&mut tx, id, position, MoveState::Skipped, None, Some(&why)).await?;
                tx.commit().await?;
            }
            // The database: nothing was written; the next tick tries again.
            Err(e @ ManagerError::Database(_)) => return Err(e),
            // Anything else is this participant's: the move is skipped, saying why, in a
            // transaction of its own (the failed one may have written part of a start).
            Err(e) => {
                drop(tx);
                let mut tx = store::write(engine.db()).await?;
                lock(&mut tx, id).await?;
                let why = e.to_string();
                tracing::warn!(plan = %id, profile = %planned.profile_id, "move skipped: {why}");
                record_move(&mut tx, id, position, MoveState::Skipped, None, Some(&why)).await?;
                tx.commit().await?;
            }
        }
    }
}

/// The plan's first move not started yet, with its position.
async fn next_planned(conn: &mut Conn, plan_id: &str) -> Result<Option<(usize, PlannedMove)>> {
    let row = sqlx::query(
        "SELECT position, profile_id, tenant_id, source_cell_id, target_cell_id FROM rebalance_moves
          WHERE plan_id = $1 AND state = $2 ORDER BY position LIMIT 1",
    )
    .bind(plan_id)
    .bind(MoveState::Planned.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|row| {
        let position: i64 = row.get("position");
        (
            position as usize,
            PlannedMove {
                profile_id: row.get("profile_id"),
                tenant_id: row.get("tenant_id"),
                source_cell_id: row.get("source_cell_id"),
                target_cell_id: row.get("target_cell_id"),
                state: MoveState::Planned.as_str().into(),
                migration_id: None,
                detail: None,
            },
        )
    }))
}

/// Starts one move's migration; `Ok(Err(why))` when the participant or its target no
/// longer allow it (the move is skipped, the plan goes on).
async fn start_move(
    engine: &Engine,
    tx: &mut Conn,
    planned: &PlannedMove,
) -> Result<std::result::Result<String, String>> {
    store::lock_row(tx, Table::ParticipantProfiles, &planned.profile_id).await?;
    let Some(profile) = profiles::find(tx, &planned.profile_id).await? else {
        return Ok(Err("the participant no longer exists".into()));
    };
    if profile.vpas.first().map(|v| v.cell_id.as_str()) != Some(planned.source_cell_id.as_str()) {
        return Ok(Err(format!(
            "the participant is no longer in cell '{}'",
            planned.source_cell_id
        )));
    }
    // Locked after the participant, as placement would; a deleted target must not fall
    // back to placement elsewhere: the plan chose it.
    if !store::lock_row(tx, Table::Cells, &planned.target_cell_id).await? {
        return Ok(Err(format!(
            "target cell '{}' no longer exists",
            planned.target_cell_id
        )));
    }
    match migrations::start_in(
        engine,
        tx,
        &planned.profile_id,
        Some(&planned.target_cell_id),
        None,
    )
    .await
    {
        Ok(migration) => Ok(Ok(migration.id)),
        Err(
            e @ (ManagerError::NoCellFits { .. }
            | ManagerError::Conflict(_)
            | ManagerError::Busy(_)),
        ) => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}

/// Why executing `plan` now would act on a fleet it was not computed for; empty when
/// it is still sound.
async fn staleness(conn: &mut Conn, plan: &RebalancePlan) -> Result<Vec<String>> {
    let mut reasons = Vec::new();
    if now() > plan.expires_at {
        reasons.push(format!("the plan expired at {}", plan.expires_at));
    }
    let current: HashMap<String, Cell> = cells::all(conn)
        .await?
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
    for planned in &plan.cells {
        let Some(cell) = current.get(&planned.cell_id) else {
            reasons.push(format!("cell '{}' was deleted", planned.cell_id));
            continue;
        };
        if cell.version != planned.version {
            reasons.push(format!(
                "cell '{}' changed (version {} when planned, {} now)",
                planned.cell_id, planned.version, cell.version
            ));
        }
        let allowed = ((planned.max_participants as f64 * LOAD_DRIFT).floor() as i64).max(1);
        let taken = cell.usage.taken();
        if (taken - planned.participants).abs() > allowed {
            reasons.push(format!(
                "cell '{}' holds {taken} participants, {} when planned",
                planned.cell_id, planned.participants
            ));
        }
    }
    for planned in &plan.moves {
        let profile = profiles::find(conn, &planned.profile_id).await?;
        let still = profile.as_ref().is_some_and(|p| {
            p.vpas.first().map(|v| v.cell_id.as_str()) == Some(planned.source_cell_id.as_str())
                && p.vpas.iter().all(|v| v.state == VpaState::Active)
        });
        if !still {
            reasons.push(format!(
                "participant '{}' is no longer active in cell '{}'",
                planned.profile_id, planned.source_cell_id
            ));
        } else if let Some(under_way) = migrations::unfinished(conn, &planned.profile_id).await? {
            reasons.push(format!(
                "participant '{}' is being migrated (migration '{}')",
                planned.profile_id, under_way.id
            ));
        }
    }
    Ok(reasons)
}

/// Computes the moves, greedily: while a cell is over the band, a participant moves from
/// the most utilised such cell to the least utilised cell that can take it and stays
/// within the band; then, while a cell is under the band, one moves into it from the
/// most utilised cell that stays within the band. Each move narrows the band's total
/// excess or deficit, so the loop ends; what it cannot fix is reported per cell.
struct Planner<'a> {
    conn: &'a mut Conn,
    band: UtilisationBand,
    cells: Vec<Cell>,
    /// Each cell's movable participants, ids in order, read once.
    residents: HashMap<String, Arc<Vec<String>>>,
    /// What each participant needs of a cell; None for one that cannot move now.
    needs: HashMap<String, Option<Movable>>,
    moved: HashSet<String>,
    /// Placement checks made so far, against [`FIT_CHECKS`].
    fit_checks: usize,
}

struct Movable {
    tenant_id: String,
    needs: Requirements,
}

struct Computed {
    cells: Vec<PlannedCell>,
    moves: Vec<PlannedMove>,
    unresolved: Vec<CellRefusal>,
    /// Why the plan stops short of the band, when it does.
    cut_short: Option<String>,
}

impl<'a> Planner<'a> {
    fn new(conn: &'a mut Conn, band: UtilisationBand, cells: Vec<Cell>) -> Self {
        Self {
            conn,
            band,
            cells,
            residents: HashMap::new(),
            needs: HashMap::new(),
            moved: HashSet::new(),
            fit_checks: 0,
        }
    }

    async fn run(mut self) -> Result<Computed> {
        let before: BTreeMap<String, i64> = self
            .cells
            .iter()
            .map(|c| (c.id.clone(), c.usage.taken()))
            .collect();
        let mut moves = Vec::new();
        let mut cut_short = None;
        loop {
            if moves.len() == MAX_MOVES {
                cut_short = Some(format!(
                    "cut short at {MAX_MOVES} moves; once executed, plan again for the rest"
                ));
                break;
            }
            if self.fit_checks >= FIT_CHECKS {
                cut_short = Some(format!(
                    "cut short after {FIT_CHECKS} placement checks: few participants fit elsewhere; once executed, plan again"
                ));
                break;
            }
            let Some((from, to, profile_id)) = self.next_move().await? else {
                break;
            };
            let tenant_id = self.needs[&profile_id]
                .as_ref()
                .map(|m| m.tenant_id.clone())
                .unwrap_or_default();
            self.cells[from].usage.participants -= 1;
            self.cells[to].usage.participants += 1;
            self.moved.insert(profile_id.clone());
            moves.push(PlannedMove {
                profile_id,
                tenant_id,
                source_cell_id: self.cells[from].id.clone(),
                target_cell_id: self.cells[to].id.clone(),
                state: MoveState::Planned.as_str().into(),
                migration_id: None,
                detail: None,
            });
        }
        let band = self.band;
        let mut unresolved = Vec::new();
        let mut planned_cells = Vec::new();
        for cell in &self.cells {
            let capacity = capacity_of(cell);
            let taken = cell.usage.taken();
            let utilisation = utilisation(taken, capacity);
            if utilisation > band.max {
                unresolved.push(CellRefusal {
                    cell_id: cell.id.clone(),
                    reason: format!(
                        "stays at {:.0}%, over the band: no cell in the band can take any of its participants",
                        utilisation * 100.0
                    ),
                });
            } else if utilisation < band.min {
                unresolved.push(CellRefusal {
                    cell_id: cell.id.clone(),
                    reason: format!(
                        "stays at {:.0}%, under the band: no participant that fits it can leave a cell without taking that cell under the band",
                        utilisation * 100.0
                    ),
                });
            }
            let participants = before.get(&cell.id).copied().unwrap_or(taken);
            planned_cells.push(PlannedCell {
                cell_id: cell.id.clone(),
                version: cell.version,
                max_participants: capacity,
                participants,
                planned: taken,
                utilisation: utilisation_of(participants, capacity),
                planned_utilisation: utilisation_of(taken, capacity),
            });
        }
        Ok(Computed {
            cells: planned_cells,
            moves,
            unresolved,
            cut_short,
        })
    }

    /// The next move as (source index, target index, profile id); None when no move
    /// brings the fleet closer to the band. Cells over the band are relieved first; when
    /// none of them can be (or none is over), cells under the band are filled from any
    /// cell that stays within it, or from one over it.
    async fn next_move(&mut self) -> Result<Option<(usize, usize, String)>> {
        let band = self.band;
        let util = |c: &Cell, delta: i64| utilisation(c.usage.taken() + delta, capacity_of(c));
        let by_load = |cells: &[Cell], mut ids: Vec<usize>, descending: bool| {
            ids.sort_by(|&a, &b| {
                let order = util(&cells[a], 0).total_cmp(&util(&cells[b], 0));
                let order = if descending { order.reverse() } else { order };
                order.then(cells[a].id.cmp(&cells[b].id))
            });
            ids
        };
        let pick = |cells: &[Cell], keep: &dyn Fn(&Cell) -> bool| -> Vec<usize> {
            (0..cells.len()).filter(|&i| keep(&cells[i])).collect()
        };
        let over = pick(&self.cells, &|c| util(c, 0) > band.max);
        if !over.is_empty() {
            let sources = by_load(&self.cells, over, true);
            let targets = by_load(
                &self.cells,
                pick(&self.cells, &|c| util(c, 1) <= band.max),
                false,
            );
            if let Some(found) = self.find(&sources, &targets).await? {
                return Ok(Some(found));
            }
        }
        let under = pick(&self.cells, &|c| {
            util(c, 0) < band.min && util(c, 1) <= band.max
        });
        if under.is_empty() {
            return Ok(None);
        }
        let sources = pick(&self.cells, &|c| {
            util(c, 0) > band.max || util(c, -1) >= band.min
        });
        let sources = by_load(&self.cells, sources, true);
        let targets = by_load(&self.cells, under, false);
        self.find(&sources, &targets).await
    }

    /// The first participant of `sources` (most loaded first) that fits one of
    /// `targets` (least loaded first).
    async fn find(
        &mut self,
        sources: &[usize],
        targets: &[usize],
    ) -> Result<Option<(usize, usize, String)>> {
        for &from in sources {
            let residents = self.residents_of(from).await?;
            for profile_id in residents.iter() {
                if self.moved.contains(profile_id) {
                    continue;
                }
                for &to in targets {
                    if to != from && self.fits(profile_id, to).await? {
                        return Ok(Some((from, to, profile_id.clone())));
                    }
                }
            }
        }
        Ok(None)
    }

    async fn residents_of(&mut self, index: usize) -> Result<Arc<Vec<String>>> {
        let cell_id = self.cells[index].id.clone();
        if let Some(ids) = self.residents.get(&cell_id) {
            return Ok(ids.clone());
        }
        let ids: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT p.id FROM participant_profiles p WHERE p.cell_id = $1 AND p.disposed = 0
               AND NOT EXISTS (SELECT 1 FROM migrations m WHERE m.profile_id = p.id AND m.state IN ({}))
             ORDER BY p.id",
            MigrationState::UNFINISHED_SQL
        )))
        .bind(&cell_id)
        .fetch_all(&mut *self.conn)
        .await?;
        let ids = Arc::new(ids);
        self.residents.insert(cell_id, ids.clone());
        Ok(ids)
    }

    /// Whether the participant can move into cell `to` as the cells stand in the plan.
    async fn fits(&mut self, profile_id: &str, to: usize) -> Result<bool> {
        self.fit_checks += 1;
        if !self.needs.contains_key(profile_id) {
            let movable = match profiles::find(self.conn, profile_id).await? {
                Some(p)
                    if !p.vpas.is_empty() && p.vpas.iter().all(|v| v.state == VpaState::Active) =>
                {
                    Some(Movable {
                        tenant_id: p.tenant_id.clone(),
                        needs: Requirements::of_moving(self.conn, &p).await?,
                    })
                }
                _ => None,
            };
            self.needs.insert(profile_id.to_string(), movable);
        }
        let Some(movable) = &self.needs[profile_id] else {
            return Ok(false);
        };
        Ok(placement::refusal(&self.cells[to], &movable.needs).is_none())
    }
}

/// Cells a plan weighs (active, with a capacity) and those it leaves out, with why.
fn weighable(fleet: Vec<Cell>) -> (Vec<Cell>, Vec<CellRefusal>) {
    let mut weighed = Vec::new();
    let mut excluded = Vec::new();
    for cell in fleet {
        let reason = if cell.state != "active" {
            Some(format!(
                "is {}: only active cells are rebalanced",
                cell.state
            ))
        } else if cell.capacity.is_none_or(|c| c.max_participants <= 0) {
            Some("has no maxParticipants (or 0), so no utilisation".to_string())
        } else {
            None
        };
        match reason {
            Some(reason) => excluded.push(CellRefusal {
                cell_id: cell.id,
                reason,
            }),
            None => weighed.push(cell),
        }
    }
    (weighed, excluded)
}

/// The weighed cells' mean utilisation (at most 1) ± [`DEFAULT_TOLERANCE`].
fn mean_band(cells: &[Cell]) -> Result<UtilisationBand> {
    let (taken, capacity) = cells.iter().fold((0f64, 0f64), |(t, c), cell| {
        (t + cell.usage.taken() as f64, c + capacity_of(cell) as f64)
    });
    let mean = if capacity > 0.0 {
        (taken / capacity).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let band = UtilisationBand {
        min: (mean - DEFAULT_TOLERANCE).max(0.0),
        max: (mean + DEFAULT_TOLERANCE).min(1.0),
    };
    check_band(band)?;
    Ok(band)
}

/// A weighed cell's `maxParticipants` (at least 1: cells without one are not weighed).
fn capacity_of(cell: &Cell) -> i64 {
    cell.capacity.map_or(1, |c| c.max_participants.max(1))
}

fn check_band(band: UtilisationBand) -> Result<()> {
    let fraction = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
    if !fraction(band.min) || !fraction(band.max) || band.min > band.max {
        return Err(ManagerError::bad_request(
            "band must have 0 ≤ min ≤ max ≤ 1 (fractions of each cell's maxParticipants)",
        ));
    }
    Ok(())
}

/// `taken / capacity`, a place counted against a capacity of at least one.
fn utilisation(taken: i64, capacity: i64) -> f64 {
    taken as f64 / capacity.max(1) as f64
}

/// The same, rounded to four places for people to read.
fn utilisation_of(taken: i64, capacity: i64) -> f64 {
    (utilisation(taken, capacity) * 10_000.0).round() / 10_000.0
}

/// A move's stored state; a started move shows its migration's state instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MoveState {
    Planned,
    Started,
    Skipped,
}

impl MoveState {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Started => "started",
            Self::Skipped => "skipped",
        }
    }
}

async fn lock(conn: &mut Conn, id: &str) -> Result<()> {
    if store::lock_row(conn, Table::RebalancePlans, id).await? {
        Ok(())
    } else {
        Err(ManagerError::not_found(format!(
            "rebalance plan '{id}' not found"
        )))
    }
}

/// A plan's own row: no moves, no progress.
async fn fetch_head(conn: &mut Conn, id: &str) -> Result<RebalancePlan> {
    let row = sqlx::query(AssertSqlSafe(format!("{SELECT_PLAN} WHERE id = $1")))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ManagerError::not_found(format!("rebalance plan '{id}' not found")))?;
    read_plan(&row)
}

/// A plan with its moves and progress.
async fn fetch(conn: &mut Conn, id: &str) -> Result<RebalancePlan> {
    let mut plan = fetch_head(conn, id).await?;
    plan.moves = load_moves(conn, id).await?;
    plan.progress = progress(&plan.moves);
    Ok(plan)
}

async fn insert(conn: &mut Conn, plan: &RebalancePlan) -> Result<()> {
    sqlx::query(
        "INSERT INTO rebalance_plans (id, version, state, band_min, band_max, parallelism, cells, excluded,
           unresolved, created_at, updated_at, expires_at)
         VALUES ($1, 0, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&plan.id)
    .bind(plan.state)
    .bind(plan.band.min)
    .bind(plan.band.max)
    .bind(plan.parallelism)
    .bind(to_json(&plan.cells)?)
    .bind(to_json(&plan.excluded_cells)?)
    .bind(to_json(&plan.unresolved_cells)?)
    .bind(&plan.created_at)
    .bind(&plan.updated_at)
    .bind(&plan.expires_at)
    .execute(&mut *conn)
    .await?;
    for (position, planned) in plan.moves.iter().enumerate() {
        sqlx::query(
            "INSERT INTO rebalance_moves (plan_id, position, profile_id, tenant_id, source_cell_id, target_cell_id, state)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&plan.id)
        .bind(position as i64)
        .bind(&planned.profile_id)
        .bind(&planned.tenant_id)
        .bind(&planned.source_cell_id)
        .bind(&planned.target_cell_id)
        .bind(&planned.state)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The plan's moves in order; a started one shows its migration's state.
async fn load_moves(conn: &mut Conn, plan_id: &str) -> Result<Vec<PlannedMove>> {
    let rows = sqlx::query(
        "SELECT r.profile_id, r.tenant_id, r.source_cell_id, r.target_cell_id, r.state,
                r.migration_id, r.detail, m.state AS migration_state, m.error_detail
           FROM rebalance_moves r LEFT JOIN migrations m ON m.id = r.migration_id
          WHERE r.plan_id = $1 ORDER BY r.position",
    )
    .bind(plan_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let stored: String = row.get("state");
            let migration_state: Option<String> = row.get("migration_state");
            let detail: Option<String> = row.get("detail");
            let detail = match &migration_state {
                Some(_) => detail.or_else(|| row.get("error_detail")),
                None if stored == MoveState::Started.as_str() => Some(FORGOTTEN.to_string()),
                None => detail,
            };
            PlannedMove {
                profile_id: row.get("profile_id"),
                tenant_id: row.get("tenant_id"),
                source_cell_id: row.get("source_cell_id"),
                target_cell_id: row.get("target_cell_id"),
                state: shown_state(&stored, migration_state.as_deref()).to_string(),
                migration_id: row.get("migration_id"),
                detail,
            }
        })
        .collect())
}

/// Why a started move shows no migration: its record went when a cell it names was
/// deleted.
const FORGOTTEN: &str = "its migration's record was deleted with its cell";

/// What a move shows: its migration's state once started (`unknown` when the record is
/// gone), else its own.
fn shown_state<'a>(stored: &'a str, migration_state: Option<&'a str>) -> &'a str {
    match migration_state {
        Some(state) => state,
        None if stored == MoveState::Started.as_str() => "unknown",
        None => stored,
    }
}

fn progress(moves: &[PlannedMove]) -> PlanProgress {
    let mut progress = PlanProgress::default();
    for planned in moves {
        tally(&mut progress, &planned.state, 1);
    }
    progress
}

/// A plan's progress by one grouped count, without reading its moves.
async fn counted_progress(conn: &mut Conn, plan_id: &str) -> Result<PlanProgress> {
    let rows = sqlx::query(
        "SELECT r.state, m.state AS migration_state, COUNT(*) AS n
           FROM rebalance_moves r LEFT JOIN migrations m ON m.id = r.migration_id
          WHERE r.plan_id = $1 GROUP BY r.state, m.state",
    )
    .bind(plan_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut progress = PlanProgress::default();
    for row in rows {
        let stored: String = row.get("state");
        let migration_state: Option<String> = row.get("migration_state");
        tally(
            &mut progress,
            shown_state(&stored, migration_state.as_deref()),
            row.get("n"),
        );
    }
    Ok(progress)
}

/// Counts `n` moves showing `state` into `progress`.
fn tally(progress: &mut PlanProgress, state: &str, n: i64) {
    use MigrationState::*;
    match state.parse::<MigrationState>() {
        // A switched migration has moved its participant and is still cleaning up: it
        // counts against the parallelism too.
        Ok(Switched) => {
            progress.moved += n;
            progress.in_flight += n;
        }
        Ok(Completed | CleanupFailed) => progress.moved += n,
        Ok(Provisioning | RollingBack) => progress.in_flight += n,
        Ok(RolledBack | Failed) => progress.failed += n,
        Err(_) if state == MoveState::Planned.as_str() => progress.remaining += n,
        // Skipped, or started with its record gone: finished either way.
        Err(_) => progress.skipped += n,
    }
}

async fn record_move(
    conn: &mut Conn,
    plan_id: &str,
    position: usize,
    state: MoveState,
    migration_id: Option<&str>,
    detail: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE rebalance_moves SET state = $1, migration_id = $2, detail = $3 WHERE plan_id = $4 AND position = $5",
    )
    .bind(state.as_str())
    .bind(migration_id)
    .bind(detail)
    .bind(plan_id)
    .bind(position as i64)
    .execute(conn)
    .await?;
    Ok(())
}

async fn set_state(
    conn: &mut Conn,
    id: &str,
    state: PlanState,
    detail: Option<&str>,
) -> Result<()> {
    store::set_operation_state(conn, Table::RebalancePlans, id, state.as_str(), detail).await
}

const SELECT_PLAN: &str =
    "SELECT id, version, state, band_min, band_max, parallelism, cells, excluded, unresolved,
  detail, created_at, updated_at, expires_at FROM rebalance_plans";

fn read_plan(row: &crate::store::Row) -> Result<RebalancePlan> {
    Ok(RebalancePlan {
        id: row.get("id"),
        version: row.get("version"),
        state: row
            .get::<String, _>("state")
            .parse()
            .map_err(|e| ManagerError::Corrupt(format!("rebalance plan state: {e}")))?,
        band: UtilisationBand {
            min: row.get("band_min"),
            max: row.get("band_max"),
        },
        parallelism: row.get("parallelism"),
        cells: from_json(row.get("cells"), "planned cells")?,
        moves: Vec::new(),
        excluded_cells: from_json(row.get("excluded"), "excluded cells")?,
        unresolved_cells: from_json(row.get("unresolved"), "unresolved cells")?,
        progress: PlanProgress::default(),
        detail: row.get("detail"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        expires_at: row.get("expires_at"),
    })
}
