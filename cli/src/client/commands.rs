//! The resource commands (`cfm tenants list`, `cfm participants onboard --wait`, ...):
//! their flags, and the API calls each makes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::context::Contexts;
use super::operations;
use super::output::{self, Column, Format, key_values, orchestration_state, text};
use super::watch::{self, Goal};
use super::{Client, ClientError, DEFAULT_API, Result, dag, read_token};

/// Which cfm to talk to and how to print its answers; every client command takes these.
#[derive(Args)]
pub(crate) struct ConnectionArgs {
    /// The cfm server's address, e.g. `http://127.0.0.1:8080`. Default: the `--context`
    /// named, else `CFM_API`, else the current context's, else `http://127.0.0.1:8080`.
    #[arg(long, global = true)]
    api: Option<String>,
    /// A file holding the API token. Default: the `--context` named, else
    /// `CFM_TOKEN_FILE`, else `CFM_TOKEN` (the token itself), else the current context's,
    /// else `cfm-data/admin.token` when talking to the default local address.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// The context to use instead of the current one (`cfm context list`); it wins over
    /// `CFM_API` and `CFM_TOKEN_FILE`, so a variable left set never redirects it.
    #[arg(long, global = true, env = "CFM_CONTEXT")]
    context: Option<String>,
    /// How answers are printed.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
}

/// A client command over one kind of resource.
#[derive(Args)]
pub(crate) struct Resource<C: Subcommand> {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: C,
}

/// Paging of lists and queries.
#[derive(Args)]
pub(crate) struct Paging {
    /// How many to show.
    #[arg(long, default_value_t = 100)]
    pub(super) limit: u64,
    /// How many to skip.
    #[arg(long, default_value_t = 0)]
    pub(super) offset: u64,
}

