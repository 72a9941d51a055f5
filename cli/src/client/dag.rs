//! Orchestrations and definitions drawn in the terminal: activities in stages (a stage
//! runs once every stage before it that it depends on is done), each with what it waits
//! for, and for a run its state, attempts, duration and error.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use anstyle::{AnsiColor, Style};
use cfm_manager::lifecycle::StepState;
use cfm_manager::model::{Orchestration, OrchestrationDefinition, Step};

use super::commands::short_type;

/// An orchestration with its steps by stage, coloured by state when `colour`.
pub(super) fn orchestration(o: &Orchestration, colour: bool) -> String {
    let paint = Painter(colour);
    let mut out = String::new();
    let state = match o.state {
        2 => paint.apply("completed", AnsiColor::Green),
        3 => paint.apply("errored", AnsiColor::Red),
        1 => paint.apply("running", AnsiColor::Yellow),
        _ => "initialized".to_string(),
    };
    let _ = writeln!(
        out,
        "{} {}  {state}",
        short_type(&o.orchestration_type),
        o.id
    );
    let _ = writeln!(
        out,
        "definition {} v{} · correlation {} · started {}",
        o.definition_id, o.definition_version, o.correlation_id, o.created_timestamp
    );
    if let Some(error) = &o.error_detail {
        let _ = writeln!(
            out,
            "{}",
            paint.apply(&format!("error: {error}"), AnsiColor::Red)
        );
    }
    let nodes: Vec<Node> = o
        .steps
        .iter()
        .map(|step| Node {
            id: &step.id,
            activity_type: &step.activity_type,
            depends_on: &step.depends_on,
            step: Some(step),
        })
        .collect();
    draw(&mut out, &nodes, paint);
    out
}

/// A definition's orchestration types, each with its activities by stage.
pub(super) fn definition(d: &OrchestrationDefinition, colour: bool) -> String {
    let paint = Painter(colour);
    let mut out = String::new();
    let _ = writeln!(out, "definition {} v{}", d.id, d.version);
    if !d.description.is_empty() {
        let _ = writeln!(out, "{}", d.description);
    }
    for (orchestration_type, activities) in &d.activities {
        let _ = writeln!(
            out,
            "\n{}",
            paint.apply(orchestration_type, AnsiColor::Cyan)
        );
        let nodes: Vec<Node> = activities
            .iter()
            .map(|a| Node {
                id: &a.id,
                activity_type: &a.activity_type,
                depends_on: &a.depends_on,
                step: None,
            })
            .collect();
        draw(&mut out, &nodes, paint);
    }
    out
}

/// The symbol and colour of a step's state, shared with the progress display.
pub(super) fn mark(state: StepState) -> (&'static str, AnsiColor) {
    match state {
        StepState::Pending => ("○", AnsiColor::BrightBlack),
        StepState::Dispatched => ("●", AnsiColor::Yellow),
        StepState::Completed => ("✓", AnsiColor::Green),
        StepState::Failed => ("✗", AnsiColor::Red),
        StepState::Cancelled => ("⊘", AnsiColor::BrightBlack),
    }
}

/// How long a step ran, from its first dispatch to its end, e.g. `12 ms` or `1.4 s`.
pub(super) fn duration(step: &Step) -> Option<String> {
    let parse = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let took = parse(&step.completed_timestamp)? - parse(&step.started_timestamp)?;
    let ms = took.num_milliseconds().max(0);
    Some(match ms {
        0..1000 => format!("{ms} ms"),
        _ => format!("{:.1} s", ms as f64 / 1000.0),
    })
}

/// Colour codes, or none.
#[derive(Clone, Copy)]
pub(super) struct Painter(pub(super) bool);

impl Painter {
    pub(super) fn apply(self, text: &str, colour: AnsiColor) -> String {
        if !self.0 {
            return text.to_string();
        }
        let style = Style::new().fg_color(Some(colour.into()));
        format!("{style}{text}{style:#}")
    }
}

struct Node<'a> {
    id: &'a str,
    activity_type: &'a str,
    depends_on: &'a [String],
    step: Option<&'a Step>,
}

