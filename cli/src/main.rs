//! The `cfm` command. `cfm serve` runs the whole management plane in one process (on
//! the embedded default: SQLite, the database-backed queue and the in-process agent
//! host); `cfm manager` and `cfm agent` run its two halves as replicas that meet in
//! PostgreSQL and JetStream.

mod args;
mod plugin;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use anyhow::{Context, bail};
use cfm_host::capability::cluster::kubernetes::KubernetesCluster;
use cfm_host::capability::dns::rfc2136::{DynamicUpdates, TsigKey};
use cfm_host::capability::secrets::vault::{VaultSecrets, VaultSettings};
use cfm_host::capability::tokens::exchange::TokenExchange;
use cfm_host::runtime::HostOptions;
use cfm_host::{AgentHost, Audit, Backends, HostConfig};
use cfm_manager::auth::AuthSettings;
use cfm_manager::{EngineSettings, Manager, Options};
use cfm_queue::Queue;
use cfm_queue::jetstream::{JetStreamQueue, JetStreamSettings};
use cfm_queue::worker::{QueueSink, Worker, WorkerSettings};
use clap::Parser;

use args::{
    AgentArgs, ApiArgs, Cli, Command, EventArgs, HostArgs, ManagerArgs, NatsArgs, ServeArgs,
    TokenArgs,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // The Vault client and its transport log every non-2xx answer as an error, the
            // 404 of a secret not yet written and the 400 of a put-if-absent that found
            // one included; cfm reports the failures that matter.
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "info,sqlx=warn,tower_http=info,rustify=off,vaultrs::api=off".into()
            }),
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
        Command::Serve(args) => serve(*args).await,
        Command::Manager(args) => manager(*args).await,
        Command::Agent(args) => agent(*args).await,
        Command::Token(args) => token(args),
        Command::Plugin(command) => plugin::run(command),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut manager = open_manager(&args.api).await?;
    let host = Arc::new(open_host(&args.api.data_dir, &args.host).await?);
    let work = match &args.nats_url {
        None => {
            if args.events.keypair_events_stream.is_some() {
                anyhow::bail!(
                    "--keypair-events-stream needs --nats-url: events come from JetStream"
                );
            }
            tracing::info!("work goes through the embedded queue");
            let settings = worker_settings(&args.host, None);
            let worker = manager.embedded_worker(host, settings).await;
            tokio::spawn(async move { worker.run().await.map_err(anyhow::Error::from) })
        }
        Some(url) => {
            let jetstream = connect(url, &args.nats).await?;
            keypair_events(&manager, &jetstream, &args.events).await?;
            let queue: Arc<dyn Queue> = Arc::new(jetstream);
            let worker = agent_worker(queue.clone(), host, &args.host, &args.nats);
            let distributed =
                cfm_manager::run_distributed(&mut manager.engine, queue, args.host.concurrency);
            tokio::spawn(async move {
                tokio::try_join!(
                    async { distributed.await.map_err(anyhow::Error::from) },
                    async { worker.run().await.map_err(anyhow::Error::from) }
                )?;
                Ok(())
            })
        }
    };
    serve_api(&manager, &args.api, work).await
}

