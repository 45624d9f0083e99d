//! Hot reload under live traffic: plugin swaps with zero failed requests,
//! failed reloads that change nothing, config reloads, and the compile cache.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Atomically replaces `dir/NAME.wasm` with `src`, as deploy tools do.
fn deploy(src: &Path, dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.wasm.tmp"));
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).unwrap();
}

fn tag_config(app: &Origin, admin: bool) -> String {
    let admin = if admin {
        "[admin]\nlisten = \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    format!(
        "{SERVER}{admin}[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n[[routes.plugins]]\nname = \"tag\"\n",
        app.addr
    )
}

async fn tag_of(client: &HttpClient, addr: std::net::SocketAddr) -> String {
    let r = get(client, addr, "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let tags: Vec<_> = r
        .headers
        .get_all("x-tag")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(tags.len(), 1, "exactly one tag: {tags:?}");
    tags[0].clone()
}

async fn admin_json(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    get(&h1_client(), addr, path, &[]).await.json()
}

fn plugin_status(doc: &serde_json::Value, name: &str) -> serde_json::Value {
    doc["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_load_fail_no_request() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("fixtures", "tag-a", "tag");
    let proxy = site.start(&tag_config(&app, false)).await;
    let addr = proxy.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for i in 0..6 {
        // Four HTTP/1.1 keep-alive clients and two h2c clients.
        let client = if i < 4 { h1_client() } else { h2_client() };
        let (stop, ok) = (stop.clone(), ok.clone());
        load.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = get(&client, addr, "/", &[]).await;
                let tags: Vec<_> = r
                    .headers
                    .get_all("x-tag")
                    .iter()
                    .map(|v| v.to_str().unwrap_or("?").to_string())
                    .collect();
                if r.status != 200 || tags.len() != 1 || !(tags[0] == "a" || tags[0] == "b") {
                    bad.push(format!("status {} tags {tags:?}", r.status));
                } else {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
            bad
        }));
    }

    let probe = h1_client();
    let (a, b) = (wasm("fixtures", "tag-a"), wasm("fixtures", "tag-b"));
    for swap in 0..50 {
        let (src, want) = if swap % 2 == 0 { (&b, "b") } else { (&a, "a") };
        deploy(src, &site.plugins_dir(), "tag");
        let started = Instant::now();
        // How fast a swap lands is a benchmark's business; here it must land.
        let switched = eventually(Duration::from_secs(10), || async {
            tag_of(&probe, addr).await == want
        })
        .await;
        assert!(
            switched,
            "swap {swap}: new requests carry tag {want} (waited {:?})",
            started.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let bad = task.await.unwrap();
        assert!(
            bad.is_empty(),
            "failed or mis-tagged responses during swaps: {bad:?}"
        );
    }
    assert!(ok.load(Ordering::Relaxed) > 100, "load actually ran");
    // After the last swap (to "a"), every new response carries "a".
    for _ in 0..20 {
        assert_eq!(tag_of(&probe, addr).await, "a");
    }
    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_plugin_files_never_replace_a_working_version() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("fixtures", "tag-a", "tag");
    let proxy = site.start(&tag_config(&app, true)).await;
    let (addr, admin) = (proxy.addr, proxy.admin_addr.unwrap());
    let client = h1_client();
    let version0 = plugin_status(&admin_json(admin, "/plugins").await, "tag")["version"]
        .as_u64()
        .unwrap();

    let good_b = std::fs::read(wasm("fixtures", "tag-b")).unwrap();
    let attempts: [(&str, Vec<u8>); 3] = [
        ("truncated", good_b[..good_b.len() / 2].to_vec()),
        ("garbage", b"\0asm but not really a component".to_vec()),
        (
            "wrong world",
            std::fs::read(wasm("fixtures", "wrong-world")).unwrap(),
        ),
    ];
    for (i, (what, bytes)) in attempts.iter().enumerate() {
        let tmp = site.plugins_dir().join(".tag.wasm.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, site.plugins_dir().join("tag.wasm")).unwrap();
        let failures = (i + 1) as u64;
        let reported = eventually(Duration::from_secs(3), || async {
            let metrics = get(&client, admin, "/metrics", &[]).await.text();
            metrics.contains(&format!(
                "sluice_plugin_reloads_total{{plugin=\"tag\",result=\"failed\"}} {failures}"
            ))
        })
        .await;
        assert!(reported, "{what}: the failure is counted");
        let status = plugin_status(&admin_json(admin, "/plugins").await, "tag");
        assert!(
            status["last_error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: error shown: {status}"
        );
        assert_eq!(
            status["version"].as_u64().unwrap(),
            version0,
            "{what}: version unchanged"
        );
        assert_eq!(
            tag_of(&client, addr).await,
            "a",
            "{what}: old version keeps serving"
        );
    }

    // A valid file then replaces it. The bound is generous: tag-b compiles here for the
    // first time while the other reload tests load both cores (swap latency has its own
    // test and benchmark).
    deploy(&wasm("fixtures", "tag-b"), &site.plugins_dir(), "tag");
    assert!(
        eventually(Duration::from_secs(10), || async {
            tag_of(&client, addr).await == "b"
        })
        .await,
        "a valid file replaces the plugin"
    );
    let status = plugin_status(&admin_json(admin, "/plugins").await, "tag");
    assert_eq!(status["version"].as_u64().unwrap(), version0 + 1);
    assert!(status["last_error"].is_null(), "error cleared: {status}");
    assert_eq!(status["hash"].as_str().unwrap().len(), 64);
    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_used_plugin_keeps_the_last_good_version() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("fixtures", "tag-b", "tag");
    let proxy = site.start(&tag_config(&app, true)).await;
    let (addr, admin) = (proxy.addr, proxy.admin_addr.unwrap());
    std::fs::remove_file(site.plugins_dir().join("tag.wasm")).unwrap();
    let warned = eventually(Duration::from_secs(3), || async {
        let status = plugin_status(&admin_json(admin, "/plugins").await, "tag");
        status["file_present"] == false
            && status["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("keeps serving"))
    })
    .await;
    assert!(warned, "removal is reported");
    assert_eq!(tag_of(&h1_client(), addr).await, "b");
    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_plugins_directory_is_watched_again() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("fixtures", "tag-a", "tag");
    let proxy = site.start(&tag_config(&app, false)).await;
    let client = h1_client();
    assert_eq!(tag_of(&client, proxy.addr).await, "a");
    // A deploy that replaces the whole directory: the old watch dies with it.
    let dir = site.plugins_dir();
    std::fs::remove_dir_all(&dir).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        tag_of(&client, proxy.addr).await,
        "a",
        "last good version serves"
    );
    std::fs::create_dir(&dir).unwrap();
    deploy(&wasm("fixtures", "tag-b"), &dir, "tag");
    let swapped = eventually(Duration::from_secs(5), || async {
        tag_of(&client, proxy.addr).await == "b"
    })
    .await;
    assert!(
        swapped,
        "plugin written into the recreated directory is picked up"
    );
    // And later changes in it too.
    deploy(&wasm("fixtures", "tag-a"), &dir, "tag");
    let swapped = eventually(Duration::from_secs(5), || async {
        tag_of(&client, proxy.addr).await == "a"
    })
    .await;
    assert!(swapped, "later changes are picked up");
    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_adds_routes_and_rejects_a_broken_file() {
    let app = spawn_origin("app").await.unwrap();
    let other = spawn_origin("other").await.unwrap();
    let site = Site::new();
    let base = format!("{SERVER}[admin]\nlisten = \"127.0.0.1:0\"\n[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n", app.addr);
    let proxy = site.start(&base).await;
    let (addr, admin) = (proxy.addr, proxy.admin_addr.unwrap());
    let client = h1_client();
    assert_eq!(
        get(&client, addr, "/other/x", &[]).await.json()["server"],
        "app"
    );

    let extended = format!("{base}[upstreams.other]\nservers = [\"{}\"]\n[[routes]]\npath = \"/other/\"\nupstream = \"other\"\n", other.addr);
    let tmp = site.dir.path().join(".sluice.toml.tmp");
    std::fs::write(&tmp, &extended).unwrap();
    std::fs::rename(&tmp, site.dir.path().join("sluice.toml")).unwrap();
    let routed = eventually(Duration::from_secs(3), || async {
        get(&client, addr, "/other/x", &[]).await.json()["server"] == "other"
    })
    .await;
    assert!(routed, "the new route and upstream serve");

    std::fs::write(
        site.dir.path().join("sluice.toml"),
        extended.replace("upstream = \"other\"", "upstrem = \"other\""),
    )
    .unwrap();
    let rejected = eventually(Duration::from_secs(3), || async {
        admin_json(admin, "/plugins").await["config"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown field `upstrem`"))
    })
    .await;
    assert!(rejected, "the broken config is reported");
    assert_eq!(
        get(&client, addr, "/other/x", &[]).await.json()["server"],
        "other",
        "previous routes keep working"
    );
    assert_eq!(get(&client, addr, "/", &[]).await.json()["server"], "app");
    let metrics = get(&client, admin, "/metrics", &[]).await.text();
    assert!(
        metrics.contains("sluice_config_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );

    // A forced reload reports the broken file too.
    let forced = send(
        &client,
        http::Request::post(format!("http://{admin}/reload"))
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(forced.status, 500);
    assert!(forced.json()["config_error"]
        .as_str()
        .unwrap()
        .contains("upstrem"));
    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_unchanged_plugins_uses_the_compile_cache() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("fixtures", "tag-a", "tag");
    let first = site.start(&tag_config(&app, true)).await;
    let status = plugin_status(
        &admin_json(first.admin_addr.unwrap(), "/plugins").await,
        "tag",
    );
    assert_eq!(status["from_cache"], false, "first start compiles");
    assert!(first.shutdown().await);
    let cache_entries = || {
        let mut names: Vec<String> = std::fs::read_dir(site.dir.path().join(".sluice-cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let cached = cache_entries();
    assert_eq!(
        cached.len(),
        2,
        "the plugin and its initialized snapshot: {cached:?}"
    );
    assert!(cached.iter().any(|n| n.contains("-init-")), "{cached:?}");

    let second = site.start(&tag_config(&app, true)).await;
    let status = plugin_status(
        &admin_json(second.admin_addr.unwrap(), "/plugins").await,
        "tag",
    );
    assert_eq!(status["from_cache"], true, "restart loads from the cache");
    assert_eq!(cache_entries(), cached, "nothing recompiled on restart");
    assert_eq!(tag_of(&h1_client(), second.addr).await, "a");
    assert!(second.shutdown().await);
}
