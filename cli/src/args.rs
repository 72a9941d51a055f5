//! The command line: every subcommand's flags, their environment variables and defaults.
//! Defaults that other parts of cfm also use come from where those parts define them.

use std::net::SocketAddr;
use std::path::PathBuf;

use cfm_manager::EngineSettings;
use clap::{Parser, Subcommand};

use crate::{client, plugin};

#[derive(Parser)]
#[command(
    name = "cfm",
    version,
    about = "Connector Fabric Manager: the management plane for hosted dataspace participants"
)]
pub(crate) struct Cli {
    /// How log lines are written to standard error: `text` for people (coloured only on a
    /// terminal), `json` for log collectors (one object per line, with the orchestration,
    /// activity and participant of the line's spans as fields).
    #[arg(long, global = true, env = "CFM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Export traces of `serve`, `manager` and `agent` to this OTLP collector (its base
    /// URL, e.g. `http://otel-collector:4318`; spans go to `/v1/traces` as OTLP/HTTP
    /// JSON). A REST call that starts an orchestration is the root of one trace (or joins
    /// the caller's `traceparent`), which the agent hosts' activities and their plugins'
    /// outbound HTTP (`traceparent` header) continue. None by default.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub(crate) otlp_endpoint: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// See [`Cli::log_format`].
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run tenant manager, provision manager and agent host in one process: embedded
    /// (SQLite, database-backed queue) by default, or against PostgreSQL and JetStream.
    Serve(Box<ServeArgs>),
    /// Run one manager replica: REST API and orchestration engine, sending work to agent
    /// hosts over JetStream.
    Manager(Box<ManagerArgs>),
    /// Run one agent-host replica: activities from JetStream, run as plugins. Needs no
    /// database.
    Agent(Box<AgentArgs>),
    /// Issue an API token signed with a data directory's key (print it on stdout).
    Token(TokenArgs),
    /// Plugin tools: signing keys and signatures, inspecting and checking components.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Tenants of a running cfm: list, get, create, delete, query.
    Tenants(client::commands::Resource<client::commands::TenantCommand>),
    /// Participants: list, get, onboard (`--wait` follows it), delete, retry, migrate, verify,
    /// reconcile, scale, history, calls, query.
    Participants(client::commands::Resource<client::commands::ParticipantCommand>),
    /// Cells: list with use against capacity, get, create, delete, cordon, uncordon.
    Cells(client::commands::Resource<client::commands::CellCommand>),
    /// Drains of cells: start (`--wait` follows it), get, pause, resume, cancel.
    Drains(client::commands::Resource<client::operations::DrainCommand>),
    /// Rebalancing cells: plan (a dry run), list, get, execute (`--wait`), cancel.
    Rebalance(client::commands::Resource<client::operations::RebalanceCommand>),
    /// Rollouts of template versions: list, get, create (`--wait`), participants, pause,
    /// resume, abort.
    Rollouts(client::commands::Resource<client::operations::RolloutCommand>),
    /// Dataspace profiles: list, get, create, delete, deploy to a cell.
    DataspaceProfiles(client::commands::Resource<client::commands::DataspaceCommand>),
    /// Orchestrations: list, show (drawn as a graph), cancel, query.
    Orchestrations(client::commands::Resource<client::commands::OrchestrationCommand>),
    /// Orchestration definitions (templates) and activity types.
    Definitions(client::commands::Resource<client::commands::DefinitionCommand>),
    /// Contexts: which cfm the client commands talk to, with which token file.
    #[command(subcommand)]
    Context(client::ContextCommand),
    /// Print a completion script for a shell, e.g. `cfm completions bash > /etc/bash_completion.d/cfm`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args)]
pub(crate) struct TokenArgs {
    /// The data directory of the manager that will check the token.
    #[arg(long, env = "CFM_DATA_DIR", default_value = "cfm-data")]
    pub(crate) data_dir: PathBuf,
    /// A scope to grant; repeat for more. Default: all four.
    #[arg(long = "scope", value_parser = clap::builder::PossibleValuesParser::new(cfm_manager::auth::ALL_SCOPES))]
    pub(crate) scopes: Vec<String>,
    /// Confine the token to this tenant's resources (`cfm_tenant` claim).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// Who the token is for (`sub` claim).
    #[arg(long, default_value = "cfm-cli")]
    pub(crate) subject: String,
    /// Lifetime in hours.
    #[arg(long, default_value_t = 24)]
    pub(crate) ttl_hours: i64,
}

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    #[command(flatten)]
    pub(crate) host: HostArgs,
    /// Distribute work over this JetStream server instead of the embedded queue.
    #[arg(long, env = "CFM_NATS_URL")]
    pub(crate) nats_url: Option<String>,
    #[command(flatten)]
    pub(crate) nats: NatsArgs,
    #[command(flatten)]
    pub(crate) events: EventArgs,
}

