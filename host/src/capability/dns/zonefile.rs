//! DNS zones kept as RFC 1035 zone files under the data directory, for the embedded default:
//! `<root>/<zone>.zone`, loadable by any authoritative server. The records themselves are
//! kept in `<zone>.json` so an update never has to parse a zone file; the zone file is
//! re-rendered, with a new SOA serial, on every change. Agent-host processes sharing the
//! folder take turns through an advisory lock on `<zone>.lock`. Production deployments
//! send RFC 2136 dynamic updates instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

use crate::bindings::cfm::plugin::types::Change;
use crate::capability::BackendError;
use crate::capability::files::{self, blocking};

use super::{DnsBackend, Record};

/// DNS zones kept as files in a folder.
pub struct ZoneFiles {
    root: PathBuf,
    write: Mutex<()>,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Zone {
    serial: u32,
    /// Keyed by `name TYPE`: one record set per name and type.
    records: BTreeMap<String, Record>,
}

impl Zone {
    /// What making `record` its name and type's record set changes.
    fn change_of(&self, record: &Record) -> Change {
        match self.records.get(&record.key()) {
            Some(existing) if existing == record => Change::Unchanged,
            Some(_) => Change::Updated,
            None => Change::Created,
        }
    }
}

impl Record {
    /// The zone state's key of the record's set: `name TYPE`.
    fn key(&self) -> String {
        format!("{} {}", self.name, self.record_type)
    }
}

impl ZoneFiles {
    /// Zones kept under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            write: Mutex::new(()),
        }
    }

    /// The zone as stored, read without a lock (writes replace the file atomically) and
    /// without the crash repair [`ZoneFiles::edit`] does: a verify's dry run writes nothing.
    async fn read(&self, zone: &str) -> Result<Zone, BackendError> {
        let state_file = self.root.join(format!("{zone}.json"));
        blocking(move || match files::read_optional(&state_file)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
            None => Ok(Zone::default()),
        })
        .await
    }

    /// Loads the zone, lets `change` edit it, and saves and re-renders it if it changed.
    async fn edit<T: Send + 'static>(
        &self,
        zone: &str,
        change: impl FnOnce(&mut Zone) -> (T, bool) + Send + 'static,
    ) -> Result<T, BackendError> {
        let _guard = self.write.lock().await;
        let state_file = self.root.join(format!("{zone}.json"));
        let zone_file = self.root.join(format!("{zone}.zone"));
        let lock_file = self.root.join(format!("{zone}.lock"));
        let zone = zone.to_string();
        blocking(move || {
            files::locked(&lock_file, || {
                let mut state: Zone = match files::read_optional(&state_file)? {
                    Some(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other)?,
                    None => Zone::default(),
                };
                let (answer, changed) = change(&mut state);
                if changed {
                    state.serial = state.serial.wrapping_add(1).max(1);
                    files::write_atomic(&state_file, &serde_json::to_vec_pretty(&state)?)?;
                    files::write_atomic(&zone_file, render(&zone, &state).as_bytes())?;
                } else if !zone_file.exists() && state.serial > 0 {
                    // A crash between the two writes above: finish the rendering.
                    files::write_atomic(&zone_file, render(&zone, &state).as_bytes())?;
                }
                Ok(answer)
            })
        })
        .await
    }
}

#[async_trait::async_trait]
impl DnsBackend for ZoneFiles {
    async fn upsert(&self, zone: &str, record: Record) -> Result<Change, BackendError> {
        self.edit(zone, move |state| {
            let change = state.change_of(&record);
            if change != Change::Unchanged {
                state.records.insert(record.key(), record);
            }
            (change, change != Change::Unchanged)
        })
        .await
    }

    async fn planned_upsert(&self, zone: &str, record: Record) -> Result<Change, BackendError> {
        Ok(self.read(zone).await?.change_of(&record))
    }

    async fn planned_remove(
        &self,
        zone: &str,
        name: &str,
        record_type: &str,
    ) -> Result<bool, BackendError> {
        let key = format!("{name} {record_type}");
        Ok(self.read(zone).await?.records.contains_key(&key))
    }

    async fn remove(
        &self,
        zone: &str,
        name: &str,
        record_type: &str,
    ) -> Result<bool, BackendError> {
        let key = format!("{name} {record_type}");
        self.edit(zone, move |state| {
            let removed = state.records.remove(&key).is_some();
            (removed, removed)
        })
        .await
    }
}

fn render(zone: &str, state: &Zone) -> String {
    let mut out = format!(
        "$ORIGIN {zone}.\n$TTL 300\n@ IN SOA ns1.{zone}. hostmaster.{zone}. ( {} 3600 600 604800 300 )\n@ IN NS ns1.{zone}.\n",
        state.serial
    );
    for record in state.records.values() {
        let data = if record.record_type == "TXT" {
            format!("\"{}\"", record.data)
        } else {
            record.data.clone()
        };
        out.push_str(&format!(
            "{} {} IN {} {}\n",
            record.name, record.ttl, record.record_type, data
        ));
    }
    out
}

/// The rendered zone file of `zone` under `root`, for tests and operators.
pub fn zone_file(root: &Path, zone: &str) -> PathBuf {
    root.join(format!("{zone}.zone"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two backends on one folder stand for two agent-host processes: each has its own
    /// in-process mutex, so only the file lock keeps their updates from overwriting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn processes_sharing_a_zone_lose_no_update() {
        let dir = tempfile::tempdir().unwrap();
        let a = std::sync::Arc::new(ZoneFiles::new(dir.path().to_path_buf()));
        let b = std::sync::Arc::new(ZoneFiles::new(dir.path().to_path_buf()));
        let mut writers = tokio::task::JoinSet::new();
        for i in 0..300 {
            let zones = if i % 2 == 0 { a.clone() } else { b.clone() };
            writers.spawn(async move {
                let record = Record::new(&format!("p{i}"), "CNAME", 300, "cell.example.").unwrap();
                zones.upsert("z.example", record).await.unwrap()
            });
        }
        while let Some(change) = writers.join_next().await {
            assert_eq!(change.unwrap(), Change::Created);
        }
        let text = std::fs::read_to_string(zone_file(dir.path(), "z.example")).unwrap();
        for i in 0..300 {
            assert!(
                text.contains(&format!("p{i} 300 IN CNAME")),
                "p{i} lost:\n{text}"
            );
        }
        assert!(text.contains("( 300 3600"), "{text}");
    }

    #[tokio::test]
    async fn upsert_renders_a_zone_file_and_bumps_the_serial() {
        let dir = tempfile::tempdir().unwrap();
        let zones = ZoneFiles::new(dir.path().to_path_buf());
        let record = Record::new("p1", "CNAME", 300, "cell-a.example.").unwrap();
        assert_eq!(
            zones.upsert("z.example", record.clone()).await.unwrap(),
            Change::Created
        );
        assert_eq!(
            zones.upsert("z.example", record).await.unwrap(),
            Change::Unchanged
        );
        let text = std::fs::read_to_string(zone_file(dir.path(), "z.example")).unwrap();
        assert!(text.contains("p1 300 IN CNAME cell-a.example."), "{text}");
        assert!(text.contains("( 1 3600"), "{text}");
        assert!(zones.remove("z.example", "p1", "CNAME").await.unwrap());
        let text = std::fs::read_to_string(zone_file(dir.path(), "z.example")).unwrap();
        assert!(!text.contains("p1 300"), "{text}");
        assert!(text.contains("( 2 3600"), "{text}");
    }
}
