//! A private Prometheus server scraping one target, for the metrics tests.

use crate::*;

/// Debian's `prometheus` (scripts/services.sh installs it) on a free loopback port with
/// an empty store, scraping `/metrics` of one target every second; killed on drop.
pub struct PrometheusServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `http://<target>/metrics` (`target` is `host:port`);
    /// returns once its API answers.
    pub async fn start(target: &str) -> Self {
        let store = tempfile::tempdir().unwrap();
        let config = store.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: cfm\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(store.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                store.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/services.sh installs it)");
        let server = PrometheusServer {
            child,
            port,
            _store: store,
        };
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        let started = Instant::now();
        loop {
            if let Ok(response) = reqwest::get(&ready).await
                && response.status().is_success()
            {
                return server;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "prometheus did not become ready on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The result vector of an instant query (`/api/v1/query`).
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let response: Value = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", promql)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(response["status"], "success", "{promql}: {response}");
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The one value of a query whose result is a single sample, once Prometheus has
    /// one; polls until `ready` accepts it or 30 s pass.
    pub async fn value_when(&self, promql: &str, ready: impl Fn(f64) -> bool) -> f64 {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < Duration::from_secs(30) {
            if let [sample] = self.query(promql).await.as_slice() {
                let value: f64 = sample["value"][1].as_str().unwrap().parse().unwrap();
                if ready(value) {
                    return value;
                }
                last = Some(value);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("{promql}: last value {last:?} never became what was expected")
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