async fn manager(args: ManagerArgs) -> anyhow::Result<()> {
    let mut manager = open_manager(&args.api).await?;
    let jetstream = connect(&args.nats_url, &args.nats).await?;
    keypair_events(&manager, &jetstream, &args.events).await?;
    let queue: Arc<dyn Queue> = Arc::new(jetstream);
    let distributed = cfm_manager::run_distributed(&mut manager.engine, queue, args.concurrency);
    let work = tokio::spawn(async move { distributed.await.map_err(anyhow::Error::from) });
    serve_api(&manager, &args.api, work).await
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let host = Arc::new(open_host(&args.data_dir, &args.host).await?);
    let queue = Arc::new(connect(&args.nats_url, &args.nats).await?);
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
            oidc_discovery: args.oidc_discovery_url.clone(),
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
            audience_claim: args.jwt_audience_claim.clone(),
            min_refresh: Some(std::time::Duration::from_secs(args.jwks_min_refresh_secs)),
        },
        engine: EngineSettings {
            activity_timeout_ms: args.activity_timeout_ms,
            placement: args.placement_policy,
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
    for (cell, target) in &args.kubernetes_cells {
        let cluster = KubernetesCluster::connect(Some(target), &args.kubernetes_field_manager)
            .await
            .map_err(anyhow::Error::msg)?;
        tracing::info!(%cell, server = %cluster.server(), "cell's cluster objects go to its own Kubernetes");
        backends = backends.with_cell_cluster(cell.clone(), Arc::new(cluster));
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
    if let (Some(url), Some(file)) = (&args.token_exchange_url, &args.subject_token_file) {
        let exchange = TokenExchange::new(url, file)?;
        tracing::info!(endpoint = %exchange.endpoint(), "plugin tokens are exchanged at a token service");
        backends = backends.with_tokens(Arc::new(exchange));
    } else {
        // Loading them is fine (an embedded setup never runs them); running them is not.
        let needing: Vec<&str> = config
            .plugins
            .iter()
            .filter(|p| p.grants.tokens.is_some())
            .map(|p| p.name.as_str())
            .collect();
        if !needing.is_empty() {
            tracing::info!(plugins = ?needing, "these plugins exchange tokens, but no --token-exchange-url is set: their activities fail until it is");
        }
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

/// Starts consuming keypair events when a stream is named; runs for the life of the process.
async fn keypair_events(
    manager: &Manager,
    jetstream: &JetStreamQueue,
    args: &EventArgs,
) -> anyhow::Result<()> {
    let Some(stream) = &args.keypair_events_stream else {
        return Ok(());
    };
    let consumer = jetstream
        .event_consumer(stream, &args.keypair_events_subject)
        .await
        .context("consuming keypair events")?;
    tracing::info!(%stream, subject = %args.keypair_events_subject, "keypair events start orchestrations");
    tokio::spawn(cfm_manager::tenant::keypairs::run(
        manager.engine.clone(),
        consumer,
    ));
    Ok(())
}

async fn connect(url: &str, args: &NatsArgs) -> anyhow::Result<JetStreamQueue> {
    let shown = cfm_manager::store::redact_url(url);
    tracing::info!(
        "work goes through JetStream at {shown} (namespace {})",
        args.nats_namespace
    );
    let settings = JetStreamSettings {
        namespace: args.nats_namespace.clone(),
        ack_wait: Duration::from_secs(args.ack_wait_secs),
        auth: args.auth()?,
        ..JetStreamSettings::new(url)
    };
    JetStreamQueue::connect(settings)
        .await
        .with_context(|| format!("connecting to JetStream at {shown}"))
}

fn agent_worker(
    queue: Arc<dyn Queue>,
    host: Arc<AgentHost>,
    args: &HostArgs,
    nats: &NatsArgs,
) -> Worker {
    let settings = worker_settings(args, Some(nats));
    Worker::new(queue.clone(), host, Arc::new(QueueSink(queue)), settings)
}

/// How an agent worker runs, embedded or fed by JetStream: both honour the same flags.
fn worker_settings(args: &HostArgs, nats: Option<&NatsArgs>) -> WorkerSettings {
    let defaults = WorkerSettings::default();
    WorkerSettings {
        concurrency: args.concurrency,
        max_deliveries: args.max_deliveries,
        // Signs of life three times per ack wait, so a live host keeps its task.
        progress_every: nats.map_or(defaults.progress_every, |nats| {
            Duration::from_secs(nats.ack_wait_secs) / 3
        }),
        ..defaults
    }
}

/// Serves the API until a shutdown signal, or until `work` (the engine's background
/// work) fails, which is fatal: a manager that cannot move work must not look healthy.
async fn serve_api(
    manager: &Manager,
    args: &ApiArgs,
    mut work: tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let listen = args.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let address = listener.local_addr()?;
    // Scripts and tests read these two lines.
    println!("cfm listening on http://{address}");
    println!("admin token: {}", manager.token_path.display());
    // Every replica tops up running drains and rebalance plans; the database decides who
    // starts what.
    let reconcile = args.reconcile_schedule();
    if let Some(schedule) = &reconcile {
        tracing::info!(
            interval_secs = schedule.interval.as_secs(),
            max_parallel = schedule.max_parallel,
            "periodic reconciler on"
        );
    }
    let fleet = tokio::spawn(cfm_manager::tenant::operations::run(
        manager.engine.clone(),
        reconcile,
    ));
    let api = axum::serve(listener, manager.router()).with_graceful_shutdown(shutdown());
    tokio::select! {
        served = api => served?,
        outcome = &mut work => {
            outcome??;
            bail!("background work stopped unexpectedly");
        }
    }
    work.abort();
    fleet.abort();
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
    // Event streams never end by themselves; the graceful shutdown would wait for them.
    cfm_manager::api::close_streams();
    tracing::info!("shutting down");
}
