//! What cfm's integration tests and benchmarks share: starting, killing and talking to
//! real `cfm` processes (`cfm serve`, and the `cfm manager` / `cfm agent` replicas of a
//! distributed deployment), the servers they need, and checks over what they wrote.

// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod audit;
mod backends;
mod deployment;
mod gate;
mod jetstream;
mod plugins;
mod process;
mod prometheus;
mod server;

pub use api::*;
pub use audit::*;
pub use backends::*;
pub use deployment::*;
pub use gate::*;
pub use jetstream::*;
pub use plugins::*;
pub use process::*;
pub use prometheus::*;
pub use server::*;

// What every module here works with.
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cfm_manager::testing::{ScratchDatabase, TestBackend};
use serde_json::{Value, json};

/// The `cfm` binary under test: `CFM_BIN`, or the one cargo built beside the running test
/// or bench (`target/<profile>/cfm`).
pub fn cfm_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CFM_BIN") {
        return PathBuf::from(path);
    }
    let binary = profile_dir().join("cfm");
    assert!(
        binary.exists(),
        "{} is missing: build it with cargo (tests and benches of the cfm package do)",
        binary.display()
    );
    binary
}

/// `target/<profile>` of the running test or bench, a folder above
/// `target/<profile>/deps/<test>`: what cargo built beside it, whichever `cfm` runs.
pub(crate) fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running test's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("a test binary lives in target/<profile>/deps")
        .to_path_buf()
}
