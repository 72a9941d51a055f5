//! The guest-side SDK for cfm activity plugins.
//!
//! An activity plugin is a WebAssembly component implementing the
//! `cfm:plugin/activity-plugin` world (`wit/plugin.wit`). This crate generates the
//! bindings for that world once, so that every plugin shares one copy of them, and
//! adds what each plugin would otherwise repeat: dispatching on deploy versus
//! dispose, parsing the JSON settings and processing data into typed values, and
//! mapping failures onto `retry` or `fatal`.
//!
//! A plugin implements [`Plugin`] and exports it with [`export_plugin!`]:
//!
//! ```no_run
//! use cfm_plugin_sdk::{Activity, Error, NoSettings, Outcome, Plugin};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     type Settings = NoSettings;
//!
//!     fn deploy(activity: &Activity<NoSettings>) -> Result<Outcome, Error> {
//!         cfm_plugin_sdk::log::info(&format!("hello {}", activity.participant_context_id()));
//!         Outcome::complete(serde_json::json!({ "greeted": true }))
//!     }
//!
//!     fn dispose(_: &Activity<NoSettings>) -> Result<Outcome, Error> {
//!         Ok(Outcome::empty())
//!     }
//! }
//!
//! cfm_plugin_sdk::export_plugin!(Hello);
//! ```
//!
//! The capability imports are re-exported as [`secrets`], [`cluster`], [`dns`] and
//! [`tokens`], and outbound HTTP (`wasi:http`) is wrapped by [`http`]; attach
//! [`CapabilityResultExt::context`] to their results to get an [`Error`] that retries
//! when the backend is unavailable and fails the activity otherwise.

mod activity;
mod error;
pub mod http;
mod support;

/// The raw bindings generated from `wit/plugin.wit`.
///
/// Plugins normally need only the re-exports at the crate root; the module is public
/// because [`export_plugin!`] expands to paths inside it.
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "activity-plugin",
        // The export macro is expanded in each plugin crate, not here.
        pub_export_macro: true,
        default_bindings_module: "::cfm_plugin_sdk::bindings",
    });
}

pub use activity::{
    Activity, Migration, MigrationCell, MigrationPhase, NoSettings, Operation, Outcome, Plugin,
    Upgrade, Vpa, execute, keys,
};
pub use bindings::cfm::plugin::types::{
    ActivityRequest, ActivityResult, CapabilityError, Change, Reschedule,
};
pub use bindings::cfm::plugin::{cluster, dns, secrets, tokens};
pub use error::{CapabilityResultExt, Error};
pub use support::{is_dns_label, random_hex, required_secret, required_setting};

/// The secret in a participant's folder where the vault plugin leaves the runtime's access
/// credential (`{"roleId", "secretId"}`) for the k8s plugin to hand over.
pub const RUNTIME_ACCESS_SECRET: &str = "runtime-access";

/// Structured logging into the host's log. Never pass secret values.
pub mod log {
    pub use crate::bindings::cfm::plugin::log::{Level, log};

    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// Exports a [`Plugin`] implementation as the component's `activity` interface.
///
/// Use it once per plugin crate, at the crate root: `cfm_plugin_sdk::export_plugin!(MyPlugin);`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            // The generated export macro takes an identifier, so a local adapter
            // stands in for an arbitrary plugin type path.
            struct CfmPluginExport;

            impl $crate::bindings::exports::cfm::plugin::activity::Guest for CfmPluginExport {
                fn execute(request: $crate::ActivityRequest) -> $crate::ActivityResult {
                    $crate::execute::<$plugin>(request)
                }
            }

    $crate::bindings::export!(CfmPluginExport with_types_in $crate::bindings);
        };
    };
}
