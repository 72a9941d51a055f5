//! The manager's integration tests, as one test binary: the engine against scripted
//! executors, and the embedded queue against the queue conformance suite, each on
//! SQLite and on a scratch PostgreSQL database.

// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine;
mod queue;