/// A JSON request body from a file (`-` reads standard input), as the API takes it.
#[derive(Args)]
pub(crate) struct BodyFile {
    /// Send this file's JSON as the request body (`-` for standard input); flags given
    /// too are set on top of it.
    #[arg(short = 'f', long = "filename")]
    file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum TenantCommand {
    /// List tenants, by id.
    List(Paging),
    /// Show one tenant.
    Get { id: String },
    /// Create a tenant.
    Create {
        /// Its `name` property.
        #[arg(long)]
        name: Option<String>,
        /// A property, `key=value` (a JSON value or text); repeat for more.
        #[arg(long = "property", value_name = "KEY=VALUE")]
        properties: Vec<String>,
        #[command(flatten)]
        body: BodyFile,
    },
    /// Delete a tenant whose participants are disposed; `--cascade` decommissions it.
    Delete {
        id: String,
        /// Dispose its participants first, then delete it (202: it runs on in cfm).
        #[arg(long)]
        cascade: bool,
    },
    /// Find tenants by predicate, e.g. `properties.name LIKE 'Acme%'`.
    Query {
        predicate: String,
        #[command(flatten)]
        paging: Paging,
    },
}

#[derive(Subcommand)]
pub(crate) enum ParticipantCommand {
    /// List participants: of one tenant, or every one the token may see.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one participant.
    Get {
        id: String,
        /// Its tenant (found from the id when left out).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Onboard a participant: place it in a cell and provision it.
    Onboard {
        /// The tenant it belongs to.
        #[arg(long)]
        tenant: String,
        /// Its DID, e.g. `did:web:consumer.example`.
        #[arg(long)]
        did: String,
        /// The cell to place it in (id or external id); default: placement chooses.
        #[arg(long)]
        cell: Option<String>,
        /// A dataspace profile it joins; repeat for more.
        #[arg(long = "dataspace")]
        dataspaces: Vec<String>,
        /// A profile property, `key=value`; repeat for more.
        #[arg(long = "property", value_name = "KEY=VALUE")]
        properties: Vec<String>,
        #[command(flatten)]
        body: BodyFile,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Decommission a participant: its dispose template undoes what its deploy did.
    Delete {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Deploy a participant in `error` again from the step that failed.
    Retry {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Check a participant's effects against what provisioning made, changing nothing;
    /// with `--wait`, exit 1 when it drifted.
    Verify {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Verify, then re-apply what drifted.
    Reconcile {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change a participant's VPA properties (its runtime's replicas, say); an update
    /// orchestration applies them.
    Scale {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        /// The VPA type whose properties change, e.g. `cfm.connector`.
        #[arg(long)]
        vpa: String,
        /// A property to set, `key=value` (JSON values such as numbers are kept); repeat.
        #[arg(
            long = "set",
            value_name = "KEY=VALUE",
            required_unless_present = "unset"
        )]
        set: Vec<String>,
        /// A property to remove; repeat for more.
        #[arg(long = "unset", value_name = "KEY")]
        unset: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// A participant's orchestrations, newest first.
    History {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// What a participant's plugins did through their capabilities, newest first: every
    /// write, refusal and outbound request (reads of secrets, cluster objects and DNS are
    /// not recorded).
    Calls {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        /// Only the calls refused: outside the plugin's grants, or malformed.
        #[arg(long)]
        denied: bool,
        #[command(flatten)]
        paging: Paging,
    },
    /// Move a participant to another cell, make-before-break: it stays active throughout.
    Migrate {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        /// The cell to move to (id or external id).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// A participant's migrations, newest first.
    Migrations {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Find participants by predicate, e.g. `vpas.state = 'error'`.
    Query {
        predicate: String,
        #[command(flatten)]
        paging: Paging,
    },
}

/// Following what a command started until it ends.
#[derive(Args)]
pub(crate) struct WaitArgs {
    /// Follow it with live progress until it ends; exit non-zero, saying why, when it
    /// ends other than completed.
    #[arg(long)]
    pub(super) wait: bool,
    /// Give up waiting after this many seconds (the work goes on).
    #[arg(long, default_value_t = 600, requires = "wait")]
    timeout: u64,
}

impl WaitArgs {
    pub(super) fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

#[derive(Subcommand)]
pub(crate) enum CellCommand {
    /// List cells with their use against capacity.
    List(Paging),
    /// Show one cell, by id or external id.
    Get { id: String },
    /// Create a cell.
    Create {
        /// Its external id, e.g. `cell-eu-1`.
        external_id: Option<String>,
        /// A label placement can require, `key=value`; repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// A property, `key=value`; repeat for more.
        #[arg(long = "property", value_name = "KEY=VALUE")]
        properties: Vec<String>,
        /// How many participants it takes at most.
        #[arg(long)]
        capacity: Option<u64>,
        /// Its state (default `active`).
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        body: BodyFile,
    },
    /// Delete a cell whose participants are disposed, by id or external id.
    Delete { id: String },
    /// Place no new participants in a cell (its participants stay); by id or external id.
    Cordon { id: String },
    /// Place participants in a cordoned cell again.
    Uncordon { id: String },
}

#[derive(Subcommand)]
pub(crate) enum DataspaceCommand {
    /// List dataspace profiles.
    List(Paging),
    /// Show one dataspace profile.
    Get { id: String },
    /// Create a dataspace profile.
    Create {
        /// A protocol of its stack, e.g. `dsp-2025-1`; repeat for more.
        #[arg(long = "protocol")]
        protocols: Vec<String>,
        /// A credential spec, `id=membership,type=MembershipCredential,issuer=did:web:issuer.example,format=vc20-bssl/jwt`;
        /// repeat for more.
        #[arg(long = "credential", value_name = "KEY=VALUE,...")]
        credentials: Vec<String>,
        #[command(flatten)]
        body: BodyFile,
    },
    /// Delete a dataspace profile no live participant belongs to.
    Delete { id: String },
    /// Deploy a dataspace profile to a cell, so participants of it can be placed there.
    Deploy {
        id: String,
        /// The cell (id or external id).
        #[arg(long)]
        cell: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum OrchestrationCommand {
    /// List orchestrations (by id); `--predicate` narrows them.
    List {
        /// e.g. `state = 3` (errored) or `orchestrationType = 'cfm.orchestration.vpa.deploy'`.
        #[arg(long, default_value = "true")]
        predicate: String,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show an orchestration: its activities drawn as a graph, each with its state,
    /// attempts, duration and error.
    #[command(visible_alias = "get")]
    Show { id: String },
    /// Cancel a running orchestration; it compensates as a failure does.
    Cancel { id: String },
    /// Find orchestrations by predicate.
    Query {
        predicate: String,
        #[command(flatten)]
        paging: Paging,
    },
}

#[derive(Subcommand)]
pub(crate) enum DefinitionCommand {
    /// List orchestration definitions (templates), all of them.
    List,
    /// Show a definition: each orchestration type's activities as a graph.
    Get {
        id: String,
        /// A version other than the newest.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Create a definition from a file, or its next version with `--new-version-of`.
    Create {
        #[command(flatten)]
        body: BodyFile,
        /// Add the file's activities as the next version of this definition.
        #[arg(long)]
        new_version_of: Option<String>,
    },
    /// Delete a definition.
    Delete { id: String },
    /// List the activity types definitions may use, all of them.
    Activities,
}

/// A resource's commands, each run against one cfm.
pub(crate) trait Commands: Subcommand {
    async fn run(self, s: &Session) -> Result<()>;
}

impl<C: Commands> Resource<C> {
    /// Runs the command against the cfm its connection names.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let session = self.connection.session()?;
        Ok(self.command.run(&session).await?)
    }
}

/// A client and the output format chosen.
pub(crate) struct Session {
    pub(super) client: Client,
    pub(super) format: Format,
}

impl Session {
    /// Prints a page of a list route.
    pub(super) async fn list(&self, path: &str, columns: &[Column], paging: &Paging) -> Result<()> {
        let page = self
            .client
            .page(Method::GET, &paging.list(path), None)
            .await?;
        output::many(self.format, columns, &page, Some(paging))
    }

    /// Prints what a route that does not page answers: all of it.
    async fn all(&self, path: &str, columns: &[Column]) -> Result<()> {
        let page = self.client.page(Method::GET, path, None).await?;
        output::many(self.format, columns, &page, None)
    }

    /// Prints a page of what a `/query` route matches.
    async fn query(
        &self,
        path: &str,
        predicate: &str,
        columns: &[Column],
        paging: &Paging,
    ) -> Result<()> {
        let page = query(&self.client, path, predicate, paging).await?;
        output::many(self.format, columns, &page, Some(paging))
    }

    /// Prints one resource.
    pub(super) async fn show(&self, path: &str, columns: &[Column]) -> Result<()> {
        let value: Value = self.client.get(path).await?;
        output::one(self.format, columns, &value)
    }
}

impl ConnectionArgs {
    /// Flags and environment first, then the context, then the local defaults.
    fn session(&self) -> Result<Session> {
        let (api, token) = self.resolve()?;
        Ok(Session {
            client: Client::new(&api, token)?,
            format: self.output,
        })
    }

    /// Where to and with which token: flags, then a context named explicitly, then the
    /// environment, then the current context, then the local `cfm serve`.
    fn resolve(&self) -> Result<(String, String)> {
        let (contexts, _) = Contexts::load()?;
        let named = contexts.resolve(self.context.as_deref())?;
        let (named, current) = match self.context {
            Some(_) => (named, None),
            None => (None, named),
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let api = self
            .api
            .clone()
            .or_else(|| named.map(|c| c.api.clone()))
            .or_else(|| env("CFM_API"))
            .or_else(|| current.map(|c| c.api.clone()))
            .unwrap_or_else(|| DEFAULT_API.to_string());
        let file = self
            .token_file
            .clone()
            .or_else(|| named.and_then(|c| c.token_file.clone()))
            .or_else(|| env("CFM_TOKEN_FILE").map(PathBuf::from));
        if let Some(file) = file {
            return Ok((api, read_token(&file)?));
        }
        if let Some(token) = env("CFM_TOKEN") {
            return Ok((api, token.trim().to_string()));
        }
        if let Some(file) = current.and_then(|c| c.token_file.clone()) {
            return Ok((api, read_token(&file)?));
        }
        // The admin token of a `cfm serve` run here goes to that server only.
        let local = std::path::Path::new("cfm-data").join(cfm_manager::auth::TOKEN_FILE);
        if api.trim_end_matches('/') == DEFAULT_API && local.exists() {
            return Ok((api, read_token(&local)?));
        }
        Err(ClientError::NoToken)
    }
}

const TENANT_COLUMNS: &[Column] = &[
    ("ID", |v| text(v, "id")),
    ("NAME", |v| text(v, "properties.name")),
    ("VERSION", |v| text(v, "version")),
];

impl Commands for TenantCommand {
    async fn run(self, s: &Session) -> Result<()> {
        let c = &s.client;
        match self {
            TenantCommand::List(p) => s.list("/tenants", TENANT_COLUMNS, &p).await,
            TenantCommand::Get { id } => {
                s.show(&format!("/tenants/{}", segment(&id)), TENANT_COLUMNS)
                    .await
            }
            TenantCommand::Create {
                name,
                properties,
                body,
            } => {
                let mut body = body.read()?;
                let mut props = key_values(&properties)?;
                if let Some(name) = name {
                    props.insert("name".into(), name.into());
                }
                merge(&mut body, "properties", props);
                let tenant = c.post("/tenants", &Value::Object(body)).await?;
                output::one(s.format, TENANT_COLUMNS, &tenant)
            }
            TenantCommand::Delete { id, cascade } => {
                let path = format!(
                    "/tenants/{}{}",
                    segment(&id),
                    if cascade { "?cascade=true" } else { "" }
                );
                let answer: Value = c.delete(&path).await?;
                if cascade && s.format == Format::Table {
                    eprintln!(
                        "tenant {id} is being decommissioned: `cfm tenants get {id}` until it is gone"
                    );
                    return Ok(());
                }
                deleted(s, "tenant", &id, &answer)
            }
            TenantCommand::Query { predicate, paging } => {
                s.query("/tenants/query", &predicate, TENANT_COLUMNS, &paging)
                    .await
            }
        }
    }
}

const PARTICIPANT_COLUMNS: &[Column] = &[
    ("ID", |v| text(v, "id")),
    ("TENANT", |v| text(v, "tenantId")),
    ("IDENTIFIER", |v| text(v, "identifier")),
    ("CELL", |v| {
        v.get("vpas")
            .and_then(|vpas| vpas.get(0))
            .map(|vpa| text(vpa, "cellId"))
            .unwrap_or_default()
    }),
    ("STATE", participant_state),
    ("TEMPLATE", |v| {
        match (text(v, "templateId"), text(v, "templateVersion")) {
            (id, _) if id.is_empty() => String::new(),
            (id, version) => format!("{id} v{version}"),
        }
    }),
];

/// The VPAs' state (they move together), with `error` when an orchestration failed.
fn participant_state(profile: &Value) -> String {
    let state = profile
        .get("vpas")
        .and_then(|vpas| vpas.get(0))
        .map(|vpa| text(vpa, "state"))
        .unwrap_or_default();
    let migrating = profile.get("migration").is_some_and(|m| !m.is_null());
    match (profile.get("error").and_then(Value::as_bool), migrating) {
        (Some(true), _) if state != "error" => format!("{state} (error)"),
        (_, true) => format!("{state} (migrating)"),
        _ => state,
    }
}

impl Commands for ParticipantCommand {
    async fn run(self, s: &Session) -> Result<()> {
        let c = &s.client;
        match self {
            ParticipantCommand::List { tenant, paging } => match tenant {
                Some(t) => {
                    let path = format!("/tenants/{}/participant-profiles", segment(&t));
                    s.list(&path, PARTICIPANT_COLUMNS, &paging).await
                }
                None => {
                    let path = "/participant-profiles/query";
                    s.query(path, "true", PARTICIPANT_COLUMNS, &paging).await
                }
            },
            ParticipantCommand::Get { id, tenant } => {
                let path = profile_path(c, &id, tenant).await?;
                s.show(&path, PARTICIPANT_COLUMNS).await
            }
            ParticipantCommand::Onboard {
                tenant,
                did,
                cell,
                dataspaces,
                properties,
                body,
                wait,
            } => {
                let mut body = body.read()?;
                body.insert("identifier".into(), did.into());
                if let Some(cell) = cell {
                    body.insert("cellId".into(), cell.into());
                }
                if !dataspaces.is_empty() {
                    body.insert("dataspaceProfileIds".into(), dataspaces.into());
                }
                merge(&mut body, "properties", key_values(&properties)?);
                let path = format!("/tenants/{}/participant-profiles", segment(&tenant));
                let profile: Value = c.post(&path, &Value::Object(body)).await?;
                let path = format!("{path}/{}", segment(&text(&profile, "id")));
                eprintln!(
                    "participant {} onboarding in tenant {tenant}",
                    text(&profile, "id")
                );
                follow(s, &path, profile, Goal::Deploy, &[], &wait).await
            }
            ParticipantCommand::Delete { id, tenant, wait } => {
                let path = profile_path(c, &id, tenant).await?;
                let seen = watch::orchestration_ids(c, &path).await?;
                let profile: Value = c.delete(&path).await?;
                eprintln!("participant {id} decommissioning");
                follow(s, &path, profile, Goal::Dispose, &seen, &wait).await
            }
            ParticipantCommand::Retry { id, tenant, wait } => {
                let path = profile_path(c, &id, tenant).await?;
                let seen = watch::orchestration_ids(c, &path).await?;
                let profile: Value = c.post(&format!("{path}/retry"), &json!({})).await?;
                eprintln!("participant {id} deploying again");
                follow(s, &path, profile, Goal::Deploy, &seen, &wait).await
            }
            ParticipantCommand::Verify { id, tenant, wait } => {
                let path = profile_path(c, &id, tenant).await?;
                operations::check_drift(s, &path, "verify", &wait).await
            }
            ParticipantCommand::Reconcile { id, tenant, wait } => {
                let path = profile_path(c, &id, tenant).await?;
                operations::check_drift(s, &path, "reconcile", &wait).await
            }
            ParticipantCommand::Scale {
                id,
                tenant,
                vpa,
                set,
                unset,
                wait,
            } => {
                let path = profile_path(c, &id, tenant).await?;
                let mut change = key_values(&set)?;
                for key in unset {
                    change.insert(key, Value::Null);
                }
                operations::scale(s, &path, &vpa, change, &wait).await
            }
            ParticipantCommand::History { id, tenant, paging } => {
                let path = format!("{}/history", profile_path(c, &id, tenant).await?);
                s.list(&path, HISTORY_COLUMNS, &paging).await
            }
            ParticipantCommand::Calls {
                id,
                tenant,
                denied,
                paging,
            } => {
                let mut path = format!("{}/capability-calls", profile_path(c, &id, tenant).await?);
                if denied {
                    path.push_str("?decision=denied");
                }
                s.list(&path, CALL_COLUMNS, &paging).await
            }
            ParticipantCommand::Migrate {
                id,
                tenant,
                to,
                wait,
            } => {
                let profile = profile_path(c, &id, tenant).await?;
                let started: Value = c
                    .post(
                        &format!("{profile}/migrations"),
                        &json!({"targetCellId": to}),
                    )
                    .await?;
                eprintln!("participant {id} migrating to {to}");
                if !wait.wait {
                    return output::one(s.format, MIGRATION_COLUMNS, &started);
                }
                let migration =
                    watch::follow_migration(c, &profile, &started, wait.timeout()).await?;
                output::one(s.format, MIGRATION_COLUMNS, &migration)?;
                match text(&migration, "state").as_str() {
                    "completed" => Ok(()),
                    state => Err(ClientError::Failed(format!(
                        "migration {} {state}: {}",
                        text(&migration, "id"),
                        text(&migration, "errorDetail")
                    ))),
                }
            }
            ParticipantCommand::Migrations { id, tenant } => {
                let path = format!("{}/migrations", profile_path(c, &id, tenant).await?);
                s.all(&path, MIGRATION_COLUMNS).await
            }
            ParticipantCommand::Query { predicate, paging } => {
                s.query(
                    "/participant-profiles/query",
                    &predicate,
                    PARTICIPANT_COLUMNS,
                    &paging,
                )
                .await
            }
        }
    }
}

/// Prints the profile a command answered; with `--wait`, follows the orchestration it
/// started first, and fails when that fails.
async fn follow(
    s: &Session,
    path: &str,
    profile: Value,
    goal: Goal,
    seen: &[String],
    wait: &WaitArgs,
) -> Result<()> {
    if !wait.wait {
        return output::one(s.format, PARTICIPANT_COLUMNS, &profile);
    }
    // A template without a dispose has nothing to run: the answer is already final.
    if goal.settled(&profile) {
        eprintln!(
            "nothing to follow: no {} orchestration was needed",
            goal.name()
        );
        return output::one(s.format, PARTICIPANT_COLUMNS, &profile);
    }
    watch::follow(&s.client, path, goal, seen, wait.timeout()).await?;
    let profile = s.client.get(path).await?;
    output::one(s.format, PARTICIPANT_COLUMNS, &profile)
}

const MIGRATION_COLUMNS: &[Column] = &[
    ("ID", |v| text(v, "id")),
    ("STATE", |v| text(v, "state")),
    ("FROM", |v| text(v, "sourceCellId")),
    ("TO", |v| text(v, "targetCellId")),
    ("DRAIN", |v| text(v, "drainId")),
    ("STARTED", |v| text(v, "createdAt")),
    ("ERROR", |v| text(v, "errorDetail")),
];

const CALL_COLUMNS: &[Column] = &[
    ("TIME", |v| text(v, "at")),
    ("PLUGIN", |v| text(v, "plugin")),
    ("CALL", |v| {
        format!("{} {}", text(v, "capability"), text(v, "operation"))
    }),
    ("TARGET", |v| text(v, "target")),
    // Refusals in capitals, so they stand out in a column of effects.
    ("RESULT", |v| match text(v, "decision").as_str() {
        "denied" => "DENIED".into(),
        _ if v["dryRun"] == true => format!("{} (dry run)", text(v, "effect")),
        _ => text(v, "effect"),
    }),
    ("ACTIVITY", |v| {
        format!("{} #{}", text(v, "activityId"), text(v, "attempt"))
    }),
];

const HISTORY_COLUMNS: &[Column] = &[
    ("ORCHESTRATION", |v| text(v, "orchestrationId")),
    ("TYPE", |v| short_type(&text(v, "orchestrationType"))),
    ("STATE", orchestration_state),
    ("DEFINITION", |v| {
        format!(
            "{} v{}",
            text(v, "definitionId"),
            text(v, "definitionVersion")
        )
    }),
    ("STARTED", |v| text(v, "createdTimestamp")),
    ("ERROR", |v| text(v, "errorDetail")),
];

const CELL_COLUMNS: &[Column] = &[
    ("ID", |v| text(v, "id")),
    ("EXTERNAL ID", |v| text(v, "externalId")),
    ("STATE", |v| text(v, "state")),
    ("PARTICIPANTS", |v| {
        match text(v, "capacity.maxParticipants") {
            max if max.is_empty() => text(v, "usage.participants"),
            max => format!("{}/{max}", text(v, "usage.participants")),
        }
    }),
    ("LABELS", |v| {
        v.get("labels")
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}",
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    }),
];

impl Commands for CellCommand {
    async fn run(self, s: &Session) -> Result<()> {
        let c = &s.client;
        match self {
            CellCommand::List(p) => s.list("/cells", CELL_COLUMNS, &p).await,
            CellCommand::Get { id } => {
                let id = operations::cell_id(s, &id).await?;
                s.show(&format!("/cells/{}", segment(&id)), CELL_COLUMNS)
                    .await
            }
            CellCommand::Create {
                external_id,
                labels,
                properties,
                capacity,
                state,
                body,
            } => {
                let mut body = body.read()?;
                if let Some(external_id) = external_id {
                    body.insert("externalId".into(), external_id.into());
                }
                if let Some(state) = state {
                    body.insert("state".into(), state.into());
                }
                if let Some(max) = capacity {
                    body.insert("capacity".into(), json!({"maxParticipants": max}));
                }
                merge(&mut body, "labels", key_values(&labels)?);
                merge(&mut body, "properties", key_values(&properties)?);
                let cell = c.post("/cells", &Value::Object(body)).await?;
                output::one(s.format, CELL_COLUMNS, &cell)
            }
            CellCommand::Cordon { id } => set_cell_state(s, &id, "cordoned").await,
            CellCommand::Uncordon { id } => set_cell_state(s, &id, "active").await,
            CellCommand::Delete { id: named } => {
                let id = operations::cell_id(s, &named).await?;
                let answer: Value = c.delete(&format!("/cells/{}", segment(&id))).await?;
                deleted(s, "cell", &named, &answer)
            }
        }
    }
}

/// Sets the state of the cell named by id or external id; prints it.
async fn set_cell_state(s: &Session, named: &str, state: &str) -> Result<()> {
    let id = operations::cell_id(s, named).await?;
    let cell: Value = s
        .client
        .patch(
            &format!("/cells/{}", segment(&id)),
            &json!({"state": state}),
        )
        .await?;
    output::one(s.format, CELL_COLUMNS, &cell)
}

const DATASPACE_COLUMNS: &[Column] = &[
    ("ID", |v| text(v, "id")),
    ("PROTOCOLS", |v| {
        strings(v.pointer("/dataspaceSpec/protocolStack"), |p| {
            p.as_str().map(str::to_string)
        })
    }),
    ("CREDENTIALS", |v| {
        strings(v.pointer("/dataspaceSpec/credentialSpecs"), |c| {
            c.get("type").and_then(Value::as_str).map(str::to_string)
        })
    }),
    ("CELLS", |v| {
        strings(v.get("deployments"), |d| {
            d.get("cellId").and_then(Value::as_str).map(str::to_string)
        })
    }),
];

impl Commands for DataspaceCommand {
    async fn run(self, s: &Session) -> Result<()> {
        let c = &s.client;
        match self {
            DataspaceCommand::List(p) => s.list("/dataspace-profiles", DATASPACE_COLUMNS, &p).await,
            DataspaceCommand::Get { id } => {
                let path = format!("/dataspace-profiles/{}", segment(&id));
                s.show(&path, DATASPACE_COLUMNS).await
            }
            DataspaceCommand::Create {
                protocols,
                credentials,
                body,
            } => {
                let mut body = body.read()?;
                let mut spec = match body.remove("dataspaceSpec") {
                    Some(Value::Object(spec)) => spec,
                    _ => Map::new(),
                };
                if !protocols.is_empty() {
                    spec.insert("protocolStack".into(), protocols.into());
                }
                if !credentials.is_empty() {
                    let specs = credentials
                        .iter()
                        .map(|c| credential_spec(c).map(Value::Object))
                        .collect::<Result<Vec<_>>>()?;
                    spec.insert("credentialSpecs".into(), specs.into());
                }
                body.insert("dataspaceSpec".into(), Value::Object(spec));
                let profile = c.post("/dataspace-profiles", &Value::Object(body)).await?;
                output::one(s.format, DATASPACE_COLUMNS, &profile)
            }
            DataspaceCommand::Delete { id } => {
                let answer: Value = c
                    .delete(&format!("/dataspace-profiles/{}", segment(&id)))
                    .await?;
                deleted(s, "dataspace profile", &id, &answer)
            }
            DataspaceCommand::Deploy { id, cell } => {
                let path = format!("/dataspace-profiles/{}/deployments", segment(&id));
                let answer: Value = c
                    .post(&path, &json!({"profileId": id, "cellId": cell}))
                    .await?;
                if s.format == Format::Table {
                    eprintln!("dataspace profile {id} deployed to cell {cell}");
                    Ok(())
                } else {
                    output::document(s.format, &answer)
                }
            }
        }
    }
}

const ORCHESTRATION_COLUMNS: &[Column] = &[
    ("ID", |v| text(v, "id")),
    ("TYPE", |v| short_type(&text(v, "orchestrationType"))),
    ("STATE", orchestration_state),
    ("DEFINITION", |v| {
        format!(
            "{} v{}",
            text(v, "definitionId"),
            text(v, "definitionVersion")
        )
    }),
    ("CORRELATION", |v| text(v, "correlationId")),
    ("STARTED", |v| text(v, "createdTimestamp")),
];

impl Commands for OrchestrationCommand {
    async fn run(self, s: &Session) -> Result<()> {
        let c = &s.client;
        match self {
            OrchestrationCommand::List { predicate, paging }
            | OrchestrationCommand::Query { predicate, paging } => {
                s.query(
                    "/orchestrations/query",
                    &predicate,
                    ORCHESTRATION_COLUMNS,
                    &paging,
                )
                .await
            }
            OrchestrationCommand::Show { id } => {
                let orchestration: Value =
                    c.get(&format!("/orchestrations/{}", segment(&id))).await?;
                match s.format {
                    Format::Table => {
                        let parsed =
                            serde_json::from_value(orchestration).map_err(|e| c.malformed(e))?;
                        print!("{}", dag::orchestration(&parsed, output::colour()));
                        Ok(())
                    }
                    _ => output::document(s.format, &orchestration),
                }
            }
            OrchestrationCommand::Cancel { id } => {
                let orchestration = c
                    .post(
                        &format!("/orchestrations/{}/cancel", segment(&id)),
                        &json!({}),
                    )
                    .await?;
                output::one(s.format, ORCHESTRATION_COLUMNS, &orchestration)
            }
        }
    }
}

const DEFINITION_COLUMNS: &[Column] = &[
    ("ID", |v| text(v, "id")),
    ("VERSION", |v| text(v, "version")),
    ("TYPES", |v| {
        v.get("activities")
            .and_then(Value::as_object)
            .map(|types| {
                types
                    .keys()
                    .map(|t| short_type(t))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    }),
    ("DESCRIPTION", |v| text(v, "description")),
];

const ACTIVITY_COLUMNS: &[Column] = &[
    ("TYPE", |v| text(v, "type")),
    ("DESCRIPTION", |v| text(v, "description")),
];

impl Commands for DefinitionCommand {
    async fn run(self, s: &Session) -> Result<()> {
        let c = &s.client;
        match self {
            DefinitionCommand::List => {
                s.all("/orchestration-definitions", DEFINITION_COLUMNS)
                    .await
            }
            DefinitionCommand::Get { id, version } => {
                let path = match version {
                    Some(v) => format!("/orchestration-definitions/{}/versions/{v}", segment(&id)),
                    None => format!("/orchestration-definitions/{}", segment(&id)),
                };
                let definition: Value = c.get(&path).await?;
                match s.format {
                    Format::Table => {
                        let parsed =
                            serde_json::from_value(definition).map_err(|e| c.malformed(e))?;
                        print!("{}", dag::definition(&parsed, output::colour()));
                        Ok(())
                    }
                    _ => output::document(s.format, &definition),
                }
            }
            DefinitionCommand::Create {
                body,
                new_version_of,
            } => {
                if body.file.is_none() {
                    return Err(ClientError::Usage(
                        "a definition comes from a file: -f FILE (- for standard input)".into(),
                    ));
                }
                let body = Value::Object(body.read()?);
                let path = match new_version_of {
                    Some(id) => format!("/orchestration-definitions/{}/versions", segment(&id)),
                    None => "/orchestration-definitions".to_string(),
                };
                let definition = c.post(&path, &body).await?;
                output::one(s.format, DEFINITION_COLUMNS, &definition)
            }
            DefinitionCommand::Delete { id } => {
                let answer: Value = c
                    .delete(&format!("/orchestration-definitions/{}", segment(&id)))
                    .await?;
                deleted(s, "definition", &id, &answer)
            }
            DefinitionCommand::Activities => s.all("/activity-definitions", ACTIVITY_COLUMNS).await,
        }
    }
}

impl Paging {
    fn list(&self, path: &str) -> String {
        let join = if path.contains('?') { '&' } else { '?' };
        format!("{path}{join}offset={}&limit={}", self.offset, self.limit)
    }
}

impl BodyFile {
    /// The file's JSON object, or an empty one without a file.
    pub(super) fn read(&self) -> Result<Map<String, Value>> {
        let Some(file) = &self.file else {
            return Ok(Map::new());
        };
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(file)
        }
        .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", file.display())))?;
        match serde_json::from_str(&text) {
            Ok(Value::Object(body)) => Ok(body),
            Ok(_) => Err(ClientError::Usage(format!(
                "{} does not hold a JSON object",
                file.display()
            ))),
            Err(e) => Err(ClientError::Usage(format!(
                "{} is not JSON: {e}",
                file.display()
            ))),
        }
    }
}

async fn query(c: &Client, path: &str, predicate: &str, paging: &Paging) -> Result<super::Page> {
    let body = json!({"predicate": predicate, "offset": paging.offset, "limit": paging.limit});
    c.page(Method::POST, path, Some(&body)).await
}

/// The path of a participant profile; without its tenant, found by querying its id.
async fn profile_path(c: &Client, id: &str, tenant: Option<String>) -> Result<String> {
    let tenant = match tenant {
        Some(tenant) => tenant,
        None => {
            let predicate = format!("id = '{}'", id.replace('\'', "''"));
            let body = json!({"predicate": predicate, "limit": 1});
            let found = c
                .page(Method::POST, "/participant-profiles/query", Some(&body))
                .await?;
            let profile = found
                .items
                .first()
                .ok_or_else(|| ClientError::Usage(format!("no participant {id}")))?;
            text(profile, "tenantId")
        }
    };
    Ok(format!(
        "/tenants/{}/participant-profiles/{}",
        segment(&tenant),
        segment(id)
    ))
}

/// A `--credential` flag's `key=value,...` as a credential spec: every value a string,
/// as the spec's fields are (an `id=1` is the id "1", not a number).
fn credential_spec(flag: &str) -> Result<Map<String, Value>> {
    flag.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), Value::from(value))),
            _ => Err(ClientError::Usage(format!(
                "{pair:?} in --credential is not key=value"
            ))),
        })
        .collect()
}

/// Merges flags' key-value pairs into an object field of a request body.
fn merge(body: &mut Map<String, Value>, field: &str, pairs: Map<String, Value>) {
    if pairs.is_empty() {
        return;
    }
    match body
        .entry(field)
        .or_insert_with(|| Value::Object(Map::new()))
    {
        Value::Object(existing) => existing.extend(pairs),
        other => *other = Value::Object(pairs),
    }
}

fn deleted(s: &Session, kind: &str, id: &str, answer: &Value) -> Result<()> {
    match s.format {
        Format::Table => eprintln!("{kind} {id} deleted"),
        Format::Id => println!("{id}"),
        _ => return output::document(s.format, answer),
    }
    Ok(())
}

/// An id as one URL path segment: what a person types can hold `/` or `?`.
pub(super) fn segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `cfm.orchestration.vpa.deploy` → `deploy`: the part people tell orchestrations by.
pub(super) fn short_type(orchestration_type: &str) -> String {
    orchestration_type
        .strip_prefix("cfm.orchestration.vpa.")
        .or_else(|| orchestration_type.strip_prefix("cfm.orchestration."))
        .unwrap_or(orchestration_type)
        .to_string()
}

fn strings(value: Option<&Value>, pick: fn(&Value) -> Option<String>) -> String {
    value
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(pick).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_single_path_segments() {
        assert_eq!(segment("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(segment("cell-eu-1"), "cell-eu-1");
    }

    #[test]
    fn credential_values_stay_strings() {
        let spec = credential_spec("id=1,type=Membership,issuer=did:web:x").unwrap();
        assert_eq!(
            Value::Object(spec),
            json!({"id": "1", "type": "Membership", "issuer": "did:web:x"})
        );
        assert!(credential_spec("id=1,broken").is_err());
    }

    #[test]
    fn flags_merge_into_a_file_body() {
        let mut body = json!({"properties": {"a": 1}}).as_object().unwrap().clone();
        merge(
            &mut body,
            "properties",
            key_values(&["b=2".into()]).unwrap(),
        );
        assert_eq!(Value::Object(body), json!({"properties": {"a": 1, "b": 2}}));
    }
}
