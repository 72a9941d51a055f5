//! The `dns` capability: grant check in front of a zone store (zone files, or an
//! authoritative server through RFC 2136 dynamic updates).

pub mod rfc2136;
pub mod zonefile;

use crate::bindings::cfm::plugin::dns::{Host, ResourceRecord};
use crate::bindings::cfm::plugin::types::{CapabilityError, Change};
use crate::grants::normalize_zone;
use crate::runtime::Invocation;

use super::BackendError;

/// Record types plugins may manage; the rest (SOA, NS) belong to the zone's operator.
pub const RECORD_TYPES: &[&str] = &["A", "AAAA", "CNAME", "TXT", "SRV", "MX"];

/// A validated record, relative to its zone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub name: String,
    pub record_type: String,
    pub ttl: u32,
    pub data: String,
}

impl Record {
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
    async fn upsert(&self, zone: &str, record: Record) -> Result<Change, BackendError>;
    async fn remove(&self, zone: &str, name: &str, record_type: &str)
    -> Result<bool, BackendError>;
}

impl Host for Invocation {
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
            .guarded("dns", "upsert", &checked.target, checked.allowed, call)
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
            .guarded("dns", "remove", &checked.target, checked.allowed, call)
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

impl Invocation {
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
            self.calls.invalid("dns", operation, &raw, message)
        };
        let zone = valid_zone(zone).map_err(&invalid)?;
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

fn valid_zone(zone: &str) -> Result<String, String> {
    let zone = normalize_zone(zone);
    if is_relative_name(&zone) && zone.contains('.') {
        Ok(zone)
    } else {
        Err(format!("'{zone}' is not a valid zone name"))
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
