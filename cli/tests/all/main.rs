//! The integration tests of the `cfm` command, as one test binary: each module is a suite
//! that drives real `cfm` processes over loopback (see docs/testing.md). One binary links
//! the workspace once instead of once per suite; `cargo test -p cfm --test all chaos::`
//! runs one suite.
//!
//! They need the built-in plugins (`scripts/build-plugins.sh`) and the services
//! `scripts/services.sh` starts; the test script runs both.

// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod chaos;
mod client;
mod dashboard;
mod decommission;
mod distributed;
mod drift;
mod e2e;
mod edc_v;
mod events;
mod fleet;
mod fleet_load;
mod hostile_api;
mod nats_auth;
mod observability;
mod plugin_tools;
mod production_backends;
mod provision_api;
mod retry;
mod rollout_load;
mod rollouts;
mod scaling;
mod tenant_api;
