//! The `cfm` command. `cfm serve` runs the whole management plane in one process on
//! the embedded default: SQLite, the database-backed queue and the in-process agent host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use cfm_host::runtime::HostOptions;
use cfm_host::{AgentHost, Audit, Backends, HostConfig};
use cfm_manager::{EngineSettings, Manager};
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
    /// Run tenant manager, provision manager and agent host in one process (embedded default).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Where the database, signing key, admin token and embedded backends live.
    #[arg(long, env = "CFM_DATA_DIR", default_value = "cfm-data")]
    data_dir: PathBuf,
    /// The metadata and orchestration database, e.g.
    /// `postgres://postgres@127.0.0.1:5432/cfm` (created when missing). Without it, an
    /// embedded SQLite database in the data directory.
    #[arg(long, env = "CFM_DATABASE_URL")]
    database_url: Option<String>,
    /// Address of the REST API. Loopback by default; port 0 picks a free port.
    #[arg(long, env = "CFM_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Agent-host plugin configuration (TOML). Defaults to the built-in plugins built by
    /// scripts/build-plugins.sh (`target/plugins/plugins.toml` next to this binary's folder).
    #[arg(long, env = "CFM_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Do not seed the built-in activity definitions and default template.
    #[arg(long)]
    no_seed: bool,
    /// Activities run at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Wall-clock budget of one activity attempt, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    activity_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let plugins = match args.plugins {
        Some(path) => path,
        None => default_plugins()?,
    };
    let settings = EngineSettings {
        activity_timeout_ms: args.activity_timeout_ms,
        ..EngineSettings::default()
    };
    let manager = Manager::open(&args.data_dir, args.database_url.as_deref(), settings)
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

    let config = HostConfig::load(&plugins)?;
    let audit =
        Audit::to_file(&args.data_dir.join("audit.jsonl")).context("opening the audit log")?;
    let host = AgentHost::new(
        &config,
        Backends::embedded(&args.data_dir),
        audit,
        HostOptions {
            max_concurrent_invocations: args.concurrency as u32,
            compile_cache: Some(args.data_dir.join("cache")),
        },
    )?;
    let dispatcher = tokio::spawn(manager.dispatcher(Arc::new(host), args.concurrency).run());

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    // Scripts and tests read these two lines.
    println!("cfm listening on http://{address}");
    println!("admin token: {}", manager.token_path.display());
    axum::serve(listener, manager.router())
        .with_graceful_shutdown(shutdown())
        .await?;
    dispatcher.abort();
    tracing::info!("stopped");
    Ok(())
}

/// `target/plugins/plugins.toml` beside the folder of this binary (`target/debug/cfm`).
fn default_plugins() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("plugins").join("plugins.toml"));
    match candidate {
        Some(path) if path.exists() => Ok(path),
        _ => bail!(
            "no plugin configuration: pass --plugins FILE (or set CFM_PLUGINS), or build the built-in plugins with scripts/build-plugins.sh"
        ),
    }
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
