//! The `cfm` command. `cfm serve` runs the whole management plane in one process (on
//! the embedded default: SQLite, the database-backed queue and the in-process agent
//! host); `cfm manager` and `cfm agent` run its two halves as replicas that meet in
//! PostgreSQL and JetStream.

mod plugin;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use anyhow::{Context, bail};
use cfm_host::capability::cluster::kubernetes::KubernetesCluster;
use cfm_host::capability::dns::rfc2136::{DynamicUpdates, TsigKey};
use cfm_host::capability::secrets::vault::{VaultSecrets, VaultSettings};
use cfm_host::runtime::HostOptions;
use cfm_host::{AgentHost, Audit, Backends, HostConfig};
use cfm_manager::auth::AuthSettings;
use cfm_manager::{EngineSettings, Manager, Options};
use cfm_queue::Queue;
use cfm_queue::jetstream::{JetStreamQueue, JetStreamSettings};
use cfm_queue::worker::{QueueSink, Worker, WorkerSettings};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cfm",
    version,
    about = "Connector Fabric Manager: the management plane for hosted dataspace participants"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run tenant manager, provision manager and agent host in one process: embedded
    /// (SQLite, database-backed queue) by default, or against PostgreSQL and JetStream.
    Serve(ServeArgs),
    /// Run one manager replica: REST API and orchestration engine, sending work to agent
    /// hosts over JetStream.
    Manager(ManagerArgs),
    /// Run one agent-host replica: activities from JetStream, run as plugins. Needs no
    /// database.
    Agent(AgentArgs),
    /// Issue an API token signed with a data directory's key (print it on stdout).
    Token(TokenArgs),
    /// Plugin tools: signing keys and signatures, inspecting and checking components.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The data directory of the manager that will check the token.
    #[arg(long, env = "CFM_DATA_DIR", default_value = "cfm-data")]
    data_dir: PathBuf,
    /// A scope to grant; repeat for more. Default: all four.
    #[arg(long = "scope", value_parser = clap::builder::PossibleValuesParser::new(cfm_manager::auth::ALL_SCOPES))]
    scopes: Vec<String>,
    /// Confine the token to this tenant's resources (`cfm_tenant` claim).
    #[arg(long)]
    tenant: Option<String>,
    /// Who the token is for (`sub` claim).
    #[arg(long, default_value = "cfm-cli")]
    subject: String,
    /// Lifetime in hours.
    #[arg(long, default_value_t = 24)]
    ttl_hours: i64,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    host: HostArgs,
    /// Distribute work over this JetStream server instead of the embedded queue.
    #[arg(long, env = "CFM_NATS_URL")]
    nats_url: Option<String>,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(clap::Args)]
struct ManagerArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The JetStream server agent hosts take work from, e.g. `nats://127.0.0.1:4222`.
    #[arg(long, env = "CFM_NATS_URL")]
    nats_url: String,
    #[command(flatten)]
    nats: NatsArgs,
    /// Reports applied at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Where the embedded backends, the audit log and the compiled-plugin cache live.
    #[arg(long, env = "CFM_DATA_DIR", default_value = "cfm-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    host: HostArgs,
    /// The JetStream server to take work from, e.g. `nats://127.0.0.1:4222`.
    #[arg(long, env = "CFM_NATS_URL")]
    nats_url: String,
    #[command(flatten)]
    nats: NatsArgs,
}

/// The REST API and the engine behind it.
#[derive(clap::Args)]
struct ApiArgs {
    /// Where the database, signing key, admin token and embedded backends live.
    #[arg(long, env = "CFM_DATA_DIR", default_value = "cfm-data")]
    data_dir: PathBuf,
    /// The metadata and orchestration database, e.g.
    /// `postgres://postgres@127.0.0.1:5432/cfm` (created when missing). Without it, an
    /// embedded SQLite database in the data directory.
    #[arg(long, env = "CFM_DATABASE_URL")]
    database_url: Option<String>,
    /// JWKS of an identity provider whose tokens the API accepts besides local ones:
    /// an http(s) URL or a file.
    #[arg(long, env = "CFM_JWKS")]
    jwks: Option<String>,
    /// Required `iss` claim of identity-provider tokens.
    #[arg(long, env = "CFM_JWT_ISSUER", requires = "jwks")]
    jwt_issuer: Option<String>,
    /// Required `aud` claim of identity-provider tokens.
    #[arg(long, env = "CFM_JWT_AUDIENCE", requires = "jwks")]
    jwt_audience: Option<String>,
    /// Least time between two fetches of a JWKS URL for key ids it did not have.
    #[arg(long, env = "CFM_JWKS_MIN_REFRESH_SECS", default_value_t = 30)]
    jwks_min_refresh_secs: u64,
    /// Address of the REST API. Loopback by default; port 0 picks a free port.
    #[arg(long, env = "CFM_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Do not seed the built-in activity definitions and default template.
    #[arg(long)]
    no_seed: bool,
    /// Wall-clock budget of one activity attempt, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    activity_timeout_ms: u64,
}

