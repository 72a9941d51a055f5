//! The `cfm` command. `cfm serve` runs the whole management plane in one process (on
//! the embedded default: SQLite, the database-backed queue and the in-process agent
//! host); `cfm manager` and `cfm agent` run its two halves as replicas that meet in
//! PostgreSQL and JetStream.

mod args;
mod background;
mod client;
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
use cfm_manager::api::{Probe, Reading};
use cfm_manager::auth::AuthSettings;
use cfm_manager::{EngineSettings, Manager, Options};
use cfm_queue::Queue;
use cfm_queue::jetstream::{JetStreamQueue, JetStreamSettings};
use cfm_queue::worker::{QueueSink, Worker, WorkerSettings};
use clap::Parser;

use background::{AgentWork, Background, JetStreamProbe, PluginsProbe};
use cfm_telemetry::Exporter;

use args::{
    AgentArgs, ApiArgs, Cli, Command, EventArgs, HostArgs, LogFormat, ManagerArgs, NatsArgs,
    ServeArgs, TokenArgs,
};

/// Every request, row and message allocates: glibc's malloc and free (with its
/// consolidation of fragmented arenas) took a fifth of the manager's CPU serving reads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Only the servers' work makes traces; a client command's would be a trace per call.
    let service = match &cli.command {
        Command::Serve(_) => Some("cfm"),
        Command::Manager(_) => Some("cfm-manager"),
        Command::Agent(_) => Some("cfm-agent"),
        _ => None,
    };
    let endpoint = cli
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty());
    let traces = endpoint.zip(service);
    let exporter = init_logging(cli.log_format, traces)?;
    let ran = run(cli.command).await;
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    ran
}

