//! What the client prints: tables for people, JSON or YAML for scripts.

use std::io::IsTerminal;

use comfy_table::{Cell, Table, presets};
use serde_json::Value;

use super::commands::Paging;
use super::{ClientError, Page, Result};

/// How a command's answer is printed on standard output.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Columns for people (orchestrations and definitions drawn as graphs).
    Table,
    /// The API's JSON, unchanged, for scripts and `jq`.
    Json,
    /// The API's answer as YAML.
    Yaml,
    /// Only ids, one per line: `TENANT=$(cfm tenants create --name A -o id)`.
    Id,
}

/// A table column: its header and how a resource's JSON fills it.
pub(super) type Column = (&'static str, fn(&Value) -> String);

/// Prints one resource: a one-row table, or its whole JSON or YAML.
pub(super) fn one(format: Format, columns: &[Column], value: &Value) -> Result<()> {
    match format {
        Format::Table => {
            print_table(columns, std::slice::from_ref(value));
            Ok(())
        }
        Format::Id => print_ids(std::slice::from_ref(value)),
        _ => document(format, value),
    }
}

/// Prints a page of resources, and says on standard error when more match than it holds.
/// `paging` is None for a route that answers everything at once.
pub(super) fn many(
    format: Format,
    columns: &[Column],
    page: &Page,
    paging: Option<&Paging>,
) -> Result<()> {
    match format {
        Format::Table => {
            if page.items.is_empty() {
                eprintln!("nothing found");
                return Ok(());
            }
            print_table(columns, &page.items);
            let Some(paging) = paging else {
                return Ok(());
            };
            let shown = paging.offset + page.items.len() as u64;
            match page.total {
                Some(total) if total > shown => {
                    eprintln!(
                        "showing {} of {total}: --offset {shown} for more",
                        page.items.len()
                    )
                }
                // No total: more than 1,000 match, or a route that does not count.
                None if page.items.len() as u64 >= paging.limit => {
                    eprintln!("showing {}: --offset {shown} for more", page.items.len())
                }
                _ => {}
            }
            Ok(())
        }
        Format::Id => print_ids(&page.items),
        _ => document(format, &Value::Array(page.items.clone())),
    }
}

/// Prints a whole answer as JSON or YAML (in table mode, as JSON).
pub(super) fn document(format: Format, value: &Value) -> Result<()> {
    if format == Format::Id {
        return print_ids(std::slice::from_ref(value));
    }
    let text = match format {
        Format::Yaml => serde_yaml_ng::to_string(value)
            .map_err(|e| ClientError::Usage(format!("cannot write YAML: {e}")))?,
        _ => serde_json::to_string_pretty(value)
            .map_err(|e| ClientError::Usage(format!("cannot write JSON: {e}")))?,
    };
    println!("{}", text.trim_end());
    Ok(())
}

/// Each resource's id (a history entry's orchestration id), one per line.
fn print_ids(values: &[Value]) -> Result<()> {
    for value in values {
        match ["id", "orchestrationId", "type"]
            .iter()
            .map(|f| text(value, f))
            .find(|id| !id.is_empty())
        {
            Some(id) => println!("{id}"),
            None => {
                return Err(ClientError::Usage(
                    "this answer has no ids: use -o json".into(),
                ));
            }
        }
    }
    Ok(())
}

fn print_table(columns: &[Column], rows: &[Value]) {
    let mut table = Table::new();
    // kubectl's look: no borders, upper-case headers, columns as wide as their widest
    // cell, whatever the terminal's width (a pipe into `grep` keeps whole lines).
    table.load_style(presets::NOTHING);
    table.set_header(columns.iter().map(|(name, _)| Cell::new(name)));
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    for row in rows {
        table.add_row(columns.iter().map(|(_, cell)| Cell::new(cell(row))));
    }
    for line in table.lines() {
        println!("{}", line.trim_end());
    }
}

/// Whether colour codes may be written to standard output: only on a terminal, and not
/// when NO_COLOR is set.
pub(super) fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A string field of a JSON value by path (`a.b`), or "" when absent.
pub(super) fn text(value: &Value, path: &str) -> String {
    let found = path.split('.').try_fold(value, |v, key| v.get(key));
    match found {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The orchestration states' names for upstream's numbers.
pub(super) fn orchestration_state(value: &Value) -> String {
    match value.get("state").and_then(Value::as_i64) {
        Some(0) => "initialized".into(),
        Some(1) => "running".into(),
        Some(2) => "completed".into(),
        Some(3) => "errored".into(),
        other => other.map(|n| n.to_string()).unwrap_or_default(),
    }
}

/// Parses repeated `key=value` flags into a JSON object. A value that is JSON (a number,
/// `true`, an object) is kept as such; anything else is a string.
pub(super) fn key_values(pairs: &[String]) -> Result<serde_json::Map<String, Value>> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| ClientError::Usage(format!("{pair:?} is not key=value")))?;
            if key.is_empty() {
                return Err(ClientError::Usage(format!("{pair:?} has an empty key")));
            }
            let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
            Ok((key.to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_values_keep_json_and_refuse_what_is_not_a_pair() {
        let parsed =
            key_values(&["name=Consumer".into(), "max=3".into(), "on=true".into()]).unwrap();
        assert_eq!(
            Value::Object(parsed),
            json!({"name": "Consumer", "max": 3, "on": true})
        );
        assert!(key_values(&["novalue".into()]).is_err());
        assert!(key_values(&["=x".into()]).is_err());
    }

    #[test]
    fn text_follows_paths_and_leaves_absent_fields_empty() {
        let value = json!({"properties": {"name": "A", "n": 2}});
        assert_eq!(text(&value, "properties.name"), "A");
        assert_eq!(text(&value, "properties.n"), "2");
        assert_eq!(text(&value, "properties.missing"), "");
    }
}
