//! The Provision Manager: activity and orchestration definitions, and the durable
//! engine that runs orchestrations as DAGs of activities.
//!
//! All orchestration state lives in the database. Every state change and the activity
//! messages it causes are written in one transaction (the queue table doubles as the
//! outbox), so a process killed at any point resumes exactly where it stopped.

pub mod definitions;
pub mod engine;
pub mod hooks;
pub mod manifests;
pub mod transport;

pub use engine::{CarriedStep, Engine, EngineSettings, Start};
pub use hooks::{Finished, OrchestrationHooks};
