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
    let mut tx = store::write(engine.db()).await?;
    let mut fleet = cells::all(&mut tx).await?;
    if let Some(wanted) = &new.cell_ids {
        let mut ids = HashSet::new();
        for id in wanted {
            let cell = cells::find(&mut tx, id)
                .await?
                .ok_or_else(|| ManagerError::bad_request(format!("cell '{id}' does not exist")))?;
            ids.insert(cell.id);
        }
        fleet.retain(|c| ids.contains(&c.id));
    }
    let (weighed, excluded_cells) = weighable(fleet);
    let band = new.band.unwrap_or_else(|| mean_band(&weighed));
    let computed = Planner::new(&mut tx, band, weighed).run().await?;
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
        detail: None,
        created_at: timestamp.clone(),
        updated_at: timestamp,
        expires_at,
    };
    insert(&mut tx, &plan).await?;
    tx.commit().await?;
    tracing::info!(plan = %plan.id, moves = plan.moves.len(), band_min = band.min, band_max = band.max,
        unresolved = plan.unresolved_cells.len(), "rebalance planned");
    get(engine, &plan.id).await
}

/// Plans sorted by id, with their progress but without their moves (read one plan for
/// those).
pub async fn list(engine: &Engine, page: Page) -> Result<Paged<RebalancePlan>> {
    let (rows, total) = store::paged(engine.db(), SELECT_PLAN, None, page).await?;
    let mut items = rows.iter().map(read_plan).collect::<Result<Vec<_>>>()?;
    let mut conn = engine.db().acquire().await?;
    for plan in &mut items {
        plan.progress = progress(&load_moves(&mut conn, &plan.id).await?);
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
    let reasons = staleness(&mut tx, &plan).await?;
    if !reasons.is_empty() {
        let detail = describe_reasons(&reasons);
        set_state(&mut tx, id, PlanState::Stale, Some(&detail)).await?;
        tx.commit().await?;
        tracing::info!(plan = %id, "rebalance plan refused as stale: {detail}");
        return Err(ManagerError::StalePlan { reasons });
    }
    set_state(&mut tx, id, PlanState::Running, None).await?;
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

/// One pass over the running plans: each is topped up to its parallelism, or ends.
pub async fn tick(engine: &Engine) -> Result<()> {
    let running: Vec<String> =
        sqlx::query_scalar("SELECT id FROM rebalance_plans WHERE state = $1")
            .bind(PlanState::Running)
            .fetch_all(engine.db().queries())
            .await?;
    for id in running {
        let mut tx = store::write(engine.db()).await?;
        lock(&mut tx, &id).await?;
        let plan = fetch(&mut tx, &id).await?;
        if plan.state != PlanState::Running {
            continue;
        }
        let started = top_up(engine, &mut tx, &plan).await?;
        tx.commit().await?;
        if started > 0 {
            engine.wake();
        }
    }
    Ok(())
}

/// Starts the next moves up to the plan's parallelism, or completes it.
async fn top_up(engine: &Engine, tx: &mut Conn, plan: &RebalancePlan) -> Result<usize> {
    if plan.progress.remaining == 0 && plan.progress.in_flight == 0 {
        let p = plan.progress;
        let detail = format!(
            "{} moved, {} failed, {} skipped",
            p.moved, p.failed, p.skipped
        );
        set_state(tx, &plan.id, PlanState::Completed, Some(&detail)).await?;
        tracing::info!(plan = %plan.id, "rebalance completed: {detail}");
        return Ok(0);
    }
    let mut slots = (plan.parallelism - plan.progress.in_flight).max(0);
    let mut started = 0;
    for (position, planned) in plan.moves.iter().enumerate() {
        if slots == 0 {
            break;
        }
        if planned.state != MoveState::Planned.as_str() {
            continue;
        }
        match start_move(engine, tx, planned).await? {
            Ok(migration_id) => {
                record_move(
                    tx,
                    &plan.id,
                    position,
                    MoveState::Started,
                    Some(&migration_id),
                    None,
                )
                .await?;
                slots -= 1;
                started += 1;
            }
            Err(why) => {
                tracing::info!(plan = %plan.id, profile = %planned.profile_id, "move skipped: {why}");
                record_move(tx, &plan.id, position, MoveState::Skipped, None, Some(&why)).await?;
            }
        }
    }
    Ok(started)
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
    // A deleted target must not fall back to placement elsewhere: the plan chose it.
    if cells::find(tx, &planned.target_cell_id).await?.is_none() {
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
        Err(e @ (ManagerError::NoCellFits { .. } | ManagerError::Conflict(_))) => {
            Ok(Err(e.to_string()))
        }
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
    residents: HashMap<String, Vec<String>>,
    /// What each participant needs of a cell; None for one that cannot move now.
    needs: HashMap<String, Option<Movable>>,
    /// Cells serving each set of dataspace profiles, read once per set.
    serving: HashMap<Vec<String>, Option<HashSet<String>>>,
    moved: HashSet<String>,
}

struct Movable {
    tenant_id: String,
    needs: Requirements,
}

struct Computed {
    cells: Vec<PlannedCell>,
    moves: Vec<PlannedMove>,
    unresolved: Vec<CellRefusal>,
}

impl<'a> Planner<'a> {
    fn new(conn: &'a mut Conn, band: UtilisationBand, cells: Vec<Cell>) -> Self {
        Self {
            conn,
            band,
            cells,
            residents: HashMap::new(),
            needs: HashMap::new(),
            serving: HashMap::new(),
            moved: HashSet::new(),
        }
    }

    async fn run(mut self) -> Result<Computed> {
        let before: BTreeMap<String, i64> = self
            .cells
            .iter()
            .map(|c| (c.id.clone(), c.usage.taken()))
            .collect();
        let mut moves = Vec::new();
        while moves.len() < MAX_MOVES {
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
            let capacity = cell.capacity.map(|c| c.max_participants).unwrap_or(1);
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
                planned_utilisation: utilisation,
            });
        }
        Ok(Computed {
            cells: planned_cells,
            moves,
            unresolved,
        })
    }

    /// The next move as (source index, target index, profile id); None when no move
    /// brings the fleet closer to the band.
    async fn next_move(&mut self) -> Result<Option<(usize, usize, String)>> {
        let band = self.band;
        let util = |c: &Cell, delta: i64| {
            utilisation(
                c.usage.taken() + delta,
                c.capacity.map(|c| c.max_participants).unwrap_or(1),
            )
        };
        let by_load = |cells: &[Cell], mut ids: Vec<usize>, descending: bool| {
            ids.sort_by(|&a, &b| {
                let order = util(&cells[a], 0).total_cmp(&util(&cells[b], 0));
                let order = if descending { order.reverse() } else { order };
                order.then(cells[a].id.cmp(&cells[b].id))
            });
            ids
        };
        let all: Vec<usize> = (0..self.cells.len()).collect();
        let over: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| util(&self.cells[i], 0) > band.max)
            .collect();
        let (sources, targets) = if !over.is_empty() {
            let targets = all
                .iter()
                .copied()
                .filter(|&i| util(&self.cells[i], 1) <= band.max)
                .collect();
            (
                by_load(&self.cells, over, true),
                by_load(&self.cells, targets, false),
            )
        } else {
            let under: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&i| {
                    util(&self.cells[i], 0) < band.min && util(&self.cells[i], 1) <= band.max
                })
                .collect();
            if under.is_empty() {
                return Ok(None);
            }
            let sources = all
                .iter()
                .copied()
                .filter(|&i| {
                    util(&self.cells[i], 0) >= band.min && util(&self.cells[i], -1) >= band.min
                })
                .collect();
            (
                by_load(&self.cells, sources, true),
                by_load(&self.cells, under, false),
            )
        };
        for &from in &sources {
            let residents = self.residents_of(from).await?;
            for profile_id in residents {
                if self.moved.contains(&profile_id) {
                    continue;
                }
                for &to in &targets {
                    if to != from && self.fits(&profile_id, to).await? {
                        return Ok(Some((from, to, profile_id)));
                    }
                }
            }
        }
        Ok(None)
    }

    async fn residents_of(&mut self, index: usize) -> Result<Vec<String>> {
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
        self.residents.insert(cell_id, ids.clone());
        Ok(ids)
    }

    /// Whether the participant can move into cell `to` as the cells stand in the plan.
    async fn fits(&mut self, profile_id: &str, to: usize) -> Result<bool> {
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
        let key = movable.needs.dataspace_profile_ids.clone();
        if !self.serving.contains_key(&key) {
            let serving = placement::serving_cells(self.conn, &key).await?;
            self.serving.insert(key.clone(), serving);
        }
        let serving = self.serving[&key].as_ref();
        Ok(placement::refusal(&self.cells[to], &movable.needs, serving).is_none())
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
        } else if cell.capacity.is_none() {
            Some("has no maxParticipants, so no utilisation".to_string())
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

/// The fleet's mean utilisation ± [`DEFAULT_TOLERANCE`].
fn mean_band(cells: &[Cell]) -> UtilisationBand {
    let (taken, capacity) = cells.iter().fold((0i64, 0i64), |(t, c), cell| {
        (
            t + cell.usage.taken(),
            c + cell.capacity.map(|c| c.max_participants).unwrap_or(0),
        )
    });
    let mean = utilisation_of(taken, capacity);
    UtilisationBand {
        min: (mean - DEFAULT_TOLERANCE).max(0.0),
        max: (mean + DEFAULT_TOLERANCE).min(1.0),
    }
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

async fn fetch(conn: &mut Conn, id: &str) -> Result<RebalancePlan> {
    let row = sqlx::query(AssertSqlSafe(format!("{SELECT_PLAN} WHERE id = $1")))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ManagerError::not_found(format!("rebalance plan '{id}' not found")))?;
    let mut plan = read_plan(&row)?;
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
            let migration_state: Option<String> = row.get("migration_state");
            let detail: Option<String> = row.get("detail");
            PlannedMove {
                profile_id: row.get("profile_id"),
                tenant_id: row.get("tenant_id"),
                source_cell_id: row.get("source_cell_id"),
                target_cell_id: row.get("target_cell_id"),
                state: migration_state.clone().unwrap_or_else(|| row.get("state")),
                migration_id: row.get("migration_id"),
                detail: detail.or_else(|| migration_state.and(row.get("error_detail"))),
            }
        })
        .collect())
}

fn progress(moves: &[PlannedMove]) -> PlanProgress {
    let mut progress = PlanProgress::default();
    for planned in moves {
        use MigrationState::*;
        match planned.state.parse::<MigrationState>() {
            // A switched migration has moved its participant and is still cleaning up.
            Ok(Switched | Completed | CleanupFailed) => progress.moved += 1,
            Ok(Provisioning | RollingBack) => progress.in_flight += 1,
            Ok(RolledBack | Failed) => progress.failed += 1,
            Err(_) if planned.state == MoveState::Skipped.as_str() => progress.skipped += 1,
            Err(_) => progress.remaining += 1,
        }
        if planned.state == Switched.as_str() {
            // Still cleaning the source up: it counts against the parallelism too.
            progress.in_flight += 1;
        }
    }
    progress
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
