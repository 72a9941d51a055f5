//! cfm's agent host: runs each activity as a sandboxed WebAssembly component plugin.
//!
//! A plugin is loaded from a `.wasm` file pinned by sha256, compiled once, and
//! instantiated in a fresh wasmtime `Store` for every invocation, with memory and
//! wall-clock limits. It reaches the outside world only through the capabilities its
//! configuration grants (secrets, cluster, dns, outbound HTTP), each call checked against grants scoped
//! to the participant being processed and audited. The host never touches the database:
//! it receives an `ActivityTask` and answers an `ActivityOutcome`.

pub mod audit;
pub mod capability;
pub mod config;
pub mod error;
pub mod fairness;
pub mod grants;
pub mod runtime;
pub mod signature;
#[cfg(feature = "testing")]
pub mod testing;

pub use audit::Audit;
pub use capability::Backends;
pub use config::HostConfig;
pub use error::HostError;
pub use runtime::AgentHost;

/// Host-side bindings of the plugin contract in `wit/`.
// Generated: what the WIT leaves undocumented (`change`'s cases) stays so here.
#[allow(missing_docs)]
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        world: "activity-plugin",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
    });
}