/// The agent host: plugins and how many activities run at once.
#[derive(clap::Args)]
struct HostArgs {
    /// Agent-host plugin configuration (TOML). Defaults to the built-in plugins built by
    /// scripts/build-plugins.sh (`target/plugins/plugins.toml` next to this binary's folder).
    #[arg(long, env = "CFM_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Activities run at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Deliveries of one task without a result (its host died each time) before it is
    /// reported fatal.
    #[arg(long, default_value_t = 10)]
    max_deliveries: u64,
    /// How often to look for a changed plugin configuration or plugin file and reload;
    /// running activities finish on the old version. 0 turns reloading off.
    #[arg(long, env = "CFM_PLUGIN_RELOAD_SECS", default_value_t = 2)]
    plugin_reload_secs: u64,
    /// Keep plugins' secrets in Vault or OpenBao (KV v2) at this address instead of the
    /// data directory, e.g. `https://vault.example:8200`.
    #[arg(long, env = "CFM_VAULT_ADDR", requires = "vault_token_file")]
    vault_addr: Option<String>,
    /// A file holding the Vault token (read once at start; never logged).
    #[arg(long, env = "CFM_VAULT_TOKEN_FILE")]
    vault_token_file: Option<PathBuf>,
    /// The KV v2 mount.
    #[arg(long, env = "CFM_VAULT_MOUNT", default_value = "secret")]
    vault_mount: String,
    /// Folder of the mount that cfm's secrets live under.
    #[arg(long, env = "CFM_VAULT_PREFIX", default_value = "cfm/")]
    vault_prefix: String,
    /// Where Vault's AppRole auth method is mounted: participants' runtime credentials are
    /// AppRole roles.
    #[arg(long, env = "CFM_VAULT_APPROLE_MOUNT", default_value = "approle")]
    vault_approle_mount: String,
    /// Send plugins' DNS records to this authoritative server (`host:port`) as RFC 2136
    /// dynamic updates, instead of zone files in the data directory.
    #[arg(long, env = "CFM_DNS_SERVER")]
    dns_server: Option<std::net::SocketAddr>,
    /// The TSIG key signing those updates, in BIND's key-file format (`tsig-keygen NAME`
    /// writes one). Read once at start; the secret is never logged.
    #[arg(long, env = "CFM_DNS_TSIG_KEY_FILE", requires = "dns_server")]
    dns_tsig_key_file: Option<PathBuf>,
    /// Keep plugins' cluster objects in Kubernetes (server-side apply) instead of manifests
    /// in the data directory: `infer` for the cluster kubectl would use (`KUBECONFIG`,
    /// `~/.kube/config`, in-cluster), or the API server's URL.
    #[arg(long, env = "CFM_KUBERNETES")]
    kubernetes: Option<String>,
    /// The field manager cfm's server-side applies use.
    #[arg(long, env = "CFM_KUBERNETES_FIELD_MANAGER", default_value = "cfm")]
    kubernetes_field_manager: String,
}

