//! Serving threads (`server.workers`): each has its own listening socket on the shared
//! port, and a port another proxy already serves is refused rather than shared.

mod common;

use std::time::Duration;

use common::*;

fn config(listen: &str, origin: std::net::SocketAddr, workers: usize) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\naccess_log = false\nworkers = {workers}\n\
         [upstreams.app]\nservers = [\"{origin}\"]\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_serves_its_share_of_new_connections() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    let proxy = site.start(&config("127.0.0.1:0", app.addr, 4)).await;
    // Fresh connections are spread over the four sockets by their ports: a worker that
    // did not serve would fail about a quarter of them.
    let mut requests = Vec::new();
    for i in 0..200 {
        let addr = proxy.addr;
        requests.push(tokio::spawn(async move {
            let client = h1_client();
            get(&client, addr, &format!("/n{i}"), &[("connection", "close")]).await
        }));
    }
    for request in requests {
        let reply = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("request finished")
            .expect("request task");
        assert_eq!(reply.status, 200);
    }
    assert_eq!(app.hits(), 200);
    assert!(proxy.shutdown().await, "every worker drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_another_proxy_serves_is_refused_not_shared() {
    let app = spawn_origin("app").await.unwrap();
    let first_site = Site::new();
    let first = first_site.start(&config("127.0.0.1:0", app.addr, 2)).await;
    let taken = first.addr.to_string();
    let second_site = Site::new();
    let path = second_site.write_config(&config(&taken, app.addr, 2));
    let loaded = sluice_config::Config::load(&path).expect("valid config");
    let error = match sluice::app::start(&path, loaded).await {
        Ok(_) => panic!("a second proxy joined {taken}"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains(&format!("cannot listen on {taken} (server.listen)")),
        "{error}"
    );
}
