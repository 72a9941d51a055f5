//! The `cfm` command. `cfm serve` runs the whole management plane in one process on
//! the embedded default: SQLite, the database-backed queue and the in-process agent host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use cfm_host::runtime::HostOptions;
use cfm_host::{AgentHost, Audit, Backends, HostConfig};
use cfm_manager::auth::AuthSettings;
use cfm_manager::{EngineSettings, Manager, Options};
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
    /// Issue an API token signed with a data directory's key (print it on stdout).
    Token(TokenArgs),
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
        Command::Token(args) => token(args),
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
    let options = Options {
        database_url: args.database_url.clone(),
        auth: AuthSettings {
            jwks: args.jwks.clone(),
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
            min_refresh: Some(std::time::Duration::from_secs(args.jwks_min_refresh_secs)),
        },
        engine: settings,
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
