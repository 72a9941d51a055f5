//! DNS zones on an authoritative server (BIND, Knot, PowerDNS, ...), changed by RFC 2136
//! dynamic updates signed with TSIG (RFC 8945). The server keeps the records; cfm keeps
//! nothing, so a participant's names resolve whether or not cfm runs.
//!
//! Every change is conditional: an upsert reads the record set, then sends an update whose
//! prerequisite is exactly what it read (absent, or these records). If another writer got
//! there first the server refuses it and the upsert reads again, so concurrent agents never
//! lose an update and a redelivered activity reports `unchanged`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hickory_client::client::{Client, ClientHandle};
use hickory_client::proto::ProtoError;
use hickory_client::proto::dnssec::DnsSecError;
use hickory_client::proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_client::proto::dnssec::tsig::TSigner;
use hickory_client::proto::op::ResponseCode;
use hickory_client::proto::rr::rdata::{A, AAAA, CNAME, MX, SRV, TXT};
use hickory_client::proto::rr::{
    DNSClass, Name, RData, Record as DnsRecord, RecordSet, RecordType,
};
use hickory_client::proto::runtime::TokioRuntimeProvider;
use hickory_client::proto::tcp::TcpClientStream;
use hickory_client::proto::xfer::DnsResponse;

use crate::bindings::cfm::plugin::types::Change;
use crate::capability::BackendError;

use super::{DnsBackend, Record};

/// How long one exchange with the server may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Conditional updates tried before giving up on a record set others keep changing.
const ATTEMPTS: usize = 5;
/// Allowed clock difference between cfm and the server for TSIG (seconds; RFC 8945's default).
const FUDGE: u16 = 300;

/// A TSIG key as BIND's `tsig-keygen` writes it:
/// `key "name" { algorithm hmac-sha256; secret "<base64>"; };`.
#[derive(Clone)]
pub struct TsigKey {
    /// The key's name, as the server knows it.
    pub name: String,
    algorithm: TsigAlgorithm,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("TsigKey").field("name", &self.name).finish()
    }
}

/// Why a TSIG key cannot be used; never shows the secret.
#[derive(Debug, thiserror::Error)]
pub enum TsigKeyError {
    /// The key file cannot be read.
    #[error("reading TSIG key {}: {source}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The key file holds no usable key.
    #[error("TSIG key {}: {source}", path.display())]
    File {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: KeyFormatError,
    },
    /// The key's name is not a domain name.
    #[error("TSIG key name '{name}': {source}")]
    Name {
        /// The name the key file gives.
        name: String,
        /// Why it is not a domain name.
        #[source]
        source: ProtoError,
    },
    /// No signer can be made with the key.
    #[error("TSIG key '{name}': {source}")]
    Signer {
        /// The key's name.
        name: String,
        /// Why not.
        #[source]
        source: DnsSecError,
    },
}

/// What is wrong with the text of a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFormatError {
    /// A keyword of the format is missing.
    #[error("no `{0}` found; expected key \"NAME\" {{ algorithm ...; secret \"...\"; }};")]
    Missing(&'static str),
    /// An algorithm cfm does not sign with.
    #[error("algorithm '{0}' is not supported; use hmac-sha256, hmac-sha384 or hmac-sha512")]
    Algorithm(String),
    /// Without the decoder's error: it names a byte of the secret.
    #[error("the secret is not base64")]
    NotBase64,
    /// The secret decodes to nothing.
    #[error("the secret is empty")]
    Empty,
}

impl TsigKey {
    /// Reads a key file; the error names the file, never the secret.
    pub fn load(path: &Path) -> Result<Self, TsigKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TsigKeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|source| TsigKeyError::File {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses the text of a key file.
    pub fn parse(text: &str) -> Result<Self, KeyFormatError> {
        let tokens: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || matches!(c, '{' | '}' | ';'))
            .filter(|t| !t.is_empty())
            .collect();
        let after = |word: &'static str| {
            tokens
                .iter()
                .position(|t| *t == word)
                .and_then(|i| tokens.get(i + 1))
                .map(|t| t.trim_matches('"'))
                .ok_or(KeyFormatError::Missing(word))
        };
        let name = after("key")?.to_string();
        let algorithm = match after("algorithm")?.to_ascii_lowercase().as_str() {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => return Err(KeyFormatError::Algorithm(other.to_string())),
        };
        let secret = base64::engine::general_purpose::STANDARD
            .decode(after("secret")?)
            .map_err(|_| KeyFormatError::NotBase64)?;
        if secret.is_empty() {
            return Err(KeyFormatError::Empty);
        }
        Ok(Self {
            name,
            algorithm,
            secret,
        })
    }
}