/// Events other services publish on JetStream that start orchestrations.
#[derive(clap::Args)]
pub(crate) struct EventArgs {
    /// The JetStream stream the Identity Hub publishes keypair events into (JAD:
    /// `edc-events`): each `activated`, `revoked` or `rotated` event starts an orchestration
    /// of the participant it names. Needs --nats-url.
    #[arg(long, env = "CFM_KEYPAIR_EVENTS_STREAM")]
    pub(crate) keypair_events_stream: Option<String>,
    /// The subjects of those events in that stream.
    #[arg(
        long,
        env = "CFM_KEYPAIR_EVENTS_SUBJECT",
        default_value = "events.keypair.>"
    )]
    pub(crate) keypair_events_subject: String,
}

#[derive(clap::Args)]
pub(crate) struct ManagerArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// The JetStream server agent hosts take work from, e.g. `nats://127.0.0.1:4222`.
    #[arg(long, env = "CFM_NATS_URL")]
    pub(crate) nats_url: String,
    #[command(flatten)]
    pub(crate) nats: NatsArgs,
    #[command(flatten)]
    pub(crate) events: EventArgs,
    /// Reports applied at once.
    #[arg(long, default_value_t = cfm_queue::worker::DEFAULT_CONCURRENCY)]
    pub(crate) concurrency: usize,
}

#[derive(clap::Args)]
pub(crate) struct AgentArgs {
    /// Where the embedded backends, the audit log and the compiled-plugin cache live.
    #[arg(long, env = "CFM_DATA_DIR", default_value = "cfm-data")]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    pub(crate) host: HostArgs,
    /// The JetStream server to take work from, e.g. `nats://127.0.0.1:4222`.
    #[arg(long, env = "CFM_NATS_URL")]
    pub(crate) nats_url: String,
    #[command(flatten)]
    pub(crate) nats: NatsArgs,
    /// Where to serve `/health`, `/ready` and `/metrics` (no API), e.g. `0.0.0.0:9464` in
    /// a pod; port 0 picks a free port. None by default.
    #[arg(long, env = "CFM_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
}

