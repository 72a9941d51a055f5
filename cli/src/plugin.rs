//! `cfm plugin`: tools for plugin authors and operators.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cfm_host::grants::Capability;
use cfm_host::runtime::signature_path;
use cfm_host::{HostError, signature};
use clap::Subcommand;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create a plugin crate that builds as is: NAME/ with Cargo.toml, src/lib.rs and the
    /// wasm32-wasip2 target selected.
    New {
        /// Lowercase letters, digits and `-`.
        name: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The plugin SDK crate (`plugins/sdk` of a cfm checkout). Default: the one beside
        /// this binary's build folder.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin crate for wasm32-wasip2 (release) and print the component's path,
    /// its sha256 and a configuration entry for it.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Create an Ed25519 signing key (hex seed, mode 0600) and print its public key, the
    /// value a configuration lists under `trusted-keys`.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a plugin: writes `<FILE>.sig` and prints the file's sha256.
    Sign {
        /// A key made by `cfm plugin keygen`.
        #[arg(long)]
        key: PathBuf,
        file: PathBuf,
    },
    /// Show a component's sha256, size, imports and exports, and the capability grants
    /// it will need.
    Inspect { file: PathBuf },
    /// Load plugins of a configuration as the agent host would (digest, signature,
    /// grants, contract) without running them; all of them unless named.
    Check {
        #[arg(long)]
        config: PathBuf,
        names: Vec<String>,
    },
    /// Check a plugin's `<FILE>.sig` against trusted public keys, as the agent host does.
    Verify {
        /// A base64 public key; repeat for more.
        #[arg(long = "trusted-key", required = true)]
        trusted_keys: Vec<String>,
        file: PathBuf,
    },
}

pub fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New { name, dir, sdk } => scaffold(&name, &dir, sdk)?,
        PluginCommand::Build { dir } => build(&dir)?,
        PluginCommand::Keygen { out } => {
            let key = signature::create_key_file(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            println!("{}", signature::encode_public_key(&key.verifying_key()));
        }
        PluginCommand::Sign { key, file } => {
            let key = signature::read_key_file(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let digest = digest(&file)?;
            let sig_path = signature_path(&file);
            std::fs::write(&sig_path, signature::sign(&key, &digest))
                .with_context(|| format!("writing {}", sig_path.display()))?;
            println!("sha256 {digest}");
            println!("signature {}", sig_path.display());
        }
        PluginCommand::Inspect { file } => {
            let inspection = inspect(&file)?;
            println!("file: {}", file.display());
            println!("sha256: {}", inspection.sha256);
            println!("size: {} bytes", inspection.size);
            println!("exports:");
            for export in &inspection.exports {
                println!("  {export}");
            }
            println!("imports:");
            for import in &inspection.imports {
                println!("  {import}");
            }
            let needs = inspection.capabilities();
            println!(
                "grants needed: {}",
                if needs.is_empty() {
                    "none".to_string()
                } else {
                    needs.join(", ")
                }
            );
        }
        PluginCommand::Check { config, names } => {
            let config = cfm_host::HostConfig::load(&config)?;
            let mut failed = 0;
            for plugin in &config.plugins {
                if !names.is_empty() && !names.contains(&plugin.name) {
                    continue;
                }
                match cfm_host::runtime::verify_plugin(&config, plugin) {
                    Ok(()) => println!("{}: ok", plugin.name),
                    Err(e) => {
                        failed += 1;
                        println!("{}: {e}", plugin.name);
                    }
                }
            }
            if let Some(missing) = names
                .iter()
                .find(|n| !config.plugins.iter().any(|p| &p.name == *n))
            {
                bail!("the configuration has no plugin named '{missing}'");
            }
            if failed > 0 {
                bail!("{failed} plugin(s) would not load");
            }
        }
        PluginCommand::Verify { trusted_keys, file } => {
            let digest = digest(&file)?;
            let sig_path = signature_path(&file);
            let signature = std::fs::read_to_string(&sig_path)
                .with_context(|| format!("reading {}", sig_path.display()))?;
            if let Err(e) = signature::verify(&trusted_keys, &digest, &signature) {
                bail!("{}: {e}", file.display());
            }
            println!(
                "{}: signed by a trusted key (sha256 {digest})",
                file.display()
            );
        }
    }
    Ok(())
}

