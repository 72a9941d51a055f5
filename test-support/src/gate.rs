//! A TCP forwarder that can cut a connection, as a stopped server would.

/// A TCP forwarder on a free loopback port in front of `target`: closed, it drops new
/// connections and cuts open ones, as a stopped server would; opened again, it forwards.
pub struct Gate {
    /// The loopback port clients connect to instead of the target's.
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// Starts forwarding to `target`, open.
    pub async fn start(target: std::net::SocketAddr) -> Gate {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (gate_open, cuts) = (open.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !gate_open.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Gate {
            port,
            open,
            cut,
            task,
        }
    }

    /// The gate as an HTTP base URL, `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts every open connection and drops new ones until [`Gate::open`].
    pub fn close(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Forwards new connections again.
    pub fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}