/// The REST API and the engine behind it.
#[derive(clap::Args)]
pub(crate) struct ApiArgs {
    /// Where the database, signing key, admin token and embedded backends live.
    #[arg(long, env = "CFM_DATA_DIR", default_value = "cfm-data")]
    pub(crate) data_dir: PathBuf,
    /// The metadata and orchestration database, e.g.
    /// `postgres://postgres@127.0.0.1:5432/cfm` (created when missing). Without it, an
    /// embedded SQLite database in the data directory.
    #[arg(long, env = "CFM_DATABASE_URL")]
    pub(crate) database_url: Option<String>,
    /// JWKS of an identity provider whose tokens the API accepts besides local ones:
    /// an http(s) URL or a file.
    #[arg(long, env = "CFM_JWKS", group = "identity_provider")]
    pub(crate) jwks: Option<String>,
    /// The identity provider's OpenID Connect discovery document (e.g.
    /// `https://keycloak/realms/cfm/.well-known/openid-configuration`), read at start: its
    /// `jwks_uri` is the JWKS and its `issuer` the required `iss` (unless --jwt-issuer).
    #[arg(long, env = "CFM_OIDC_DISCOVERY_URL", group = "identity_provider")]
    pub(crate) oidc_discovery_url: Option<String>,
    /// Required `iss` claim of identity-provider tokens.
    #[arg(long, env = "CFM_JWT_ISSUER", requires = "identity_provider")]
    pub(crate) jwt_issuer: Option<String>,
    /// Required `aud` claim of identity-provider tokens.
    #[arg(long, env = "CFM_JWT_AUDIENCE", requires = "identity_provider")]
    pub(crate) jwt_audience: Option<String>,
    /// The claim that must hold `--jwt-audience` (default `aud`), e.g. `azp` for identity
    /// providers that name the client there instead.
    #[arg(long, env = "CFM_JWT_AUDIENCE_CLAIM", requires = "jwt_audience")]
    pub(crate) jwt_audience_claim: Option<String>,
    /// Least time between two fetches of a JWKS URL for key ids it did not have.
    #[arg(long, env = "CFM_JWKS_MIN_REFRESH_SECS", default_value_t = 30)]
    pub(crate) jwks_min_refresh_secs: u64,
    /// Address of the REST API. Loopback by default; port 0 picks a free port.
    #[arg(long, env = "CFM_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// Do not seed the built-in activity definitions and default template.
    #[arg(long)]
    pub(crate) no_seed: bool,
    /// Wall-clock budget of one activity attempt, in milliseconds.
    #[arg(long, default_value_t = EngineSettings::DEFAULT_ACTIVITY_TIMEOUT_MS)]
    pub(crate) activity_timeout_ms: u64,
    /// How participants are placed among the cells that can take them: `spread` (the
    /// least utilised cell) or `pack` (the most utilised one with room).
    #[arg(long, env = "CFM_PLACEMENT_POLICY", default_value = "spread")]
    pub(crate) placement_policy: cfm_manager::model::PlacementPolicy,
    /// Walk the fleet verifying every active participant again once this has passed, and repair
    /// what drifted: seconds, or a number with `s`, `m` or `h` (`30s`, `15m`, `6h`). Off
    /// without it.
    #[arg(long, env = "CFM_RECONCILE_INTERVAL", value_parser = interval)]
    pub(crate) reconcile_interval: Option<std::time::Duration>,
    /// Most verifies and reconciles the periodic reconciler keeps running at once, over
    /// every manager replica.
    #[arg(long, env = "CFM_RECONCILE_MAX_PARALLEL", default_value_t = cfm_manager::tenant::reconciles::DEFAULT_MAX_PARALLEL, value_parser = clap::value_parser!(i64).range(1..=1024))]
    pub(crate) reconcile_max_parallel: i64,
}

impl ApiArgs {
    /// The periodic reconciler's schedule, when one was asked for.
    pub(crate) fn reconcile_schedule(&self) -> Option<cfm_manager::tenant::reconciles::Schedule> {
        self.reconcile_interval
            .map(|interval| cfm_manager::tenant::reconciles::Schedule {
                interval,
                max_parallel: self.reconcile_max_parallel,
            })
    }
}

/// A duration in seconds, or with a unit: `30s`, `15m`, `6h`; at least a second.
fn interval(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => {
            return Err(format!(
                "'{text}': expected seconds, or a number with s, m or h"
            ));
        }
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(seconds_per))
        .filter(|s| (1..=366 * 86_400).contains(s))
        .ok_or_else(|| format!("'{text}': expected between 1s and 366 days"))?;
    Ok(std::time::Duration::from_secs(seconds))
}