fn digest(file: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(sha256_hex(&bytes))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a component file declares, for `cfm plugin inspect`.
struct Inspection {
    sha256: String,
    size: usize,
    imports: Vec<String>,
    exports: Vec<String>,
}

impl Inspection {
    /// The capabilities it imports (`secrets`, `cluster`, `dns`, `http`; `log` needs no
    /// grant): each needs a `[plugin.grants]` entry before the host will load it.
    fn capabilities(&self) -> Vec<&'static str> {
        let mut needed: Vec<&str> = self
            .imports
            .iter()
            .filter_map(|import| Capability::from_import(import))
            .map(Capability::as_str)
            .collect();
        needed.sort_unstable();
        needed.dedup();
        needed
    }
}

/// Reads and compiles a component file to list what it imports and exports. Errors read
/// as the host's own, since an operator sees both.
fn inspect(path: &Path) -> Result<Inspection, HostError> {
    let bytes = std::fs::read(path).map_err(|source| HostError::Io {
        what: format!("reading {}", path.display()),
        source,
    })?;
    let engine = Engine::new(&Config::new()).map_err(|e| HostError::Engine(format!("{e:#}")))?;
    let component = Component::new(&engine, &bytes).map_err(|e| HostError::Load {
        plugin: path.display().to_string(),
        message: format!("not a valid component: {e:#}"),
    })?;
    let ty = component.component_type();
    Ok(Inspection {
        sha256: sha256_hex(&bytes),
        size: bytes.len(),
        imports: ty
            .imports(&engine)
            .map(|(name, _)| name.to_string())
            .collect(),
        exports: ty
            .exports(&engine)
            .map(|(name, _)| name.to_string())
            .collect(),
    })
}

const CARGO_TOML: &str = include_str!("plugin_template/Cargo.toml.tmpl");
const CARGO_CONFIG: &str = include_str!("plugin_template/config.toml.tmpl");
const LIB_RS: &str = include_str!("plugin_template/lib.rs.tmpl");
const CONFIG_ENTRY: &str = include_str!("plugin_template/plugins.toml.tmpl");

fn scaffold(name: &str, dir: &Path, sdk: Option<PathBuf>) -> anyhow::Result<()> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "plugin name '{name}': use lowercase letters, digits and '-', starting with a letter"
        );
    }
    let sdk = match sdk {
        Some(sdk) => sdk,
        None => default_sdk()?,
    };
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("the plugin SDK at {}", sdk.display()))?;
    if !sdk.join("Cargo.toml").exists() {
        bail!("{} is not the plugin SDK crate", sdk.display());
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let type_name: String = name
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    let fill = |template: &str| {
        template
            .replace("{{crate}}", &format!("cfm-plugin-{name}"))
            .replace("{{name}}", name)
            .replace("{{type_name}}", &type_name)
            .replace("{{sdk}}", &sdk.display().to_string())
    };
    std::fs::create_dir_all(root.join("src"))?;
    std::fs::create_dir_all(root.join(".cargo"))?;
    std::fs::write(root.join("Cargo.toml"), fill(CARGO_TOML))?;
    std::fs::write(root.join(".cargo/config.toml"), fill(CARGO_CONFIG))?;
    std::fs::write(root.join("src/lib.rs"), fill(LIB_RS))?;
    println!("created {}", root.display());
    println!("build it with: cfm plugin build {}", root.display());
    Ok(())
}

fn build(dir: &Path) -> anyhow::Result<()> {
    let manifest = dir.join("Cargo.toml");
    let status = std::process::Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(&manifest)
        .status()
        .context("running cargo (is the Rust toolchain installed?)")?;
    if !status.success() {
        bail!("cargo build failed for {}", manifest.display());
    }
    let metadata = std::process::Command::new("cargo")
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .context("running cargo metadata")?;
    let metadata: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).context("reading cargo metadata")?;
    let target_dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata has no target directory")?;
    let package = metadata["packages"][0]["name"]
        .as_str()
        .context("cargo metadata names no package")?;
    let wasm = Path::new(target_dir)
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    let digest = digest(&wasm)?;
    let name = package.strip_prefix("cfm-plugin-").unwrap_or(package);
    println!("component {}", wasm.display());
    println!("sha256 {digest}");
    println!();
    print!(
        "{}",
        CONFIG_ENTRY
            .replace("{{name}}", name)
            .replace("{{wasm}}", &wasm.display().to_string())
            .replace("{{sha256}}", &digest)
    );
    Ok(())
}

/// `plugins/sdk` of the checkout this binary was built in (`target/<profile>/cfm`).
fn default_sdk() -> anyhow::Result<PathBuf> {
    let candidate =
        crate::build_dir().and_then(|target| target.parent().map(|root| root.join("plugins/sdk")));
    match candidate {
        Some(path) if path.join("Cargo.toml").exists() => Ok(path),
        _ => bail!(
            "cannot find the plugin SDK beside this binary: pass --sdk PATH (plugins/sdk of a cfm checkout)"
        ),
    }
}
