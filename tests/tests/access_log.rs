//! The access log: exactly one line per request under load in every format, and a
//! destination that cannot keep up costs log lines (counted), never requests.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn lines_in(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits (at most 10 s) until `path` holds `n` lines; returns them.
async fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = lines_in(path);
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn load(addr: std::net::SocketAddr, requests: usize, concurrency: usize) {
    let client = h1_client();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..requests).step_by(concurrency) {
                let r = get(
                    &client,
                    addr,
                    &format!("/n/{i}?q=1"),
                    &[("user-agent", "load/1")],
                )
                .await;
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_per_request_in_every_format() {
    let app = spawn_origin("app").await.unwrap();
    for format in ["combined", "common", "json"] {
        let site = Site::new();
        let log = site.plugins_dir().parent().unwrap().join("access.log");
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log_path = \"access.log\"\naccess_log_format = \"{format}\"\n\
             [upstreams.app]\nservers = [\"{}\"]\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
            app.addr
        );
        let proxy = site.start(&config).await;
        let requests = 2000;
        load(proxy.addr, requests, 32).await;
        let lines = wait_for_lines(&log, requests).await;
        assert_eq!(lines.len(), requests, "{format}: one line per request");
        let mut seen = vec![false; requests];
        for line in &lines {
            let target = match format {
                "json" => {
                    let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
                    assert_eq!(v["status"], 200, "{line}");
                    assert_eq!(v["user_agent"], "load/1", "{line}");
                    assert!(v["body_bytes"].as_u64().unwrap() > 0, "{line}");
                    v["target"].as_str().unwrap().to_owned()
                }
                _ => {
                    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
                    let request = line.split('"').nth(1).expect("quoted request");
                    let status = line.split('"').nth(2).unwrap().split_whitespace().next();
                    assert_eq!(status, Some("200"), "{line}");
                    if format == "combined" {
                        assert!(line.contains("\"load/1\""), "{line}");
                    } else {
                        assert!(!line.contains("load/1"), "common has no user agent: {line}");
                    }
                    request.split(' ').nth(1).unwrap().to_owned()
                }
            };
            let i: usize = target
                .trim_start_matches("/n/")
                .trim_end_matches("?q=1")
                .parse()
                .unwrap();
            assert!(!seen[i], "{format}: request {i} logged twice");
            seen[i] = true;
        }
        assert!(proxy.shutdown().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_log_destination_drops_lines_not_requests() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    let dir = site.plugins_dir().parent().unwrap().to_path_buf();
    let fifo = dir.join("access.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A reader that never reads: the pipe fills (64 KiB) and writes block.
    let reader = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(0o4000) // O_NONBLOCK: opening the read end must not wait for a writer
            .open(&fifo)
            .unwrap()
    };
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log_path = \"access.fifo\"\naccess_log_buffer_kib = 64\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\nservers = [\"{}\"]\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        app.addr
    );
    let proxy = site.start(&config).await;
    let started = Instant::now();
    load(proxy.addr, 3000, 32).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "requests stalled behind the log: {:?}",
        started.elapsed()
    );
    let metrics = get(&h1_client(), proxy.admin_addr.unwrap(), "/metrics", &[])
        .await
        .text();
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("sluice_access_log_dropped_lines_total "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "dropped lines are counted: {metrics}");
    // Unblock the writer so the proxy's shutdown finishes its last flush.
    let drain = std::thread::spawn(move || {
        let mut reader = reader;
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match std::io::Read::read(&mut reader, &mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    assert!(proxy.shutdown().await);
    drop(drain);
}
