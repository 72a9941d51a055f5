//! The embedded queue (the outbox table) passes the queue conformance suite on both
//! databases, as the JetStream queue does against the real server.

use std::time::Duration;

use cfm_manager::queue::{DbQueue, Signal};
use cfm_manager::testing::TestBackend;
use cfm_manager::{Manager, Options, on_both_backends};

on_both_backends!(embedded_queue_conforms);

async fn embedded_queue_conforms(backend: TestBackend) {
    let dir = tempfile::tempdir().unwrap();
    let scratch = backend.scratch().await;
    let options = Options {
        database_url: scratch.as_ref().map(|s| s.url().to_string()),
        ..Options::default()
    };
    let manager = Manager::open(dir.path(), options).await.unwrap();
    let ack_wait = Duration::from_secs(1);
    let queue = DbQueue::new(manager.engine.db().clone(), ack_wait, Signal::default());
    cfm_queue::conformance::run(&queue, ack_wait).await;
}