async fn run(command: Command) -> anyhow::Result<()> {
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
        Command::Tenants(r) => r.run().await,
        Command::Participants(r) => r.run().await,
        Command::Cells(r) => r.run().await,
        Command::DataspaceProfiles(r) => r.run().await,
        Command::Orchestrations(r) => r.run().await,
        Command::Definitions(r) => r.run().await,
        Command::Drains(r) => r.run().await,
        Command::Rebalance(r) => r.run().await,
        Command::Rollouts(r) => r.run().await,
        Command::Context(command) => client::context::run(command),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "cfm", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// The spans exported as traces: cfm's own and the HTTP server's, not the database
/// driver's or the Vault client's.
const TRACED: &str = "info,sqlx=warn,rustify=off,vaultrs=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

/// Log lines on standard error, filtered by `RUST_LOG`; with `traces` (an OTLP endpoint
/// and the process's service name), the same spans exported as traces.
fn init_logging(
    format: LogFormat,
    traces: Option<(&str, &'static str)>,
) -> anyhow::Result<Option<Exporter>> {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::prelude::*;
    // The Vault client and its transport log every non-2xx answer as an error, the 404
    // of a secret not yet written and the 400 of a put-if-absent that found one
    // included; cfm reports the failures that matter.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info,rustify=off,vaultrs::api=off".into());
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        // Colour codes only where a terminal shows them, not in files or collectors.
        LogFormat::Text => lines
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .boxed(),
        // Each line carries its spans' fields (the orchestration, activity and
        // participant ids) in its `spans` list, for collectors to index.
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .boxed(),
    };
    let (exporter, spans) = match traces {
        Some((endpoint, service)) => {
            let (exporter, layer) = Exporter::start(endpoint, service)?;
            // Spans are exported whatever RUST_LOG keeps of the log lines: a quieter log
            // must not cut traces (or the trace context tasks carry) off.
            let spans = layer.with_filter(tracing_subscriber::EnvFilter::new(TRACED));
            (Some(exporter), Some(spans))
        }
        None => (None, None),
    };
    let lines = lines.with_filter(filter.and(tracing_subscriber::filter::filter_fn(
        cfm_telemetry::not_a_per_batch_export_failure,
    )));
    tracing_subscriber::registry()
        .with(lines)
        .with(spans)
        .init();
    Ok(exporter)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut manager = open_manager(&args.api).await?;
    let host = Arc::new(open_host(&args.api.data_dir, &args.host).await?);
    let mut probes: Vec<Arc<dyn Probe>> = vec![Arc::new(PluginsProbe(host.clone()))];
    let mut readings: Vec<Arc<dyn Reading>> = Vec::new();
    let grace = Duration::from_secs(args.host.shutdown_grace_secs);
    let background = match &args.nats_url {
        None => {
            if args.events.keypair_events_stream.is_some() {
                anyhow::bail!(
                    "--keypair-events-stream needs --nats-url: events come from JetStream"
                );
            }
            tracing::info!("work goes through the embedded queue");
            let settings = worker_settings(&args.host, None);
            let worker = manager.embedded_worker(host, settings).await;
            Background {
                engine: None,
                agent: Some(AgentWork::start(worker, grace)),
            }
        }
        Some(url) => {
            let jetstream = Arc::new(connect(url, &args.nats).await?);
            let watch = Arc::new(JetStreamProbe(jetstream.clone()));
            probes.push(watch.clone());
            readings.push(watch);
            let queue: Arc<dyn Queue> = jetstream.clone();
            let worker = agent_worker(queue.clone(), host, &args.host, &args.nats);
            let distributed =
                cfm_manager::run_distributed(&mut manager.engine, queue, args.host.concurrency);
            // After the relay's express lane is in the engine, so what events start goes
            // out straight from its commit like the API's starts.
            keypair_events(&manager, &jetstream, &args.events).await?;
            Background {
                engine: Some(tokio::spawn(async move {
                    distributed.await.map_err(anyhow::Error::from)
                })),
                agent: Some(AgentWork::start(worker, grace)),
            }
        }
    };
    serve_api(&manager, &args.api, background, probes, readings).await
}

async fn manager(args: ManagerArgs) -> anyhow::Result<()> {
    let mut manager = open_manager(&args.api).await?;
    let jetstream = Arc::new(connect(&args.nats_url, &args.nats).await?);
    let watch = Arc::new(JetStreamProbe(jetstream.clone()));
    let probes: Vec<Arc<dyn Probe>> = vec![watch.clone()];
    let readings: Vec<Arc<dyn Reading>> = vec![watch];
    let queue: Arc<dyn Queue> = jetstream.clone();
    let distributed = cfm_manager::run_distributed(&mut manager.engine, queue, args.concurrency);
    // After the relay's express lane is in the engine (see `serve`).
    keypair_events(&manager, &jetstream, &args.events).await?;
    let background = Background {
        engine: Some(tokio::spawn(async move {
            distributed.await.map_err(anyhow::Error::from)
        })),
        agent: None,
    };
    serve_api(&manager, &args.api, background, probes, readings).await
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let host = Arc::new(open_host(&args.data_dir, &args.host).await?);
    let jetstream = Arc::new(connect(&args.nats_url, &args.nats).await?);
    if let Some(listen) = args.listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        // Scripts and tests read this line.
        println!("cfm listening on http://{}", listener.local_addr()?);
        let probes: Vec<Arc<dyn Probe>> = vec![
            Arc::new(PluginsProbe(host.clone())),
            Arc::new(JetStreamProbe(jetstream.clone())),
        ];
        let routes = cfm_manager::api::probe_routes(probes);
        // Runs for the life of the process; a probe server that fails leaves the
        // kubelet's probes failing, which is what should happen.
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, routes).await {
                tracing::error!("the probe and metrics listener stopped: {e}");
            }
        });
    }
    let queue: Arc<dyn Queue> = jetstream;
    let worker = agent_worker(queue, host.clone(), &args.host, &args.nats);
    let mut work = AgentWork::start(worker, Duration::from_secs(args.host.shutdown_grace_secs));
    // Scripts and tests read this line.
    println!(
        "cfm agent running activity types {}",
        cfm_protocol::ActivityExecutor::activity_types(host.as_ref()).join(", ")
    );
    tokio::select! {
        outcome = &mut work.task => {
            outcome??;
            bail!("the agent worker stopped unexpectedly");
        }
        _ = shutdown() => work.drain().await,
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

/// Serves the API until a shutdown signal, then lets it answer its requests while this
/// process's agent worker drains; or fails when background work stops.
async fn serve_api(
    manager: &Manager,
    args: &ApiArgs,
    mut background: Background,
    probes: Vec<Arc<dyn Probe>>,
    readings: Vec<Arc<dyn Reading>>,
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
    // The signal starts both halves of the stop at once: the API answers what it was
    // asked, and the agent worker lets its running activities report.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown().await;
        let _ = stop.send(true);
    });
    let api = axum::serve(listener, manager.router_with(probes, readings))
        .with_graceful_shutdown(stopped(stopping.clone()));
    let mut api = tokio::spawn(async move { api.await });
    {
        let engine = async {
            match &mut background.engine {
                Some(task) => task.await,
                None => std::future::pending().await,
            }
        };
        let agent = async {
            match &mut background.agent {
                Some(agent) => (&mut agent.task).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // The stop first: the API's graceful shutdown follows it, and once both are
            // ready an unbiased select could take the API's end for a failure.
            biased;
            () = stopped(stopping) => {}
            served = &mut api => {
                served??;
                bail!("the API server stopped unexpectedly");
            }
            outcome = engine => {
                outcome??;
                bail!("background work stopped unexpectedly");
            }
            outcome = agent => {
                outcome??;
                bail!("the agent worker stopped unexpectedly");
            }
        }
    }
    let drained = async {
        if let Some(agent) = background.agent {
            agent.drain().await;
        }
    };
    let answered = async {
        match tokio::time::timeout(API_GRACE, &mut api).await {
            Ok(served) => served?.map_err(anyhow::Error::from),
            Err(_) => {
                tracing::warn!("requests still open after {API_GRACE:?} are cut");
                api.abort();
                Ok(())
            }
        }
    };
    let ((), served) = tokio::join!(drained, answered);
    // What the agents reported was applied by now, or waits in the queue.
    if let Some(engine) = background.engine {
        engine.abort();
    }
    fleet.abort();
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// How long the API may take to answer the requests it has when the process stops.
const API_GRACE: Duration = Duration::from_secs(20);

/// Resolves once `stopping` says so (or its sender is gone).
async fn stopped(mut stopping: tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
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
