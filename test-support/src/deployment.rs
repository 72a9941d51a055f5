//! Managers and agents of one distributed deployment, on the shared JetStream server.

use crate::*;

/// The JetStream server the tests use (`CFM_TEST_NATS_URL`; scripts/services.sh starts it).
pub fn nats_url() -> String {
    std::env::var("CFM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Managers and agents of one deployment, in one scratch directory.
pub struct Deployment {
    common: Vec<String>,
    /// The JetStream namespace the replicas share (`--nats-namespace`).
    pub namespace: String,
    /// The `cfm manager` replicas, in start order; each serves the API.
    pub managers: Vec<Replica>,
    /// The `cfm agent` replicas, in start order.
    pub agents: Vec<Replica>,
    // Dropped after the replicas, so their connections are gone and their logs can
    // still be shown.
    /// The PostgreSQL database the managers share.
    pub scratch: ScratchDatabase,
    dir: tempfile::TempDir,
}

impl Deployment {
    /// Starts the managers; agents come with [`Deployment::start_agents`].
    pub async fn start(nats: &str, managers: usize) -> Self {
        Self::start_with(nats, managers, &[]).await
    }

    /// The same, with `extra` flags for every manager.
    pub async fn start_with(nats: &str, managers: usize, extra: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let scratch = ScratchDatabase::create().await;
        let namespace = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let manager_dir = dir.path().join("manager");
        let mut this = Deployment {
            common: [
                "--nats-url",
                nats,
                "--nats-namespace",
                &namespace,
                "--ack-wait-secs",
                "2",
            ]
            .map(String::from)
            .to_vec(),
            namespace: namespace.clone(),
            managers: Vec::new(),
            agents: Vec::new(),
            scratch,
            dir,
        };
        for i in 0..managers {
            // One data directory: the replicas share the API signing key.
            let mut args = this.args("manager");
            args.extend(
                [
                    "--data-dir",
                    manager_dir.to_str().unwrap(),
                    "--database-url",
                    this.scratch.url(),
                ]
                .map(String::from),
            );
            args.extend(["--listen", "127.0.0.1:0", "--no-seed"].map(String::from));
            args.extend(extra.iter().cloned());
            let log = this.dir.path().join(format!("manager-{i}.log"));
            this.managers.push(Replica::start(args, log));
        }
        this
    }

    /// `dirs`: each agent's data directory (equal names share one, as agents do that
    /// share real backends).
    pub fn start_agents(&mut self, dirs: &[&str], concurrency: usize) {
        for dir in dirs {
            let mut args = self.args("agent");
            let data = self.dir.path().join(dir);
            args.extend(["--data-dir".to_string(), data.display().to_string()]);
            args.extend([
                "--plugins".to_string(),
                plugins_config().display().to_string(),
            ]);
            args.extend(["--concurrency".to_string(), concurrency.to_string()]);
            let log = self
                .dir
                .path()
                .join(format!("agent-{}.log", self.agents.len()));
            self.agents.push(Replica::start(args, log));
        }
    }

    fn args(&self, command: &str) -> Vec<String> {
        let mut args = vec![command.to_string()];
        args.extend(self.common.iter().cloned());
        args
    }

    /// An API client of the `manager`th manager, with the admin token the managers share.
    pub fn api(&self, manager: usize) -> Api {
        self.managers[manager].client(&self.dir.path().join("manager"))
    }

    /// The data directory of the agents started with `name` (see
    /// [`Deployment::start_agents`]).
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A bench's list of sizes: the comma-separated numbers in the environment variable
/// `name`, or in `default` when it is not set.
pub fn sizes_from_env(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The `p`th percentile (0–100) of `samples`; zero when there are none.
pub fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// The mean of `samples` leaving out stalls: those over three times the median. Zero when
/// there are none. Unlike the median, it moves in steps finer than its samples' own (times
/// read off millisecond timestamps, say, which a median leaves on a whole millisecond).
pub fn mean_without_stalls(samples: &[Duration]) -> Duration {
    let limit = percentile(samples, 50) * 3;
    let kept: Vec<&Duration> = samples.iter().filter(|s| **s <= limit).collect();
    let count = u32::try_from(kept.len()).unwrap_or(u32::MAX);
    if count == 0 {
        return Duration::ZERO;
    }
    kept.into_iter().sum::<Duration>() / count
}

impl Deployment {
    /// Like [`Deployment::start_agents`], with the plugin configuration `plugins` and
    /// `extra` flags (production backends, say) for every agent.
    pub fn start_agents_with(
        &mut self,
        dirs: &[&str],
        concurrency: usize,
        plugins: &Path,
        extra: &[String],
    ) {
        for dir in dirs {
            let mut args = self.args("agent");
            let data = self.dir.path().join(dir);
            args.extend(["--data-dir".to_string(), data.display().to_string()]);
            args.extend(["--plugins".to_string(), plugins.display().to_string()]);
            args.extend(["--concurrency".to_string(), concurrency.to_string()]);
            args.extend(extra.iter().cloned());
            let log = self
                .dir
                .path()
                .join(format!("agent-{}.log", self.agents.len()));
            self.agents.push(Replica::start(args, log));
        }
    }

    /// The deployment's scratch directory (replica logs, agent data directories).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mean_without_stalls_keeps_the_steps_between_whole_milliseconds() {
        let ms = |values: &[u64]| -> Vec<Duration> {
            values.iter().map(|v| Duration::from_millis(*v)).collect()
        };
        // Three 3s and one 4 read to the millisecond: the median says 3, the mean 3.25;
        // the 40 ms stall (over three times the median) is left out.
        assert_eq!(
            mean_without_stalls(&ms(&[3, 40, 4, 3, 3])),
            Duration::from_micros(3_250)
        );
        assert_eq!(mean_without_stalls(&ms(&[7])), Duration::from_millis(7));
        assert_eq!(mean_without_stalls(&[]), Duration::ZERO);
    }
}