/// Dynamic updates to one server.
pub struct DynamicUpdates {
    server: SocketAddr,
    signer: Option<TSigner>,
}

impl DynamicUpdates {
    /// Updates go to `server` over TCP, signed with `key` when given (servers normally
    /// refuse unsigned updates).
    pub fn new(server: SocketAddr, key: Option<TsigKey>) -> Result<Self, TsigKeyError> {
        let signer = key
            .map(|key| {
                let name = Name::from_ascii(&key.name).map_err(|source| TsigKeyError::Name {
                    name: key.name.clone(),
                    source,
                })?;
                TSigner::new(key.secret, key.algorithm, name, FUDGE).map_err(|source| {
                    TsigKeyError::Signer {
                        name: key.name,
                        source,
                    }
                })
            })
            .transpose()?;
        Ok(Self { server, signer })
    }

    async fn client(&self) -> Result<Client, BackendError> {
        let (stream, handle) = TcpClientStream::new(
            self.server,
            None,
            Some(TIMEOUT),
            TokioRuntimeProvider::new(),
        );
        let signer = self
            .signer
            .clone()
            .map(|s| Arc::new(s) as Arc<dyn hickory_client::proto::op::MessageFinalizer>);
        let (client, background) = Client::with_timeout(stream, handle, TIMEOUT, signer)
            .await
            .map_err(|e| self.unavailable(e))?;
        tokio::spawn(background);
        Ok(client)
    }

    /// The records of one set, as the server has them now.
    async fn current(
        &self,
        client: &mut Client,
        name: &Name,
        record_type: RecordType,
    ) -> Result<Vec<DnsRecord>, BackendError> {
        let response = client
            .query(name.clone(), DNSClass::IN, record_type)
            .await
            .map_err(|e| self.unavailable(e))?;
        match response.response_code() {
            ResponseCode::NoError | ResponseCode::NXDomain => Ok(response
                .answers()
                .iter()
                .filter(|r| r.record_type() == record_type && r.name() == name)
                .cloned()
                .collect()),
            code => Err(BackendError::Unavailable(format!(
                "DNS server {} answered {code} to a query for {name} {record_type}",
                self.server
            ))),
        }
    }

    /// `true` when the update was applied, `false` when its prerequisite failed because
    /// another writer changed the set first; an error for anything else.
    fn applied(&self, zone: &str, response: DnsResponse) -> Result<bool, BackendError> {
        match response.response_code() {
            ResponseCode::NoError => Ok(true),
            ResponseCode::YXRRSet | ResponseCode::NXRRSet | ResponseCode::YXDomain => Ok(false),
            ResponseCode::NotZone | ResponseCode::NotAuth => {
                Err(BackendError::Unavailable(format!(
                    "DNS server {} is not authoritative for zone {zone}, or refused the TSIG key",
                    self.server
                )))
            }
            ResponseCode::Refused => Err(BackendError::Unavailable(format!(
                "DNS server {} refused the update to zone {zone}: check its update policy and the TSIG key",
                self.server
            ))),
            code => Err(BackendError::Unavailable(format!(
                "DNS server {} answered {code} to an update of zone {zone}",
                self.server
            ))),
        }
    }

    fn unavailable(&self, error: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable(format!("DNS server {}: {error}", self.server))
    }
}

