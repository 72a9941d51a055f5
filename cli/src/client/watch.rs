//! `--wait`: following the orchestration a command started, with a progress bar for
//! the whole and a line per activity on a terminal, or a plain line per change in a log.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use cfm_manager::lifecycle::StepState;
use cfm_manager::model::{HistoryEntry, Orchestration};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::StatusCode;

use super::dag::{self, Painter};
use super::{Client, ClientError, Result};

/// How often the orchestration is read while it runs.
const POLL: Duration = Duration::from_millis(200);

/// The kind of orchestration a command starts.
#[derive(Clone, Copy)]
pub(super) enum Goal {
    Deploy,
    Dispose,
}

impl Goal {
    fn matches(self, orchestration_type: &str) -> bool {
        match self {
            Goal::Deploy => orchestration_type.ends_with(".deploy"),
            Goal::Dispose => orchestration_type.ends_with(".dispose"),
        }
    }

    /// Whether the profile a command answered is where the orchestration would take it.
    pub(super) fn settled(self, profile: &serde_json::Value) -> bool {
        let state = profile
            .pointer("/vpas/0/state")
            .and_then(serde_json::Value::as_str);
        match self {
            Goal::Deploy => state == Some("active"),
            Goal::Dispose => state == Some("disposed"),
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Goal::Deploy => "deploy",
            Goal::Dispose => "dispose",
        }
    }
}

/// The ids of the participant's finished orchestrations (among the newest 100), so the
/// one a command starts can be told from them. A running one is left out: a command
/// that finds one of its kind running (a dispose asked for again) follows that one.
pub(super) async fn orchestration_ids(c: &Client, profile: &str) -> Result<Vec<String>> {
    let entries: Vec<HistoryEntry> = c.get(&format!("{profile}/history?limit=100")).await?;
    Ok(entries
        .into_iter()
        .filter(|e| e.state != 1)
        .map(|e| e.orchestration_id)
        .collect())
}

/// Polls tolerate this many failed reads in a row (a manager restarting, say) before
/// `--wait` gives up.
const POLL_FAILURES: usize = 5;

/// A read while following: a refusal ends the wait at once, a server out of reach is
/// tried again up to [`POLL_FAILURES`] times.
pub(super) async fn read<T: serde::de::DeserializeOwned>(c: &Client, path: &str) -> Result<T> {
    let mut failures = 0;
    loop {
        match c.get(path).await {
            Err(ClientError::Unreachable { .. }) if failures < POLL_FAILURES => {
                failures += 1;
                tokio::time::sleep(POLL * 5).await;
            }
            answer => return answer,
        }
    }
}

