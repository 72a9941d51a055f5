//! Fleet operations from the terminal: draining a cell, rebalancing cells and rolling a
//! template version out (a participant's migration is among the participant commands).
//! Each long one can be followed with `--wait` until it ends: a bar on a terminal, a line
//! per change in a pipe, and a non-zero exit when it ends other than completed.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};

use super::commands::{BodyFile, Commands, Paging, Session, WaitArgs, segment};
use super::output::{self, Column, text};
use super::watch;
use super::{ClientError, Result};

#[derive(Subcommand)]
pub(crate) enum DrainCommand {
    /// Drain a cell: cordon it and move each of its participants to another cell,
    /// `--parallelism` at a time; it ends `drained`.
    Start {
        /// The cell (id or external id).
        cell: String,
        /// Migrations at once (1–256; default the server's).
        #[arg(long)]
        parallelism: Option<u32>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show a cell's latest drain.
    Get { cell: String },
    /// Start no more migrations; those under way finish.
    Pause { cell: String },
    /// Go on with a paused or stalled drain.
    Resume {
        cell: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop for good; the cell stays cordoned.
    Cancel { cell: String },
}

#[derive(Subcommand)]
pub(crate) enum RolloutCommand {
    /// List rollouts, newest first.
    List(Paging),
    /// Show one rollout with its progress.
    Get { id: String },
    /// Upgrade the participants a template provisioned to one of its versions, in batches.
    Create {
        /// The template (orchestration definition) id.
        #[arg(long, required_unless_present = "file")]
        template: Option<String>,
        /// The version to upgrade to (default: the template's newest).
        #[arg(long)]
        version: Option<i64>,
        /// Only the participants this predicate matches, e.g. `tenantId = '…'`.
        #[arg(long)]
        selector: Option<String>,
        /// Participants per batch (default 25).
        #[arg(long)]
        batch_size: Option<i64>,
        /// Upgrades at once within a batch (default the batch size).
        #[arg(long)]
        max_parallel: Option<i64>,
        /// Failures allowed before it pauses, as a count (default 0).
        #[arg(long, conflicts_with = "failure_percent")]
        failure_count: Option<i64>,
        /// Failures allowed before it pauses, as a percentage of the participants.
        #[arg(long)]
        failure_percent: Option<f64>,
        /// Wait between batches, in milliseconds.
        #[arg(long)]
        pause_between_batches_ms: Option<i64>,
        #[command(flatten)]
        body: BodyFile,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// A rollout's participants in upgrade order, with how each went.
    Participants {
        id: String,
        /// Only these: pending, upgrading, upgraded, failed or skipped.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Start no more upgrades; those under way finish.
    Pause { id: String },
    /// Try the failed participants again and go on, the failure budget starting over.
    Resume {
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop for good: participants not started yet stay on their version.
    Abort { id: String },
}

#[derive(Subcommand)]
pub(crate) enum RebalanceCommand {
    /// Plan moves that bring every cell's use into a band (a dry run: nothing moves).
    Plan {
        /// The band's lower bound, a fraction of capacity; with `--max` (both left out:
        /// the fleet's mean ± 0.1).
        #[arg(long, requires = "max")]
        min: Option<f64>,
        /// The band's upper bound; with `--min`.
        #[arg(long, requires = "min")]
        max: Option<f64>,
        /// Only these cells (id or external id); repeat for more.
        #[arg(long = "cell")]
        cells: Vec<String>,
        /// Migrations at once when executed.
        #[arg(long)]
        parallelism: Option<u32>,
    },
    /// List plans.
    List(Paging),
    /// Show one plan with its moves and progress.
    Get { id: String },
    /// Carry a plan out: its moves as migrations.
    Execute {
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop a plan; moves under way finish.
    Cancel { id: String },
}

impl Commands for DrainCommand {
    async fn run(self, s: &Session) -> Result<()> {
        let named = match &self {
            DrainCommand::Start { cell, .. }
            | DrainCommand::Get { cell }
            | DrainCommand::Pause { cell }
            | DrainCommand::Resume { cell, .. }
            | DrainCommand::Cancel { cell } => cell.clone(),
        };
        let path = format!("/cells/{}/drain", segment(&cell_id(s, &named).await?));
        match self {
            DrainCommand::Start {
                parallelism, wait, ..
            } => {
                let body = match parallelism {
                    Some(n) => json!({"parallelism": n}),
                    None => json!({}),
                };
                let drain: Value = s.client.post(&path, &body).await?;
                eprintln!("cell {named} draining ({})", text(&drain, "id"));
                finish(s, &path, drain, &wait, DRAIN).await
            }
            DrainCommand::Get { .. } => s.show(&path, DRAIN.columns).await,
            DrainCommand::Pause { .. } => control(s, &path, "pause", DRAIN).await,
            DrainCommand::Cancel { .. } => control(s, &path, "cancel", DRAIN).await,
            DrainCommand::Resume { wait, .. } => {
                let drain: Value = s.client.post(&format!("{path}/resume"), &json!({})).await?;
                finish(s, &path, drain, &wait, DRAIN).await
            }
        }
    }
}

impl Commands for RolloutCommand {
    async fn run(self, s: &Session) -> Result<()> {
        let path = |id: &str| format!("/rollouts/{}", segment(id));
        match self {
            RolloutCommand::List(paging) => s.list("/rollouts", ROLLOUT.columns, &paging).await,
            RolloutCommand::Get { id } => s.show(&path(&id), ROLLOUT.columns).await,
            RolloutCommand::Create {
                template,
                version,
                selector,
                batch_size,
                max_parallel,
                failure_count,
                failure_percent,
                pause_between_batches_ms,
                body,
                wait,
            } => {
                let mut body = body.read()?;
                set(&mut body, "templateId", template);
                set(&mut body, "version", version);
                set(&mut body, "selector", selector);
                set(&mut body, "batchSize", batch_size);
                set(&mut body, "maxParallel", max_parallel);
                set(&mut body, "pauseBetweenBatchesMs", pause_between_batches_ms);
                if let Some(count) = failure_count {
                    body.insert("failureBudget".into(), json!({"count": count}));
                }
                if let Some(percent) = failure_percent {
                    body.insert("failureBudget".into(), json!({"percent": percent}));
                }
                let rollout: Value = s.client.post("/rollouts", &Value::Object(body)).await?;
                let id = text(&rollout, "id");
                eprintln!(
                    "rollout {id}: {} to version {}",
                    count(&rollout["total"], "participant"),
                    text(&rollout, "targetVersion")
                );
                finish(s, &path(&id), rollout, &wait, ROLLOUT).await
            }
            RolloutCommand::Participants { id, state, paging } => {
                let mut listed = format!("{}/participants", path(&id));
                if let Some(state) = state {
                    listed = format!("{listed}?state={}", segment(&state));
                }
                s.list(&listed, ROLLOUT_TARGET_COLUMNS, &paging).await
            }
            RolloutCommand::Pause { id } => control(s, &path(&id), "pause", ROLLOUT).await,
            RolloutCommand::Abort { id } => control(s, &path(&id), "abort", ROLLOUT).await,
            RolloutCommand::Resume { id, wait } => {
                let rollout: Value = s
                    .client
                    .post(&format!("{}/resume", path(&id)), &json!({}))
                    .await?;
                finish(s, &path(&id), rollout, &wait, ROLLOUT).await
            }
        }
    }
}

impl Commands for RebalanceCommand {
    async fn run(self, s: &Session) -> Result<()> {
        let path = |id: &str| format!("/rebalance-plans/{}", segment(id));
        match self {
            RebalanceCommand::Plan {
                min,
                max,
                cells,
                parallelism,
            } => {
                let mut body = Map::new();
                if min.is_some() || max.is_some() {
                    let mut band = Map::new();
                    set(&mut band, "min", min);
                    set(&mut band, "max", max);
                    body.insert("band".into(), Value::Object(band));
                }
                if !cells.is_empty() {
                    body.insert("cellIds".into(), json!(cells));
                }
                set(&mut body, "parallelism", parallelism);
                let plan: Value = s
                    .client
                    .post("/rebalance-plans", &Value::Object(body))
                    .await?;
                output::one(s.format, PLAN.columns, &plan)?;
                if s.format == output::Format::Table {
                    print_moves(&plan);
                }
                Ok(())
            }
            RebalanceCommand::List(paging) => {
                s.list("/rebalance-plans", PLAN.columns, &paging).await
            }
            RebalanceCommand::Get { id } => {
                let plan: Value = s.client.get(&path(&id)).await?;
                output::one(s.format, PLAN.columns, &plan)?;
                if s.format == output::Format::Table {
                    print_moves(&plan);
                }
                Ok(())
            }
            RebalanceCommand::Execute { id, wait } => {
                let plan: Value = s
                    .client
                    .post(&format!("{}/execute", path(&id)), &json!({}))
                    .await?;
                finish(s, &path(&id), plan, &wait, PLAN).await
            }
            RebalanceCommand::Cancel { id } => control(s, &path(&id), "cancel", PLAN).await,
        }
    }
}

/// Starts a participant's `verify` or `reconcile` and, with `--wait`, follows its drift
/// state until it settles: exit 0 in sync or repaired, 1 drifted, unverified or not
/// repaired.
pub(super) async fn check_drift(
    s: &Session,
    profile: &str,
    action: &str,
    wait: &WaitArgs,
) -> Result<()> {
    let mut current: Value = s
        .client
        .post(&format!("{profile}/{action}"), &json!({}))
        .await?;
    if !wait.wait {
        return output::one(s.format, DRIFT_COLUMNS, &current);
    }
    let deadline = Instant::now() + wait.timeout();
    let mut shown = String::new();
    let state = loop {
        let state = text(&current, "drift.state");
        if state != shown {
            eprintln!("{action} {state}");
            shown = state.clone();
        }
        if !["verifying", "repairing"].contains(&state.as_str()) {
            break state;
        }
        if Instant::now() > deadline {
            return Err(ClientError::Failed(format!(
                "gave up after {} s: the {action} is still {state} (it goes on)",
                wait.timeout().as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
        current = watch::read(&s.client, profile).await?;
    };
    output::one(s.format, DRIFT_COLUMNS, &current)?;
    match state.as_str() {
        "in-sync" | "repaired" => Ok(()),
        _ => Err(ClientError::Failed(format!(
            "{state}: {}",
            drift_summary(&current)
        ))),
    }
}

/// Sets and removes (`null`) properties of one of a participant's VPAs and, with
/// `--wait`, follows the update until the VPA carries them; exit 1 when it failed.
pub(super) async fn scale(
    s: &Session,
    profile: &str,
    vpa: &str,
    change: Map<String, Value>,
    wait: &WaitArgs,
) -> Result<()> {
    let body = json!({"vpaProperties": {vpa: change.clone()}});
    let mut current: Value = s.client.patch(profile, &body).await?;
    if !wait.wait {
        return output::document(s.format, &current["pendingVpaProperties"]);
    }
    let deadline = Instant::now() + wait.timeout();
    eprintln!("updating {vpa}");
    while !current["pendingVpaProperties"].is_null() {
        if Instant::now() > deadline {
            return Err(ClientError::Failed(format!(
                "gave up after {} s: the update is still pending (it goes on)",
                wait.timeout().as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
        current = watch::read(&s.client, profile).await?;
    }
    let properties = current["vpas"]
        .as_array()
        .and_then(|vpas| vpas.iter().find(|v| v["type"] == vpa))
        .map(|v| v["properties"].clone())
        .unwrap_or(Value::Null);
    output::document(s.format, &properties)?;
    let applied = change
        .iter()
        .all(|(key, value)| properties.get(key).unwrap_or(&Value::Null) == value);
    if applied {
        return Ok(());
    }
    Err(ClientError::Failed(format!(
        "the update of {vpa} failed: {}",
        text(&current, "errorDetail")
    )))
}

const DRIFT_COLUMNS: &[Column] = &[
    ("PARTICIPANT", |v| text(v, "id")),
    ("DRIFT", |v| text(v, "drift.state")),
    ("CHECKED", |v| text(v, "drift.checkedAt")),
    ("DRIFTED", |v| text(v, "driftCount")),
    ("FINDINGS", drift_summary),
];

/// The activities a drift check found drifted, or why it could not check.
fn drift_summary(profile: &Value) -> String {
    let detail = text(profile, "drift.detail");
    let drifted: Vec<String> = profile["drift"]["activities"]
        .as_array()
        .map(|activities| {
            activities
                .iter()
                .filter(|a| a["findings"].as_array().is_some_and(|f| !f.is_empty()))
                .map(|a| text(a, "activityId"))
                .collect()
        })
        .unwrap_or_default();
    match (drifted.is_empty(), detail.is_empty()) {
        (false, _) => format!("drifted: {}", drifted.join(", ")),
        (true, false) => detail,
        (true, true) => String::new(),
    }
}

/// What the client knows of one kind of operation: how to print it and how far it is.
pub(super) struct Operation {
    /// What it is called in messages.
    pub(super) name: &'static str,
    pub(super) columns: &'static [Column],
    /// Participants done (however they ended) and in all.
    progress: fn(&Value) -> (u64, u64),
    /// Its states that end it well, and those that end it otherwise (or stop it, as a
    /// pause does, so that waiting would never end).
    completed: &'static [&'static str],
    stopped: &'static [&'static str],
}

const DRAIN: &Operation = &Operation {
    name: "drain",
    columns: &[
        ("ID", |v| text(v, "id")),
        ("CELL", |v| text(v, "cellId")),
        ("STATE", |v| text(v, "state")),
        ("MOVED", |v| {
            format!("{}/{}", text(v, "moved"), text(v, "total"))
        }),
        ("IN FLIGHT", |v| text(v, "inFlight")),
        ("FAILED", |v| text(v, "failed")),
        ("DETAIL", |v| text(v, "detail")),
    ],
    // `failed` counts attempts, which are tried again: only moves are progress.
    progress: |v| {
        let n = |field: &str| v[field].as_u64().unwrap_or(0);
        (n("moved"), n("total"))
    },
    completed: &["completed"],
    stopped: &["paused", "cancelled", "stalled"],
};

const ROLLOUT: &Operation = &Operation {
    name: "rollout",
    columns: &[
        ("ID", |v| text(v, "id")),
        ("TEMPLATE", |v| {
            format!("{} → v{}", text(v, "templateId"), text(v, "targetVersion"))
        }),
        ("STATE", |v| text(v, "state")),
        ("UPGRADED", |v| {
            format!("{}/{}", text(v, "progress.upgraded"), text(v, "total"))
        }),
        ("FAILED", |v| text(v, "progress.failed")),
        ("BUDGET", |v| {
            format!("{}/{}", text(v, "failures"), text(v, "maxFailures"))
        }),
        ("SKIPPED", |v| text(v, "progress.skipped")),
        ("BATCH", |v| text(v, "batch")),
        ("DETAIL", |v| text(v, "detail")),
    ],
    progress: |v| {
        let n = |field: &str| v["progress"][field].as_u64().unwrap_or(0);
        (
            n("upgraded") + n("failed") + n("skipped"),
            v["total"].as_u64().unwrap_or(0),
        )
    },
    completed: &["completed"],
    stopped: &["paused", "failed", "aborted"],
};

const PLAN: &Operation = &Operation {
    name: "rebalance plan",
    columns: &[
        ("ID", |v| text(v, "id")),
        ("STATE", |v| text(v, "state")),
        ("BAND", |v| {
            format!("{}–{}", text(v, "band.min"), text(v, "band.max"))
        }),
        ("MOVES", |v| {
            v["moves"]
                .as_array()
                .map_or_else(|| "—".into(), |moves| moves.len().to_string())
        }),
        ("MOVED", |v| text(v, "progress.moved")),
        ("FAILED", |v| text(v, "progress.failed")),
        ("EXPIRES", |v| text(v, "expiresAt")),
        ("DETAIL", |v| text(v, "detail")),
    ],
    progress: |v| {
        let n = |field: &str| v["progress"][field].as_u64().unwrap_or(0);
        let done = n("moved") + n("failed") + n("skipped");
        (done, done + n("inFlight") + n("remaining"))
    },
    completed: &["completed"],
    stopped: &["cancelled", "stale"],
};

const ROLLOUT_TARGET_COLUMNS: &[Column] = &[
    ("PARTICIPANT", |v| text(v, "profileId")),
    ("TENANT", |v| text(v, "tenantId")),
    ("BATCH", |v| text(v, "batch")),
    ("STATE", |v| text(v, "state")),
    ("FROM", |v| text(v, "fromVersion")),
    ("ATTEMPTS", |v| text(v, "attempts")),
    ("DETAIL", |v| text(v, "detail")),
];

/// Pauses, cancels or aborts: prints the operation as it is now.
async fn control(s: &Session, path: &str, action: &str, operation: &Operation) -> Result<()> {
    let answer: Value = s
        .client
        .post(&format!("{path}/{action}"), &json!({}))
        .await?;
    output::one(s.format, operation.columns, &answer)
}

/// Prints what a command answered; with `--wait`, follows the operation at `path` first,
/// and fails when it ends other than completed.
async fn finish(
    s: &Session,
    path: &str,
    answer: Value,
    wait: &WaitArgs,
    operation: &Operation,
) -> Result<()> {
    if !wait.wait {
        return output::one(s.format, operation.columns, &answer);
    }
    let last = follow(s, path, answer, wait.timeout(), operation).await?;
    output::one(s.format, operation.columns, &last)?;
    let state = text(&last, "state");
    if operation.completed.contains(&state.as_str()) {
        return Ok(());
    }
    let detail = text(&last, "detail");
    Err(ClientError::Failed(format!(
        "{} {} {state}{}",
        operation.name,
        text(&last, "id"),
        if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        }
    )))
}

/// How often a followed operation is read.
const POLL: Duration = Duration::from_millis(500);

/// Reads the operation at `path` until it ends or stops; its last state. Progress goes to
/// standard error: a bar on a terminal, else a line whenever it changes.
async fn follow(
    s: &Session,
    path: &str,
    mut current: Value,
    timeout: Duration,
    operation: &Operation,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar
    });
    let mut shown = String::new();
    loop {
        let (done, total) = (operation.progress)(&current);
        let state = text(&current, "state");
        let line = format!("{} {state}: {done}/{total}", operation.name);
        match &bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(state.clone());
            }
            None if line != shown => eprintln!("{line}"),
            None => {}
        }
        shown = line;
        let state = state.as_str();
        if operation.completed.contains(&state) || operation.stopped.contains(&state) {
            if let Some(bar) = &bar {
                bar.finish();
            }
            return Ok(current);
        }
        if Instant::now() > deadline {
            if let Some(bar) = &bar {
                bar.abandon();
            }
            return Err(ClientError::Failed(format!(
                "gave up after {} s: {} {} is still {state} (it goes on)",
                timeout.as_secs(),
                operation.name,
                text(&current, "id"),
            )));
        }
        tokio::time::sleep(POLL).await;
        current = watch::read(&s.client, path).await?;
    }
}

/// The id of the cell a person named by id or external id.
pub(super) async fn cell_id(s: &Session, named: &str) -> Result<String> {
    match s
        .client
        .get::<Value>(&format!("/cells/{}", segment(named)))
        .await
    {
        Ok(_) => return Ok(named.to_string()),
        Err(e) if e.status() == Some(reqwest::StatusCode::NOT_FOUND) => {}
        Err(e) => return Err(e),
    }
    let cells = s
        .client
        .page(reqwest::Method::GET, "/cells?limit=10000", None)
        .await?;
    cells
        .items
        .iter()
        .find(|cell| cell["externalId"] == named)
        .map(|cell| text(cell, "id"))
        .ok_or_else(|| ClientError::Usage(format!("no cell {named} (by id or external id)")))
}

/// A plan's moves under its table.
fn print_moves(plan: &Value) {
    let Some(moves) = plan["moves"].as_array().filter(|m| !m.is_empty()) else {
        eprintln!("no moves: every cell is within the band");
        return;
    };
    println!();
    output::many(
        output::Format::Table,
        MOVE_COLUMNS,
        &super::Page {
            items: moves.clone(),
            total: None,
        },
        None,
    )
    .unwrap_or(());
}

const MOVE_COLUMNS: &[Column] = &[
    ("PARTICIPANT", |v| text(v, "profileId")),
    ("FROM", |v| text(v, "sourceCellId")),
    ("TO", |v| text(v, "targetCellId")),
    ("STATE", |v| text(v, "state")),
];

/// Sets `key` in a request body when the flag was given.
fn set<T: Into<Value>>(body: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(value) = value {
        body.insert(key.into(), value.into());
    }
}

/// `n thing` or `n things`.
fn count(n: &Value, thing: &str) -> String {
    match n.as_u64() {
        Some(1) => format!("1 {thing}"),
        Some(n) => format!("{n} {thing}s"),
        None => format!("? {thing}s"),
    }
}