fn draw(out: &mut String, nodes: &[Node], paint: Painter) {
    let stages = stages(nodes);
    let id_width = nodes
        .iter()
        .map(|n| n.id.chars().count())
        .max()
        .unwrap_or(0);
    let type_width = nodes
        .iter()
        .map(|n| n.activity_type.chars().count())
        .max()
        .unwrap_or(0);
    let count = stages.len();
    for (number, members) in stages.values().enumerate() {
        let last_stage = number + 1 == count;
        let _ = writeln!(
            out,
            "{} stage {}",
            if number == 0 {
                "┌"
            } else if last_stage {
                "└"
            } else {
                "├"
            },
            number + 1
        );
        let rail = if last_stage { " " } else { "│" };
        for node in members {
            let mut line = format!("{rail}  ");
            match node.step {
                Some(step) => {
                    let (symbol, colour) = mark(step.state);
                    let state = format!("{:<10}", format!("{:?}", step.state).to_lowercase());
                    let _ = write!(
                        line,
                        "{} {:<id_width$}  {:<type_width$}  {}  {:<10}  {:>8}",
                        paint.apply(symbol, colour),
                        node.id,
                        node.activity_type,
                        paint.apply(&state, colour),
                        attempts(step.attempts),
                        duration(step).unwrap_or_default(),
                    );
                }
                None => {
                    let _ = write!(
                        line,
                        "• {:<id_width$}  {:<type_width$}",
                        node.id, node.activity_type
                    );
                }
            }
            if !node.depends_on.is_empty() {
                let _ = write!(line, "  ← {}", node.depends_on.join(", "));
            }
            let _ = writeln!(out, "{}", line.trim_end());
            if let Some(error) = node.step.and_then(|s| s.last_error.as_deref()) {
                let _ = writeln!(out, "{rail}      {}", paint.apply(error, AnsiColor::Red));
            }
        }
    }
}

fn attempts(n: i64) -> String {
    match n {
        0 => String::new(),
        1 => "1 attempt".into(),
        n => format!("{n} attempts"),
    }
}

/// Nodes by stage: a node's stage is one past the deepest of its dependencies'. Unknown
/// dependencies and cycles (a definition the server validated has neither) count as none,
/// so a bad answer still draws.
fn stages<'a, 'n>(nodes: &'n [Node<'a>]) -> BTreeMap<usize, Vec<&'n Node<'a>>> {
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    let mut depth: Vec<Option<usize>> = vec![None; nodes.len()];
    fn visit(
        i: usize,
        nodes: &[Node],
        index: &HashMap<&str, usize>,
        depth: &mut [Option<usize>],
        path: &mut Vec<usize>,
    ) -> usize {
        if let Some(d) = depth[i] {
            return d;
        }
        if path.contains(&i) {
            return 0;
        }
        path.push(i);
        let d = nodes[i]
            .depends_on
            .iter()
            .filter_map(|dep| index.get(dep.as_str()))
            .map(|&j| visit(j, nodes, index, depth, path) + 1)
            .max()
            .unwrap_or(0);
        path.pop();
        depth[i] = Some(d);
        d
    }
    let mut stages: BTreeMap<usize, Vec<&Node>> = BTreeMap::new();
    for i in 0..nodes.len() {
        let d = visit(i, nodes, &index, &mut depth, &mut Vec::new());
        stages.entry(d).or_default().push(&nodes[i]);
    }
    stages
}

#[cfg(test)]
mod tests {
    use super::*;
    use cfm_manager::model::ActivitySpec;

    fn spec(id: &str, deps: &[&str]) -> ActivitySpec {
        ActivitySpec {
            id: id.into(),
            activity_type: format!("t.{id}"),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn activities_are_drawn_in_stages_after_what_they_depend_on() {
        let definition = OrchestrationDefinition {
            id: "edc".into(),
            version: 2,
            description: String::new(),
            schema: serde_json::json!({}),
            activities: [(
                "cfm.orchestration.vpa.deploy".to_string(),
                // Listed out of order: stages follow dependencies, not the list.
                vec![
                    spec("dns", &["k8s", "vault"]),
                    spec("k8s", &["vault"]),
                    spec("vault", &[]),
                    spec("audit", &[]),
                ],
            )]
            .into(),
        };
        let drawn = definition_lines(&definition);
        let stage_of = |id: &str| {
            let line = drawn
                .iter()
                .position(|l| l.contains(&format!("• {id} ")))
                .unwrap();
            drawn[..line]
                .iter()
                .filter(|l| l.contains(" stage "))
                .count()
        };
        assert_eq!(stage_of("vault"), 1);
        assert_eq!(stage_of("audit"), 1);
        assert_eq!(stage_of("k8s"), 2);
        assert_eq!(stage_of("dns"), 3);
        assert!(
            drawn
                .iter()
                .any(|l| l.contains("dns") && l.ends_with("← k8s, vault")),
            "{drawn:#?}"
        );
        assert!(
            !drawn.concat().contains('\u{1b}'),
            "no colour codes unless asked"
        );
    }

    #[test]
    fn a_cycle_or_unknown_dependency_still_draws() {
        let nodes = [spec("a", &["b"]), spec("b", &["a", "ghost"])];
        let definition = OrchestrationDefinition {
            id: "x".into(),
            version: 1,
            description: String::new(),
            schema: serde_json::json!({}),
            activities: [("t".to_string(), nodes.to_vec())].into(),
        };
        let drawn = definition_lines(&definition);
        assert!(drawn.iter().any(|l| l.contains("• a ")));
        assert!(drawn.iter().any(|l| l.contains("• b ")));
    }

    fn definition_lines(d: &OrchestrationDefinition) -> Vec<String> {
        definition(d, false).lines().map(str::to_string).collect()
    }
}