/// Follows the participant's first `goal` orchestration not in `seen` until it ends;
/// an error when it fails, naming the step and its error, or when `timeout` passes.
pub(super) async fn follow(
    c: &Client,
    profile: &str,
    goal: Goal,
    seen: &[String],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let entry = loop {
        let entries: Vec<HistoryEntry> = read(c, &format!("{profile}/history?limit=20")).await?;
        if let Some(entry) = entries
            .into_iter()
            .find(|e| goal.matches(&e.orchestration_type) && !seen.contains(&e.orchestration_id))
        {
            break entry;
        }
        if Instant::now() > deadline {
            return Err(ClientError::Usage(format!(
                "gave up after {} s: no {} orchestration started",
                timeout.as_secs(),
                goal.name()
            )));
        }
        tokio::time::sleep(POLL).await;
    };
    let id = entry.orchestration_id.clone();
    let path = format!("/orchestrations/{id}");
    let mut display = Display::new(goal);
    loop {
        let orchestration: Orchestration = match read(c, &path).await {
            Ok(o) => o,
            // A token confined to a tenant may not read orchestrations: follow the
            // participant's history entry instead, without the steps.
            Err(e) if e.status() == Some(StatusCode::FORBIDDEN) => {
                return follow_entry(c, profile, &id, deadline, timeout).await;
            }
            Err(e) => return Err(e),
        };
        display.update(&orchestration);
        match orchestration.state {
            2 => {
                display.finish();
                return Ok(());
            }
            3 => {
                display.finish();
                return Err(failure(&orchestration));
            }
            _ if Instant::now() > deadline => {
                display.finish();
                return Err(gave_up(timeout, &id));
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// A migration's states that end it.
const MIGRATION_ENDS: [&str; 4] = ["completed", "rolled-back", "failed", "cleanup-failed"];

/// Follows the participant's migration `started` until it ends; its last state. Each
/// state it passes (provisioning, switched, rolling-back, ...) is a line on standard error.
pub(super) async fn follow_migration(
    c: &Client,
    profile: &str,
    started: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let id = started["id"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + timeout;
    let mut current = started.clone();
    let mut shown = String::new();
    loop {
        let state = current["state"].as_str().unwrap_or_default().to_string();
        if state != shown {
            eprintln!("migration {id} {state}");
            shown = state.clone();
        }
        if MIGRATION_ENDS.contains(&state.as_str()) {
            return Ok(current);
        }
        if Instant::now() > deadline {
            return Err(ClientError::Failed(format!(
                "gave up waiting after {} s; migration {id} goes on ({state})",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
        let migrations: Vec<serde_json::Value> = read(c, &format!("{profile}/migrations")).await?;
        current = migrations
            .into_iter()
            .find(|m| m["id"] == id.as_str())
            .ok_or_else(|| ClientError::Usage(format!("migration {id} is gone")))?;
    }
}

/// Follows an orchestration through the participant's history alone.
async fn follow_entry(
    c: &Client,
    profile: &str,
    id: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    spinner.set_message(format!("orchestration {id} running"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    loop {
        let entries: Vec<HistoryEntry> = read(c, &format!("{profile}/history?limit=100")).await?;
        let entry = entries.into_iter().find(|e| e.orchestration_id == id);
        match entry.as_ref().map(|e| e.state) {
            Some(2) => {
                spinner.finish_and_clear();
                eprintln!("orchestration {id} completed");
                return Ok(());
            }
            Some(3) => {
                spinner.finish_and_clear();
                let detail = entry.and_then(|e| e.error_detail).unwrap_or_default();
                return Err(ClientError::Failed(format!(
                    "orchestration {id} failed: {detail}"
                )));
            }
            _ if Instant::now() > deadline => {
                spinner.finish_and_clear();
                return Err(gave_up(timeout, id));
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

fn failure(o: &Orchestration) -> ClientError {
    let failed = o.steps.iter().find(|s| s.state == StepState::Failed);
    ClientError::Failed(match failed {
        Some(step) => format!(
            "{} {} failed at step {} ({}) after {} attempt(s): {}",
            o.orchestration_type,
            o.id,
            step.id,
            step.activity_type,
            step.attempts,
            step.last_error.as_deref().unwrap_or("no error given")
        ),
        None => format!(
            "{} {} errored: {}",
            o.orchestration_type,
            o.id,
            o.error_detail.as_deref().unwrap_or("no error given")
        ),
    })
}

fn gave_up(timeout: Duration, id: &str) -> ClientError {
    ClientError::Failed(format!(
        "gave up waiting after {} s; the orchestration runs on: cfm orchestrations show {id}",
        timeout.as_secs()
    ))
}

/// What the person sees while an orchestration runs.
enum Display {
    /// A terminal: one bar for the whole, one line per step, redrawn in place.
    Bars {
        multi: MultiProgress,
        overall: ProgressBar,
        steps: HashMap<String, ProgressBar>,
        paint: Painter,
    },
    /// A file or pipe: one line per step whose state changed.
    Lines {
        last: HashMap<String, (StepState, i64)>,
    },
}

impl Display {
    fn new(goal: Goal) -> Display {
        if !std::io::stderr().is_terminal() {
            return Display::Lines {
                last: HashMap::new(),
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template("{prefix} [{bar:32}] {pos}/{len} activities  {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        overall.set_prefix(goal.name());
        Display::Bars {
            multi,
            overall,
            steps: HashMap::new(),
            paint: Painter(std::env::var_os("NO_COLOR").is_none()),
        }
    }

    fn update(&mut self, o: &Orchestration) {
        let id_width = o
            .steps
            .iter()
            .map(|s| s.id.chars().count())
            .max()
            .unwrap_or(0);
        match self {
            Display::Bars {
                multi,
                overall,
                steps,
                paint,
            } => {
                // Drawn from the first answer on: before it, the length is unknown.
                if overall.length() == Some(0) {
                    overall.enable_steady_tick(Duration::from_millis(100));
                }
                overall.set_length(o.steps.len() as u64);
                let done = o
                    .steps
                    .iter()
                    .filter(|s| s.state == StepState::Completed)
                    .count();
                overall.set_position(done as u64);
                // A running step spins; the others show their state's mark.
                let spinner = ProgressStyle::with_template("  {spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let still = ProgressStyle::with_template("  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                for step in &o.steps {
                    let bar = steps
                        .entry(step.id.clone())
                        .or_insert_with(|| multi.add(ProgressBar::new_spinner()));
                    if bar.is_finished() {
                        continue;
                    }
                    let (symbol, colour) = dag::mark(step.state);
                    let line = format!("{:<id_width$}  {}", step.id, describe(step));
                    let marked = format!("{} {line}", paint.apply(symbol, colour));
                    match step.state {
                        StepState::Dispatched => {
                            bar.set_style(spinner.clone());
                            bar.set_message(line);
                            bar.enable_steady_tick(Duration::from_millis(100));
                        }
                        StepState::Pending => {
                            bar.set_style(still.clone());
                            bar.set_message(marked);
                        }
                        _ => {
                            bar.set_style(still.clone());
                            bar.finish_with_message(marked);
                        }
                    }
                }
            }
            Display::Lines { last } => {
                for step in &o.steps {
                    let now = (step.state, step.attempts);
                    if last.get(&step.id) == Some(&now) {
                        continue;
                    }
                    last.insert(step.id.clone(), now);
                    let (symbol, _) = dag::mark(step.state);
                    eprintln!("{symbol} {:<id_width$}  {}", step.id, describe(step));
                }
            }
        }
    }

    /// Leaves the last frame on the terminal: steps that never ended (after a failure)
    /// stop spinning where they were.
    fn finish(&self) {
        if let Display::Bars { overall, steps, .. } = self {
            for bar in steps.values().filter(|bar| !bar.is_finished()) {
                bar.abandon();
            }
            overall.abandon();
        }
    }
}

/// A step's state for people: `running (attempt 2)`, `completed in 12 ms`, `failed: ...`.
fn describe(step: &cfm_manager::model::Step) -> String {
    let took = dag::duration(step)
        .map(|d| format!(" in {d}"))
        .unwrap_or_default();
    match step.state {
        StepState::Pending => "waiting".into(),
        StepState::Dispatched if step.attempts > 1 => format!(
            "running (attempt {}; last: {})",
            step.attempts,
            step.last_error.as_deref().unwrap_or("rescheduled")
        ),
        StepState::Dispatched => "running".into(),
        StepState::Completed => format!("completed{took}"),
        StepState::Failed => format!(
            "failed{took}: {}",
            step.last_error.as_deref().unwrap_or("no error given")
        ),
        StepState::Cancelled => "cancelled".into(),
    }
}
