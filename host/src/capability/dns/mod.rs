//! The `dns` capability: grant check in front of a zone store (zone files, or an
//! authoritative server through RFC 2136 dynamic updates).

pub mod rfc2136;
pub mod zonefile;

use super::{BackendError, Capabilities};
use crate::bindings::cfm::plugin::dns::{Host, ResourceRecord};
use crate::bindings::cfm::plugin::types::{CapabilityError, Change};
use crate::grants::{Capability, normalize_zone};

/// Record types plugins may manage; the rest (SOA, NS) belong to the zone's operator.
pub const RECORD_TYPES: &[&str] = &["A", "AAAA", "CNAME", "TXT", "SRV", "MX"];

/// A validated record, relative to its zone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Relative to the zone, lowercase, without a trailing dot; `@` for the apex.
    pub name: String,
    /// One of [`RECORD_TYPES`], uppercase.
    pub record_type: String,
    /// Seconds, 1 to 604800.
    pub ttl: u32,
    /// The data as a zone file writes it (an address, a name, `preference exchange`, ...).
    pub data: String,
}

impl Record {
    /// Validates a record a plugin passed: a malformed one is `Invalid`, saying why.
    pub fn new(name: &str, record_type: &str, ttl: u32, data: &str) -> Result<Self, BackendError> {
        let invalid = |m: String| Err(BackendError::Invalid(m));
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if !(name == "@" || is_relative_name(&name)) {
            return invalid(format!("'{name}' is not a valid record name"));
        }
        let record_type = record_type.to_ascii_uppercase();
        if !RECORD_TYPES.contains(&record_type.as_str()) {
            return invalid(format!(
                "record type '{record_type}' is not supported; use one of {}",
                RECORD_TYPES.join(", ")
            ));
        }
        if ttl == 0 || ttl > 604_800 {
            return invalid(format!("ttl {ttl} is outside 1..=604800"));
        }
        // Record data ends up in a zone file line: no line breaks, no comment starts.
        if data.is_empty() || data.len() > 1024 || data.contains(['\n', '\r', ';', '"', '\\']) {
            return invalid(
                "record data must be 1 to 1024 characters without \\n ; \" or \\".into(),
            );
        }
        Ok(Self {
            name,
            record_type,
            ttl,
            data: data.to_string(),
        })
    }
}

/// A store of DNS zones.
#[async_trait::async_trait]
pub trait DnsBackend: Send + Sync {
    /// Makes `record` the record set of its name and type in `zone`, saying what changed.
    async fn upsert(&self, zone: &str, record: Record) -> Result<Change, BackendError>;
    /// Removes the record set of `name` and `record_type` in `zone`; false when there was none.
    async fn remove(&self, zone: &str, name: &str, record_type: &str)
    -> Result<bool, BackendError>;
    /// What [`DnsBackend::upsert`] would change, without changing it (a verify's dry run).
    async fn planned_upsert(&self, zone: &str, record: Record) -> Result<Change, BackendError>;
    /// Whether [`DnsBackend::remove`] would find a record set to remove, without removing it.
    async fn planned_remove(
        &self,
        zone: &str,
        name: &str,
        record_type: &str,
    ) -> Result<bool, BackendError>;
}

impl Host for Capabilities {
    async fn upsert(
        &mut self,
        zone: String,
        record: ResourceRecord,
    ) -> Result<Change, CapabilityError> {
        let checked = self.check_record(
            "upsert",
            &zone,
            &record.name,
            &record.record_type,
            record.ttl,
            &record.data,
        )?;
        let backend = self.calls.backends.dns.clone();
        let call = backend.upsert(&checked.zone, checked.record);
        self.calls
            .guarded(
                Capability::Dns,
                "upsert",
                &checked.target,
                checked.allowed,
                call,
            )
            .await
    }

    async fn remove(
        &mut self,
        zone: String,
        name: String,
        record_type: String,
    ) -> Result<bool, CapabilityError> {
        let checked = self.check_record("remove", &zone, &name, &record_type, 1, "-")?;
        let backend = self.calls.backends.dns.clone();
        let record = &checked.record;
        let call = backend.remove(&checked.zone, &record.name, &record.record_type);
        self.calls
            .guarded(
                Capability::Dns,
                "remove",
                &checked.target,
                checked.allowed,
                call,
            )
            .await
    }
}

/// A record validated and checked against the grants, ready for the backend.
struct Checked {
    zone: String,
    record: Record,
    target: String,
    allowed: bool,
}

