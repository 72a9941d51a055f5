//! The queue's integration tests, as one test binary: the JetStream queue against the
//! real server (conformance and its own guarantees), and the agent worker over it.

// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod jetstream;
mod worker;