/// The agent host: plugins and how many activities run at once.
#[derive(clap::Args)]
pub(crate) struct HostArgs {
    /// Agent-host plugin configuration (TOML). Defaults to the built-in plugins built by
    /// scripts/build-plugins.sh (`target/plugins/plugins.toml` next to this binary's folder).
    #[arg(long, env = "CFM_PLUGINS")]
    pub(crate) plugins: Option<PathBuf>,
    /// Activities run at once.
    #[arg(long, default_value_t = cfm_queue::worker::DEFAULT_CONCURRENCY)]
    pub(crate) concurrency: usize,
    /// Deliveries of one task without a result (its host died each time) before it is
    /// reported fatal.
    #[arg(long, default_value_t = cfm_queue::worker::DEFAULT_MAX_DELIVERIES)]
    pub(crate) max_deliveries: u64,
    /// On SIGTERM or Ctrl-C, how long running activities may take to finish and report
    /// before the process exits anyway (their tasks then come back after the ack-wait).
    /// Below Kubernetes' default 30 s grace period, so the drain ends before SIGKILL.
    #[arg(long, env = "CFM_SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub(crate) shutdown_grace_secs: u64,
    /// How often to look for a changed plugin configuration or plugin file and reload;
    /// running activities finish on the old version. 0 turns reloading off.
    #[arg(long, env = "CFM_PLUGIN_RELOAD_SECS", default_value_t = 2)]
    pub(crate) plugin_reload_secs: u64,
    /// Keep plugins' secrets in Vault or OpenBao (KV v2) at this address instead of the
    /// data directory, e.g. `https://vault.example:8200`.
    #[arg(long, env = "CFM_VAULT_ADDR", requires = "vault_token_file")]
    pub(crate) vault_addr: Option<String>,
    /// A file holding the Vault token (read once at start; never logged).
    #[arg(long, env = "CFM_VAULT_TOKEN_FILE")]
    pub(crate) vault_token_file: Option<PathBuf>,
    /// The KV v2 mount.
    #[arg(long, env = "CFM_VAULT_MOUNT", default_value = "secret")]
    pub(crate) vault_mount: String,
    /// Folder of the mount that cfm's secrets live under.
    #[arg(long, env = "CFM_VAULT_PREFIX", default_value = "cfm/")]
    pub(crate) vault_prefix: String,
    /// Where Vault's AppRole auth method is mounted: participants' runtime credentials are
    /// AppRole roles.
    #[arg(long, env = "CFM_VAULT_APPROLE_MOUNT", default_value = "approle")]
    pub(crate) vault_approle_mount: String,
    /// Send plugins' DNS records to this authoritative server (`host:port`) as RFC 2136
    /// dynamic updates, instead of zone files in the data directory.
    #[arg(long, env = "CFM_DNS_SERVER")]
    pub(crate) dns_server: Option<std::net::SocketAddr>,
    /// The TSIG key signing those updates, in BIND's key-file format (`tsig-keygen NAME`
    /// writes one). Read once at start; the secret is never logged.
    #[arg(long, env = "CFM_DNS_TSIG_KEY_FILE", requires = "dns_server")]
    pub(crate) dns_tsig_key_file: Option<PathBuf>,
    /// Keep plugins' cluster objects in Kubernetes (server-side apply) instead of manifests
    /// in the data directory: `infer` for the cluster kubectl would use (`KUBECONFIG`,
    /// `~/.kube/config`, in-cluster), or the API server's URL.
    #[arg(long, env = "CFM_KUBERNETES")]
    pub(crate) kubernetes: Option<String>,
    /// A cell whose participants' cluster objects go to a Kubernetes cluster of its own:
    /// `CELL=TARGET`, CELL a cell's id or external id, TARGET the API server's URL or
    /// `context:NAME` (a kubeconfig context). Repeat it for each such cell; other cells
    /// use `--kubernetes` (or the embedded folder per cell).
    #[arg(long = "kubernetes-cell", env = "CFM_KUBERNETES_CELLS", value_delimiter = ',', value_parser = cell_cluster)]
    pub(crate) kubernetes_cells: Vec<(String, String)>,
    /// The field manager cfm's server-side applies use.
    #[arg(long, env = "CFM_KUBERNETES_FIELD_MANAGER", default_value = "cfm")]
    pub(crate) kubernetes_field_manager: String,
    /// Base URL of the token service (jwtlet's token-exchange listener, e.g.
    /// `http://jwtlet:8080`): plugins with a `tokens` grant get participant-scoped tokens
    /// exchanged at `<url>/token` (RFC 8693).
    #[arg(long, env = "CFM_TOKEN_EXCHANGE_URL", requires = "subject_token_file")]
    pub(crate) token_exchange_url: Option<String>,
    /// The agent host's own subject token (a projected Kubernetes service-account token):
    /// read again whenever the file changes, never logged, never shown to a plugin.
    #[arg(long, env = "CFM_SUBJECT_TOKEN_FILE", requires = "token_exchange_url")]
    pub(crate) subject_token_file: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct NatsArgs {
    /// Prefix of the JetStream stream, subjects and consumers: installations sharing a
    /// server keep apart by it.
    #[arg(long, env = "CFM_NATS_NAMESPACE", default_value = "cfm")]
    pub(crate) nats_namespace: String,
    /// Seconds a taken task stays with its agent host without a sign of life; running
    /// activities signal every third of it, so this is how soon a dead host's work moves.
    #[arg(long, env = "CFM_ACK_WAIT_SECS", default_value_t = cfm_queue::DEFAULT_ACK_WAIT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) ack_wait_secs: u64,
    /// NATS user name; the password comes from --nats-password-file.
    #[arg(
        long,
        env = "CFM_NATS_USER",
        requires = "nats_password_file",
        group = "nats_auth"
    )]
    pub(crate) nats_user: Option<String>,
    /// A file holding the NATS user's password (read at start; never logged).
    #[arg(long, env = "CFM_NATS_PASSWORD_FILE", requires = "nats_user")]
    pub(crate) nats_password_file: Option<PathBuf>,
    /// A file holding a NATS authorization token.
    #[arg(long, env = "CFM_NATS_TOKEN_FILE", group = "nats_auth")]
    pub(crate) nats_token_file: Option<PathBuf>,
    /// A file holding a NATS NKey seed (`SU…`).
    #[arg(long, env = "CFM_NATS_NKEY_SEED_FILE", group = "nats_auth")]
    pub(crate) nats_nkey_seed_file: Option<PathBuf>,
    /// A NATS `.creds` file (user JWT and NKey seed), for decentralised authentication.
    #[arg(long, env = "CFM_NATS_CREDS_FILE", group = "nats_auth")]
    pub(crate) nats_creds_file: Option<PathBuf>,
}

