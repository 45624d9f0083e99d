//! The floor under Sluice's idle HTTP/2 memory: hyper's HTTP/2 server with the same
//! settings Sluice gives it (a `TokioTimer`, 128 concurrent streams, a 64 KiB header
//! list), answering `hello` itself, on one current-thread runtime. Whatever an idle
//! connection holds here is hyper's and the h2 crate's, before any proxying. `idle.sh`
//! builds it and runs it after nginx and Sluice.
//!
//!   h2-floor LISTEN

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen] = args.as_slice() else {
        anyhow::bail!("usage: h2-floor LISTEN");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(128)
            .max_header_list_size(64 * 1024);
        loop {
            let (client, _) = listener.accept().await?;
            let _ = client.set_nodelay(true);
            let connection = http2.serve_connection(
                TokioIo::new(client),
                hyper::service::service_fn(|_: http::Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"hello\n",
                    ))))
                }),
            );
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    })
}
