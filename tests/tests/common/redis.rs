//! A throwaway `redis-server` on a free loopback port: no persistence, stopped on drop.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Arguments beyond the defaults (cluster mode).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts one and waits until it answers PING (at most 10 s).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with `extra` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        // Three tries: the free port found here may be taken before redis binds it.
        for _ in 0..3 {
            let addr = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port");
            let mut server = Self {
                addr,
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
                extra: extra.iter().map(|a| a.to_string()).collect(),
            };
            if server.run() {
                return server;
            }
        }
        panic!("redis-server did not start (is it installed? scripts/test.sh installs it)");
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Starts the server on its port again (after [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        assert!(
            self.run(),
            "redis-server did not start again on {}",
            self.addr
        );
    }

    fn run(&mut self) -> bool {
        let child = Command::new(redis_bin())
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            if let Some(child) = self.child.as_mut() {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A raw PING over RESP.
    pub fn ping(&self) -> bool {
        self.command(&["PING"])
            .is_some_and(|r| r.starts_with("+PONG"))
    }

    /// Sends one command and reads one reply line (enough for simple replies).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(out.as_bytes()).ok()?;
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Kills the server (an outage as a crash would cause it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three masters of a Redis Cluster (no replicas), slots assigned and agreed.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
        let created = Command::new(tool_bin("redis-cli"))
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes.iter().all(|n| {
            n.command(&["CLUSTER", "INFO"])
                .is_some_and(|info| info.contains("cluster_state:ok"))
        }) {
            assert!(
                Instant::now() < deadline,
                "the cluster never agreed on its slots"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { nodes }
    }

    /// A seed URL: any node.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }
}

fn tool_bin(name: &str) -> PathBuf {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn redis_bin() -> PathBuf {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}
