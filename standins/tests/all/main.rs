//! The stand-ins' tests, as one test binary: each suite runs [`cfm_standins::EdcV`] and
//! speaks to it over HTTP as the upstream agents would, asserting what the real services
//! answer, refusals first.

// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod edc;
mod flow;
mod jwtlet;
mod siglet;