#[derive(clap::Args)]
struct NatsArgs {
    /// Prefix of the JetStream stream, subjects and consumers: installations sharing a
    /// server keep apart by it.
    #[arg(long, env = "CFM_NATS_NAMESPACE", default_value = "cfm")]
    nats_namespace: String,
    /// Seconds a taken task stays with its agent host without a sign of life; running
    /// activities signal every third of it, so this is how soon a dead host's work moves.
    #[arg(long, env = "CFM_ACK_WAIT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    ack_wait_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // The Vault client's transport logs every non-2xx answer as an error, the 404
            // of a secret not yet written included; cfm reports the failures that matter.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info,rustify=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let command = Cli::parse().command;
    if matches!(
        command,
        Command::Serve(_) | Command::Manager(_) | Command::Agent(_)
    ) {
        // Everything a server writes (database, secrets, zone files, manifests, caches) is
        // for the user it runs as; a file a backend or library creates is owner-only too.
        // The plugin tools' outputs (built plugins, signatures) are meant to be shared.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    }
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Manager(args) => manager(args).await,
        Command::Agent(args) => agent(args).await,
        Command::Token(args) => token(args),
        Command::Plugin(command) => plugin::run(command),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let manager = open_manager(&args.api).await?;
    let host = Arc::new(open_host(&args.api.data_dir, &args.host).await?);
    let work = match &args.nats_url {
        None => {
            tracing::info!("work goes through the embedded queue");
            let worker = manager.embedded_worker(host, args.host.concurrency).await;
            tokio::spawn(async move { worker.run().await.map_err(anyhow::Error::from) })
        }
        Some(url) => {
            let queue = connect(url, &args.nats).await?;
            let worker = agent_worker(queue.clone(), host, &args.host, &args.nats);
            let distributed =
                cfm_manager::run_distributed(manager.engine.clone(), queue, args.host.concurrency);
            tokio::spawn(async move {
                tokio::try_join!(
                    async { distributed.await.map_err(anyhow::Error::from) },
                    async { worker.run().await.map_err(anyhow::Error::from) }
                )?;
                Ok(())
            })
        }
    };
    serve_api(&manager, args.api.listen, work).await
}

async fn manager(args: ManagerArgs) -> anyhow::Result<()> {
    let manager = open_manager(&args.api).await?;
    let queue = connect(&args.nats_url, &args.nats).await?;
    let engine = manager.engine.clone();
    let concurrency = args.concurrency;
    let work = tokio::spawn(async move {
        cfm_manager::run_distributed(engine, queue, concurrency)
            .await
            .map_err(anyhow::Error::from)
    });
    serve_api(&manager, args.api.listen, work).await
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let host = Arc::new(open_host(&args.data_dir, &args.host).await?);
    let queue = connect(&args.nats_url, &args.nats).await?;
    let worker = agent_worker(queue, host.clone(), &args.host, &args.nats);
    let mut work = tokio::spawn(worker.run());
    // Scripts and tests read this line.
    println!(
        "cfm agent running activity types {}",
        cfm_protocol::ActivityExecutor::activity_types(host.as_ref()).join(", ")
    );
    tokio::select! {
        outcome = &mut work => outcome??,
        _ = shutdown() => work.abort(),
    }
    tracing::info!("stopped");
    Ok(())
}

async fn open_manager(args: &ApiArgs) -> anyhow::Result<Manager> {
    let options = Options {
        database_url: args.database_url.clone(),
        auth: AuthSettings {
            jwks: args.jwks.clone(),
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
            min_refresh: Some(std::time::Duration::from_secs(args.jwks_min_refresh_secs)),
        },
        engine: EngineSettings {
            activity_timeout_ms: args.activity_timeout_ms,
            ..EngineSettings::default()
        },
    };
    let manager = Manager::open(&args.data_dir, options)
        .await
        .with_context(|| match &args.database_url {
            Some(url) => format!("opening database {}", cfm_manager::store::redact_url(url)),
            None => format!("opening data directory {}", args.data_dir.display()),
        })?;
    if !args.no_seed && manager.seed().await? {
        tracing::info!(
            "seeded built-in activity definitions and the default orchestration template"
        );
    }
    Ok(manager)
}

async fn open_host(data_dir: &Path, args: &HostArgs) -> anyhow::Result<AgentHost> {
    let plugins = match &args.plugins {
        Some(path) => path.clone(),
        None => default_plugins()?,
    };
    let config = HostConfig::load(&plugins)?;
    cfm_manager::data_dir::create_private(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let audit = Audit::to_file(&data_dir.join("audit.jsonl")).context("opening the audit log")?;
    let mut backends = Backends::embedded(data_dir);
    if let (Some(address), Some(token_file)) = (&args.vault_addr, &args.vault_token_file) {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading the Vault token from {}", token_file.display()))?;
        let secrets = VaultSecrets::new(VaultSettings {
            address: address.clone(),
            token: token.trim().to_string(),
            mount: args.vault_mount.clone(),
            prefix: args.vault_prefix.clone(),
            approle_mount: args.vault_approle_mount.clone(),
        })?;
        tracing::info!(%address, mount = %args.vault_mount, "plugin secrets are kept in Vault");
        backends = backends.with_secrets(Arc::new(secrets));
    }
    if let Some(target) = &args.kubernetes {
        let server = (target != "infer").then_some(target.as_str());
        let cluster = KubernetesCluster::connect(server, &args.kubernetes_field_manager)
            .await
            .map_err(anyhow::Error::msg)?;
        tracing::info!(server = %cluster.server(), field_manager = %args.kubernetes_field_manager, "plugin cluster objects go to Kubernetes");
        backends = backends.with_cluster(Arc::new(cluster));
    }
    if let Some(server) = args.dns_server {
        let key = args
            .dns_tsig_key_file
            .as_deref()
            .map(TsigKey::load)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        match &key {
            Some(key) => {
                tracing::info!(%server, key = %key.name, "plugin DNS records go to an authoritative server (RFC 2136, TSIG)")
            }
            None => {
                tracing::warn!(%server, "plugin DNS records go to an authoritative server unsigned: give --dns-tsig-key-file unless the server trusts this address")
            }
        }
        backends = backends.with_dns(Arc::new(
            DynamicUpdates::new(server, key).map_err(anyhow::Error::msg)?,
        ));
    }
    let host = AgentHost::new(
        &config,
        backends,
        audit,
        HostOptions {
            max_concurrent_invocations: args.concurrency as u32,
            compile_cache: Some(data_dir.join("cache")),
        },
    )?;
    if args.plugin_reload_secs > 0 {
        // Runs for the life of the process.
        drop(host.watch(plugins, Duration::from_secs(args.plugin_reload_secs)));
    }
    Ok(host)
}

async fn connect(url: &str, args: &NatsArgs) -> anyhow::Result<Arc<dyn Queue>> {
    let shown = cfm_manager::store::redact_url(url);
    tracing::info!(
        "work goes through JetStream at {shown} (namespace {})",
        args.nats_namespace
    );
    let settings = JetStreamSettings {
        namespace: args.nats_namespace.clone(),
        ack_wait: Duration::from_secs(args.ack_wait_secs),
        ..JetStreamSettings::new(url)
    };
    let queue = JetStreamQueue::connect(settings)
        .await
        .with_context(|| format!("connecting to JetStream at {shown}"))?;
    Ok(Arc::new(queue))
}

fn agent_worker(
    queue: Arc<dyn Queue>,
    host: Arc<AgentHost>,
    args: &HostArgs,
    nats: &NatsArgs,
) -> Worker {
    let settings = WorkerSettings {
        concurrency: args.concurrency,
        max_deliveries: args.max_deliveries,
        progress_every: Duration::from_secs(nats.ack_wait_secs) / 3,
        ..WorkerSettings::default()
    };
    Worker::new(queue.clone(), host, Arc::new(QueueSink(queue)), settings)
}

/// Serves the API until a shutdown signal, or until `work` (the engine's background
/// work) fails, which is fatal: a manager that cannot move work must not look healthy.
async fn serve_api(
    manager: &Manager,
    listen: SocketAddr,
    mut work: tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let address = listener.local_addr()?;
    // Scripts and tests read these two lines.
    println!("cfm listening on http://{address}");
    println!("admin token: {}", manager.token_path.display());
    let api = axum::serve(listener, manager.router()).with_graceful_shutdown(shutdown());
    tokio::select! {
        served = api => served?,
        outcome = &mut work => {
            outcome??;
            bail!("background work stopped unexpectedly");
        }
    }
    work.abort();
    tracing::info!("stopped");
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    // Creating a key here would sign tokens no running manager accepts.
    if !args.data_dir.join("signing.key").exists() {
        bail!(
            "{} has no signing key: start `cfm serve --data-dir {}` once first",
            args.data_dir.display(),
            args.data_dir.display()
        );
    }
    let auth = cfm_manager::auth::Auth::load_or_create(&args.data_dir)?;
    let scopes: Vec<&str> = if args.scopes.is_empty() {
        cfm_manager::auth::ALL_SCOPES.to_vec()
    } else {
        args.scopes.iter().map(String::as_str).collect()
    };
    if args.ttl_hours <= 0 {
        bail!("--ttl-hours must be positive");
    }
    let token = auth.issue_for(
        &args.subject,
        &scopes,
        args.tenant.as_deref(),
        args.ttl_hours.saturating_mul(3600),
    )?;
    println!("{token}");
    Ok(())
}

/// `target/plugins/plugins.toml` beside the folder of this binary (`target/debug/cfm`).
fn default_plugins() -> anyhow::Result<PathBuf> {
    match build_dir().map(|target| target.join("plugins").join("plugins.toml")) {
        Some(path) if path.exists() => Ok(path),
        _ => bail!(
            "no plugin configuration: pass --plugins FILE (or set CFM_PLUGINS), or build the built-in plugins with scripts/build-plugins.sh"
        ),
    }
}

/// The cargo `target/` folder this binary was built into (`target/<profile>/cfm`), where
/// the built-in plugins are laid out and beside which the checkout lies.
fn build_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.parent()?.parent().map(Path::to_path_buf)
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}