#[async_trait::async_trait]
impl DnsBackend for DynamicUpdates {
    async fn upsert(&self, zone: &str, record: Record) -> Result<Change, BackendError> {
        let (origin, name, record_type) = record_set(zone, &record.name, &record.record_type)?;
        let desired = DnsRecord::from_rdata(name.clone(), record.ttl, rdata(&origin, &record)?);
        let mut client = self.client().await?;
        for _ in 0..ATTEMPTS {
            let current = self.current(&mut client, &name, record_type).await?;
            if change_of(&current, &desired) == Change::Unchanged {
                return Ok(Change::Unchanged);
            }
            let (sent, change) = if current.is_empty() {
                let update = client.create(desired.clone(), origin.clone());
                (update.await, Change::Created)
            } else {
                let mut existing = RecordSet::new(name.clone(), record_type, 0);
                for r in current {
                    existing.insert(r, 0);
                }
                let update = client.compare_and_swap(existing, desired.clone(), origin.clone());
                (update.await, Change::Updated)
            };
            if self.applied(zone, sent.map_err(|e| self.unavailable(e))?)? {
                return Ok(change);
            }
        }
        Err(BackendError::Unavailable(format!(
            "{name} {record_type} kept changing under concurrent updates"
        )))
    }

    async fn planned_upsert(&self, zone: &str, record: Record) -> Result<Change, BackendError> {
        let (origin, name, record_type) = record_set(zone, &record.name, &record.record_type)?;
        let desired = DnsRecord::from_rdata(name.clone(), record.ttl, rdata(&origin, &record)?);
        let mut client = self.client().await?;
        let current = self.current(&mut client, &name, record_type).await?;
        Ok(change_of(&current, &desired))
    }

    async fn planned_remove(
        &self,
        zone: &str,
        name: &str,
        record_type_name: &str,
    ) -> Result<bool, BackendError> {
        let (_, name, record_type) = record_set(zone, name, record_type_name)?;
        let mut client = self.client().await?;
        Ok(!self
            .current(&mut client, &name, record_type)
            .await?
            .is_empty())
    }

    async fn remove(
        &self,
        zone: &str,
        name: &str,
        record_type_name: &str,
    ) -> Result<bool, BackendError> {
        let (origin, name, record_type) = record_set(zone, name, record_type_name)?;
        let mut client = self.client().await?;
        if self
            .current(&mut client, &name, record_type)
            .await?
            .is_empty()
        {
            return Ok(false);
        }
        let update = client.delete_rrset(DnsRecord::update0(name, 0, record_type), origin);
        let sent = update.await.map_err(|e| self.unavailable(e))?;
        // Deleting a set someone else already deleted changes nothing: still success.
        self.applied(zone, sent).map(|_| true)
    }
}

/// The zone, the owner name and the type of the record set `name` `record_type` in `zone`.
fn record_set(
    zone: &str,
    name: &str,
    record_type_name: &str,
) -> Result<(Name, Name, RecordType), BackendError> {
    let origin = zone_name(zone)?;
    let name = owner_name(&origin, name)?;
    Ok((origin, name, record_type(record_type_name)?))
}

/// What making `desired` the whole record set that is now `current` changes.
fn change_of(current: &[DnsRecord], desired: &DnsRecord) -> Change {
    match current {
        [] => Change::Created,
        [only] if only.data() == desired.data() && only.ttl() == desired.ttl() => Change::Unchanged,
        _ => Change::Updated,
    }
}

fn zone_name(zone: &str) -> Result<Name, BackendError> {
    let mut name =
        Name::from_ascii(zone).map_err(|e| BackendError::Invalid(format!("zone '{zone}': {e}")))?;
    name.set_fqdn(true);
    Ok(name)
}

/// `@` is the zone itself; any other name is relative to it.
fn owner_name(origin: &Name, name: &str) -> Result<Name, BackendError> {
    if name == "@" {
        return Ok(origin.clone());
    }
    Name::from_ascii(name)
        .and_then(|n| n.append_domain(origin))
        .map_err(|e| BackendError::Invalid(format!("record name '{name}': {e}")))
}

/// A name in record data: absolute with a trailing dot, else relative to the zone, as in
/// a zone file.
fn target_name(origin: &Name, data: &str) -> Result<Name, BackendError> {
    let invalid = |e: hickory_client::proto::ProtoError| {
        BackendError::Invalid(format!("'{data}' is not a domain name: {e}"))
    };
    if data.ends_with('.') {
        Name::from_ascii(data).map_err(invalid)
    } else {
        Name::from_ascii(data)
            .and_then(|n| n.append_domain(origin))
            .map_err(invalid)
    }
}

