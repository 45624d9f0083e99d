//! The `sluice` binary: `check` messages for broken configs, `--help`, and a
//! graceful drain on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Starts `sluice run --config sluice.toml` (a relative path) in the site's directory on
/// the config `toml(listen)` builds, on a free loopback port; returns once the proxy
/// accepts connections.
async fn run_binary(
    site: &Site,
    toml: impl FnOnce(&str) -> String,
) -> (std::process::Child, std::net::SocketAddr) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = site.write_config(&toml(&addr.to_string()));
    let child = Command::new(sluice_bin())
        // Relative to the config's directory, as the README runs it.
        .current_dir(path.parent().unwrap())
        .args(["run", "--config", "sluice.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "proxy did not start listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, addr)
}

/// Whether the child's standard error shows a line containing `needle` within 5 s.
async fn stderr_shows(child: &mut std::process::Child, needle: &'static str) -> bool {
    use std::io::BufRead;
    let Some(stderr) = child.stderr.take() else {
        return false;
    };
    let (found_tx, found_rx) = tokio::sync::oneshot::channel();
    // Blocking reads on a thread of their own; the thread ends when the child does.
    std::thread::spawn(move || {
        let mut found_tx = Some(found_tx);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains(needle) {
                if let Some(tx) = found_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    matches!(
        tokio::time::timeout(Duration::from_secs(5), found_rx).await,
        Ok(Ok(()))
    )
}

fn terminate(child: &std::process::Child) {
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

/// Waits (at most 10 s) for the proxy to exit.
async fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "proxy did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything the exited proxy wrote to stderr (its log).
fn stderr_of(child: &mut std::process::Child) -> String {
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    log
}

fn check(config: &std::path::Path) -> (bool, String) {
    let out = Command::new(sluice_bin())
        .arg("check")
        .arg(config)
        .output()
        .expect("run sluice check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const UPSTREAM: &str = "[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n";

#[test]
fn check_accepts_a_good_config() {
    let site = Site::new();
    site.add_plugin("plugins", "api-key", "api-key");
    let path = site.write_config(&format!(
        "{SERVER}{UPSTREAM}[[routes]]\npath = \"/\"\nupstream = \"app\"\n[[routes.plugins]]\nname = \"api-key\"\nconfig = {{ keys = [\"k\"] }}\n"
    ));
    let (ok, text) = check(&path);
    assert!(ok, "{text}");
    assert!(
        text.contains("ok (1 routes, 1 upstreams, plugins: api-key)"),
        "{text}"
    );
}

#[test]
fn check_names_an_unknown_key() {
    let site = Site::new();
    let path = site.write_config(&format!(
        "{SERVER}{UPSTREAM}[[routes]]\npath = \"/\"\nupstream = \"app\"\ntimeout = 3\n"
    ));
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(text.contains("unknown field `timeout`"), "{text}");
    assert!(text.contains("routes"), "{text}");
}

#[test]
fn check_names_an_unknown_upstream() {
    let site = Site::new();
    let path = site.write_config(&format!(
        "{SERVER}{UPSTREAM}[[routes]]\npath = \"/\"\nupstream = \"ap\"\n"
    ));
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(
        text.contains("routes[0].upstream: unknown upstream \"ap\" (defined: app)"),
        "{text}"
    );
}

fn check_plugin_error(plugin_file: Option<(&str, &str)>, config: &str) -> String {
    let site = Site::new();
    if let Some((kind, name)) = plugin_file {
        site.add_plugin(kind, name, "p");
    }
    let path = site.write_config(&format!(
        "{SERVER}{UPSTREAM}[[routes]]\nname = \"api\"\npath = \"/\"\nupstream = \"app\"\n[[routes.plugins]]\nname = \"p\"\nconfig = {config}\n"
    ));
    let (ok, text) = check(&path);
    assert!(!ok, "{text}");
    assert!(
        text.contains("plugin \"p\" on route \"api\""),
        "names plugin and route: {text}"
    );
    assert!(
        text.contains("routes[0].plugins[0]"),
        "names the key: {text}"
    );
    text
}

#[test]
fn check_names_a_missing_plugin() {
    let text = check_plugin_error(None, "{}");
    assert!(text.contains("p.wasm not found"), "{text}");
}

/// The quickstart's config, with its plugins, passes `sluice check` (what a new user runs).
#[test]
fn the_quickstart_config_checks() {
    let site = Site::new();
    for name in ["api-key", "rate-limit", "rewrite", "router"] {
        site.add_plugin("plugins", name, name);
    }
    let config = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/sluice.toml"),
    )
    .unwrap();
    let path = site.write_config(&config);
    let out = Command::new(sluice_bin())
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_rejects_garbage_plugin_file() {
    let site = Site::new();
    std::fs::write(site.plugins_dir().join("p.wasm"), b"not wasm at all").unwrap();
    let path = site.write_config(&format!(
        "{SERVER}{UPSTREAM}[[routes]]\nname = \"api\"\npath = \"/\"\nupstream = \"app\"\n[[routes.plugins]]\nname = \"p\"\n"
    ));
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(
        text.contains("is not a valid WebAssembly component"),
        "{text}"
    );
}

#[test]
fn check_rejects_wrong_world() {
    let text = check_plugin_error(Some(("fixtures", "wrong-world")), "{}");
    assert!(
        text.contains("does not implement the sluice:plugin world"),
        "{text}"
    );
}

#[test]
fn check_reports_init_rejection_with_the_plugins_message() {
    let text = check_plugin_error(Some(("fixtures", "reject-config")), "{}");
    assert!(
        text.contains("rejected its config: reject-config: this plugin refuses every config"),
        "{text}"
    );
    let text = check_plugin_error(Some(("plugins", "api-key")), "{ keys = [] }");
    assert!(text.contains("rejected its config"), "{text}");
}

#[test]
fn help_documents_every_subcommand() {
    let out = Command::new(sluice_bin()).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("run") && text.contains("check"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_works_with_a_relative_config_path() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("plugins", "api-key", "api-key");
    let config = |listen: &str, extra_route: bool| {
        let extra = if extra_route {
            "[[routes]]\npath = \"/new/\"\nupstream = \"app\"\n"
        } else {
            ""
        };
        format!(
            "[server]\nlisten = \"{listen}\"\n[upstreams.app]\nservers = [\"{}\"]\n\
             [[routes]]\npath = \"/old/\"\nupstream = \"app\"\n\
             [[routes.plugins]]\nname = \"api-key\"\nconfig = {{ keys = [\"k\"] }}\n{extra}",
            app.addr
        )
    };
    let (mut child, addr) = run_binary(&site, |listen| config(listen, false)).await;
    let client = h1_client();
    assert_eq!(get(&client, addr, "/new/x", &[]).await.status, 404);
    site.write_config(&config(&addr.to_string(), true));
    let reloaded = eventually(Duration::from_secs(5), || async {
        get(&client, addr, "/new/x", &[]).await.status == 200
    })
    .await;
    terminate(&child);
    wait_exit(&mut child).await;
    let log = stderr_of(&mut child);
    assert!(reloaded, "config reload applied; log: {log}");
    assert!(!log.contains("needs a restart"), "{log}");
}

/// One open route to `app`, access log to `access.log` next to the config.
fn logging_config(listen: &str, app: &Origin) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\naccess_log_path = \"access.log\"\n[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        app.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    let (mut child, addr) = run_binary(&site, |listen| logging_config(listen, &app)).await;
    let client = h1_client();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { get(&client, addr, "/slow?ms=1000", &[]).await }
    });
    // The signal comes once the request is in flight: it has reached the origin.
    let app_hits = app.clone();
    assert!(
        eventually(Duration::from_secs(5), move || {
            let hit = app_hits.hits() >= 1;
            async move { hit }
        })
        .await,
        "the slow request reaches the origin"
    );
    terminate(&child);

    let finished = in_flight.await.unwrap();
    assert_eq!(
        finished.status, 200,
        "in-flight request completed during the drain"
    );
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    let access = std::fs::read_to_string(site.plugins_dir().parent().unwrap().join("access.log"))
        .unwrap_or_default();
    assert!(
        access.contains("\"GET /slow?ms=1000 HTTP/1.1\" 200 "),
        "the drained request's line was written before exit: {access}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    let (mut child, addr) = run_binary(&site, |listen| logging_config(listen, &app)).await;
    let dir = site.plugins_dir().parent().unwrap().to_path_buf();
    let (log, rotated) = (dir.join("access.log"), dir.join("access.log.1"));
    let client = h1_client();
    let contains = |path: &std::path::Path, needle: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(needle)
    };
    let logged = |needle: &'static str| {
        let log = log.clone();
        eventually(Duration::from_secs(5), move || {
            let found = contains(&log, needle);
            async move { found }
        })
    };
    get(&client, addr, "/before-rotation", &[]).await;
    assert!(logged("/before-rotation").await);
    // What logrotate does: rename, then signal.
    std::fs::rename(&log, &rotated).unwrap();
    assert!(Command::new("kill")
        .args(["-USR1", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    // The proxy says when it has taken the signal; the next line goes to a new file.
    assert!(
        stderr_shows(&mut child, "SIGUSR1: reopening the access log").await,
        "the proxy takes SIGUSR1"
    );
    get(&client, addr, "/after-rotation", &[]).await;
    assert!(logged("/after-rotation").await, "new file gets new lines");
    assert!(
        !contains(&rotated, "/after-rotation"),
        "the rotated file is left alone"
    );
    terminate(&child);
    assert!(wait_exit(&mut child).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_panic_message_appears_once_in_its_failure_log_line() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("fixtures", "panic", "panic");
    let (mut child, addr) = run_binary(&site, |listen| {
        format!(
            "[server]\nlisten = \"{listen}\"\naccess_log = false\n[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nname = \"guarded\"\npath = \"/\"\nupstream = \"app\"\n  [[routes.plugins]]\n  name = \"panic\"\n",
            app.addr
        )
    })
    .await;
    let reply = get(&h1_client(), addr, "/x", &[]).await;
    assert_eq!(reply.status, 500);
    terminate(&child);
    assert!(wait_exit(&mut child).await.success());
    let log = stderr_of(&mut child);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("panic fixture: on_request always panics"))
        .collect();
    assert_eq!(lines.len(), 1, "one line carries the panic message: {log}");
    let line = lines[0];
    for part in [
        "ERROR",
        "trapped",
        "panic",
        "guarded",
        "on-request",
        "denied",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
    assert!(
        !log.contains("wasm backtrace"),
        "no backtrace at the default level: {log}"
    );
}

#[test]
fn plugins_compile_in_a_child_process_and_a_broken_one_still_gets_its_real_error() {
    let site = Site::new();
    site.add_plugin("plugins", "api-key", "api-key");
    let path = site.write_config(&format!(
        "{SERVER}{UPSTREAM}[[routes]]\nname = \"api\"\npath = \"/\"\nupstream = \"app\"\n[[routes.plugins]]\nname = \"api-key\"\nconfig = {{ keys = [\"k\"] }}\n"
    ));
    let out = Command::new(sluice_bin())
        .env("SLUICE_LOG", "sluice::plugin=debug")
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("compiled in a child process"), "{log}");

    // A file the child cannot compile is compiled again in process for its message.
    std::fs::write(site.plugins_dir().join("api-key.wasm"), b"not wasm at all").unwrap();
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(
        text.contains("is not a valid WebAssembly component"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waf_block_names_its_rules_in_the_log_and_not_in_the_response() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("plugins", "waf", "waf");
    let (mut child, addr) = run_binary(&site, |listen| {
        format!(
            "[server]\nlisten = \"{listen}\"\naccess_log = false\n[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nname = \"site\"\npath = \"/\"\nupstream = \"app\"\n  [[routes.plugins]]\n  name = \"waf\"\n",
            app.addr
        )
    })
    .await;
    let reply = get(
        &h1_client(),
        addr,
        "/search?q=1%27+UNION+SELECT+password+FROM+users--",
        &[],
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(!reply.text().contains("1001"), "{}", reply.text());
    terminate(&child);
    assert!(wait_exit(&mut child).await.success());
    let log = stderr_of(&mut child);
    let line = log
        .lines()
        .find(|l| l.contains("waf: blocked"))
        .unwrap_or_else(|| panic!("no block line: {log}"));
    for part in ["WARN", "1001", "Query:q", "127.0.0.1", "/search"] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
}