impl NatsArgs {
    /// The authentication the flags choose (at most one kind: clap's `nats_auth` group).
    pub(crate) fn auth(&self) -> anyhow::Result<cfm_queue::jetstream::NatsAuth> {
        use anyhow::Context;
        use cfm_queue::jetstream::NatsAuth;
        let secret = |path: &PathBuf, what: &str| -> anyhow::Result<String> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the NATS {what} from {}", path.display()))?;
            Ok(text.trim().to_string())
        };
        Ok(
            if let (Some(user), Some(file)) = (&self.nats_user, &self.nats_password_file) {
                NatsAuth::UserPassword {
                    user: user.clone(),
                    password: secret(file, "password")?,
                }
            } else if let Some(file) = &self.nats_token_file {
                NatsAuth::Token(secret(file, "token")?)
            } else if let Some(file) = &self.nats_nkey_seed_file {
                NatsAuth::NKeySeed(secret(file, "NKey seed")?)
            } else if let Some(file) = &self.nats_creds_file {
                NatsAuth::CredentialsFile(file.clone())
            } else {
                NatsAuth::None
            },
        )
    }
}

/// `CELL=TARGET` of `--kubernetes-cell`.
fn cell_cluster(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((cell, target)) if !cell.trim().is_empty() && !target.trim().is_empty() => {
            Ok((cell.trim().to_string(), target.trim().to_string()))
        }
        _ => Err(format!(
            "'{text}' is not CELL=TARGET (a cell id or external id, then an API server URL or context:NAME)"
        )),
    }
}
