//! `echo-origin [ADDR] [NAME]...`: serve the demo origin on one or more addresses.
//! With several addresses each gets its own name (`app-1`, `app-2`, ... by default).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addrs = if args.is_empty() {
        vec!["127.0.0.1:9001".to_string()]
    } else {
        args
    };
    let mut tasks = Vec::new();
    for (i, spec) in addrs.iter().enumerate() {
        // "ADDR" or "ADDR=NAME"
        let (addr, name) = match spec.split_once('=') {
            Some((a, n)) => (a.to_string(), n.to_string()),
            None => (spec.clone(), format!("origin-{}", i + 1)),
        };
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        eprintln!("echo-origin {name} listening on http://{addr}");
        tasks.push(tokio::spawn(async move {
            echo_origin::serve(listener, &name).await
        }));
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