fn record_type(name: &str) -> Result<RecordType, BackendError> {
    name.parse()
        .map_err(|_| BackendError::Invalid(format!("record type '{name}'")))
}

fn rdata(origin: &Name, record: &Record) -> Result<RData, BackendError> {
    let data = record.data.trim();
    let invalid = |what: &str| {
        BackendError::Invalid(format!(
            "'{data}' is not {what} for a {} record",
            record.record_type
        ))
    };
    let fields: Vec<&str> = data.split_whitespace().collect();
    let number = |s: &str| s.parse::<u16>().map_err(|_| invalid("valid data"));
    Ok(match record.record_type.as_str() {
        "A" => RData::A(A(data
            .parse::<Ipv4Addr>()
            .map_err(|_| invalid("an IPv4 address"))?)),
        "AAAA" => RData::AAAA(AAAA(
            data.parse::<Ipv6Addr>()
                .map_err(|_| invalid("an IPv6 address"))?,
        )),
        "CNAME" => RData::CNAME(CNAME(target_name(origin, data)?)),
        "TXT" => RData::TXT(TXT::new(vec![data.to_string()])),
        "MX" => match fields.as_slice() {
            [preference, exchange] => {
                RData::MX(MX::new(number(preference)?, target_name(origin, exchange)?))
            }
            _ => return Err(invalid("'preference exchange'")),
        },
        "SRV" => match fields.as_slice() {
            [priority, weight, port, target] => RData::SRV(SRV::new(
                number(priority)?,
                number(weight)?,
                number(port)?,
                target_name(origin, target)?,
            )),
            _ => return Err(invalid("'priority weight port target'")),
        },
        other => return Err(BackendError::Invalid(format!("record type '{other}'"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_key_files_parse_and_never_print_the_secret() {
        let key = TsigKey::parse(
            "key \"cfm-agent\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LWJ5dGVz\";\n};\n",
        )
        .unwrap();
        assert_eq!(key.name, "cfm-agent");
        assert_eq!(key.secret, b"secret-bytes");
        assert!(!format!("{key:?}").contains("c2Vj"));
        let err =
            TsigKey::parse("key \"k\" { algorithm hmac-md5; secret \"eA==\"; };").unwrap_err();
        assert!(err.to_string().contains("hmac-md5"), "{err}");
        let err =
            TsigKey::parse("key \"k\" { algorithm hmac-sha256; secret \"%%\"; };").unwrap_err();
        assert!(matches!(err, KeyFormatError::NotBase64), "{err}");
        assert_eq!(
            TsigKey::parse("nothing here").unwrap_err().to_string(),
            "no `key` found; expected key \"NAME\" { algorithm ...; secret \"...\"; };"
        );
    }

    #[test]
    fn a_key_file_error_names_the_file_and_keeps_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.key");
        let err = TsigKey::load(&missing).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("reading TSIG key {}: ", missing.display())),
            "{err}"
        );
        let io = std::error::Error::source(&err).and_then(|e| e.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        let empty = dir.path().join("empty.key");
        std::fs::write(&empty, "key \"k\" { algorithm hmac-sha256; secret \"\"; };").unwrap();
        assert_eq!(
            TsigKey::load(&empty).unwrap_err().to_string(),
            format!("TSIG key {}: the secret is empty", empty.display())
        );
    }

    #[test]
    fn record_data_becomes_typed_rdata() {
        let origin = zone_name("participants.example").unwrap();
        let record = |t: &str, data: &str| Record::new("p1", t, 300, data).unwrap();
        let cname = rdata(&origin, &record("CNAME", "cell-a")).unwrap();
        assert_eq!(cname.to_string(), "cell-a.participants.example.");
        let absolute = rdata(&origin, &record("CNAME", "cell-a.cells.example.")).unwrap();
        assert_eq!(absolute.to_string(), "cell-a.cells.example.");
        assert!(rdata(&origin, &record("A", "10.0.0.1")).is_ok());
        assert!(rdata(&origin, &record("A", "not-an-ip")).is_err());
        assert!(rdata(&origin, &record("SRV", "10 5 443 cp")).is_ok());
        assert!(rdata(&origin, &record("SRV", "10 5 cp")).is_err());
        assert_eq!(owner_name(&origin, "@").unwrap(), origin, "@ is the apex");
    }
}