impl Capabilities {
    /// The record validated (a malformed one refused and audited) and checked against
    /// the grants: its zone, its name within the zone and its type.
    fn check_record(
        &self,
        operation: &'static str,
        zone: &str,
        name: &str,
        record_type: &str,
        ttl: u32,
        data: &str,
    ) -> Result<Checked, CapabilityError> {
        let invalid = |message: String| {
            let raw = format!("{name}.{zone} {record_type}");
            self.calls
                .invalid(Capability::Dns, operation, &raw, message)
        };
        let zone = valid_zone(zone).map_err(|e| invalid(e.to_string()))?;
        let record =
            Record::new(name, record_type, ttl, data).map_err(|e| invalid(e.to_string()))?;
        Ok(Checked {
            allowed: self
                .calls
                .grants
                .allows_dns(&zone, &record.name, &record.record_type),
            target: format!("{}.{zone} {}", record.name, record.record_type),
            zone,
            record,
        })
    }
}

/// A zone name a plugin passed that is no zone.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a valid zone name")]
pub struct InvalidZone(String);

fn valid_zone(zone: &str) -> Result<String, InvalidZone> {
    let zone = normalize_zone(zone);
    if is_relative_name(&zone) && zone.contains('.') {
        Ok(zone)
    } else {
        Err(InvalidZone(zone))
    }
}

fn is_relative_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').enumerate().all(|(i, label)| {
            !label.is_empty()
                && label.len() <= 63
                && (label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    || (i == 0 && label == "*"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::fixture::Fixture;
    use crate::grants::{DnsGrant, Grants};

    const ZONE: &str = "participants.example";

    fn granted() -> Fixture {
        Fixture::new(Grants {
            dns: Some(DnsGrant {
                zones: vec![ZONE.into()],
                names: vec!["{participantContextId}".into()],
                record_types: vec!["CNAME".into()],
            }),
            ..Default::default()
        })
    }

    fn cname(name: &str) -> ResourceRecord {
        ResourceRecord {
            name: name.into(),
            record_type: "CNAME".into(),
            ttl: 300,
            data: "cell-a.cells.example.".into(),
        }
    }

    #[tokio::test]
    async fn a_granted_name_reaches_the_zone() {
        let mut fixture = granted();
        let dns = &mut fixture.capabilities;
        assert_eq!(
            dns.upsert(ZONE.into(), cname("p1")).await.unwrap(),
            Change::Created
        );
        assert_eq!(
            dns.upsert(format!("{ZONE}."), cname("P1")).await.unwrap(),
            Change::Unchanged
        );
        let zone =
            std::fs::read_to_string(fixture.stored("dns/participants.example.zone")).unwrap();
        assert!(
            zone.contains("p1 300 IN CNAME cell-a.cells.example."),
            "{zone}"
        );
        let record = fixture.last_audit();
        assert_eq!(record["capability"], "dns");
        assert_eq!(record["operation"], "upsert");
        assert_eq!(record["target"], "p1.participants.example CNAME");
        assert_eq!(record["effect"], "unchanged");
        assert!(
            fixture
                .capabilities
                .remove(ZONE.into(), "p1".into(), "cname".into())
                .await
                .unwrap()
        );
        assert_eq!(fixture.last_audit()["effect"], "deleted");
    }

    #[tokio::test]
    async fn another_participants_name_is_denied_and_audited() {
        let mut fixture = granted();
        let refused = fixture
            .capabilities
            .upsert(ZONE.into(), cname("p2"))
            .await
            .unwrap_err();
        fixture.assert_denied(refused, "dns", "upsert", "p2.participants.example CNAME");
        assert!(!fixture.stored("dns/participants.example.zone").exists());
    }

    #[tokio::test]
    async fn a_malformed_zone_is_invalid_and_audited_as_a_denial() {
        let mut fixture = granted();
        let refused = fixture
            .capabilities
            .upsert("../etc".into(), cname("p1"))
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, CapabilityError::Invalid(m) if m == "'../etc' is not a valid zone name"),
            "{refused:?}"
        );
        let record = fixture.last_audit();
        assert_eq!(record["target"], "p1.../etc CNAME");
        assert_eq!(record["decision"], "denied");
    }

    #[test]
    fn records_are_validated() {
        assert!(Record::new("abc", "cname", 300, "x.example.").is_ok());
        assert!(Record::new("*.abc", "A", 300, "10.0.0.1").is_ok());
        assert!(Record::new("a..b", "A", 300, "10.0.0.1").is_err());
        assert!(Record::new("a", "SOA", 300, "x").is_err());
        assert!(Record::new("a", "TXT", 300, "x\n@ IN NS evil.").is_err());
        assert!(Record::new("a", "A", 0, "10.0.0.1").is_err());
        assert!(valid_zone("participants.example.").is_ok());
        assert!(valid_zone("../etc").is_err());
    }
}
