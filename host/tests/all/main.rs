//! The agent host's integration tests, as one test binary: each module is a suite that
//! runs the host (or one of its backends) against real plugins and servers. One binary
//! links wasmtime once instead of once per suite; `cargo test -p cfm-host --test all dns::`
//! runs one suite.
//!
//! They need the built-in plugins (`scripts/build-plugins.sh`) and the services
//! `scripts/services.sh` installs (OpenBao, BIND9); the test script sets up both.

// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dns;
mod kubernetes;
mod plugins;
mod support;
mod tokens;
mod vault;
