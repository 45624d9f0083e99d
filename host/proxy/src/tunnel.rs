//! After a `101`: the client's and the upstream's connections spliced together.

use http::uri::Authority;
use http::Response;

use super::ProxyBody;
use sluice_base::repeat_log::{self, Level};
use sluice_http::counters::EdgeCounters;
use sluice_http::protocol::upgrade::{ClientUpgrade, Upgraded, UpstreamUpgrade};
use sluice_http::server::{Activity, ConnTimeouts, TrackedIo};

/// After a `101`, splices the client and upstream connections together until either
/// side closes or no byte moves either way for `idle_timeout`.
pub(super) fn tunnel(
    client_upgrade: ClientUpgrade,
    mut response: Response<ProxyBody>,
    server: Authority,
    idle_timeout: std::time::Duration,
    counters: EdgeCounters,
) -> Response<ProxyBody> {
    let upstream = response
        .extensions_mut()
        .remove::<UpstreamUpgrade>()
        .and_then(|upgrade| upgrade.take());
    let client = client_upgrade.take();
    tokio::spawn(async move {
        let (Some(upstream), Some(client)) = (upstream, client) else {
            return;
        };
        // The client's connection comes once its `101` has been written.
        let Ok(client) = client.await else {
            tracing::debug!(target: "sluice::proxy", server = %server, "client left before its upgrade");
            return;
        };
        if let Err(e) = splice(client, upstream, idle_timeout, &counters).await {
            let kind = format!("upgrade|{server}");
            if let Some(line) = repeat_log::admit(&kind, Level::Warn, 1, || {
                format!("tunnel through {server} failed: {e}")
            }) {
                tracing::warn!(target: "sluice::proxy", server = %server, "{line}");
            }
        }
    });
    response
}

/// Carries bytes both ways between two upgraded connections (first what each side
/// read past its head, which belongs to the other) until one closes or both go
/// quiet for `idle_timeout`.
async fn splice(
    client: Upgraded,
    upstream: Upgraded,
    idle_timeout: std::time::Duration,
    counters: &EdgeCounters,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let Upgraded {
        io: client_io,
        read_ahead: from_client,
    } = client;
    let Upgraded {
        io: mut upstream_io,
        read_ahead: from_upstream,
    } = upstream;
    // Every byte either way passes the client side, so its activity is the tunnel's.
    let activity = Activity::new();
    drop(activity.begin_request());
    let mut client_io = TrackedIo::new(client_io, activity.clone());
    let limits = ConnTimeouts {
        header_read: idle_timeout,
        idle: idle_timeout,
        send: idle_timeout,
    };
    let copy = async {
        upstream_io.write_all(&from_client).await?;
        client_io.write_all(&from_upstream).await?;
        tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await
    };
    tokio::select! {
        copied = copy => copied.map(|_| ()),
        _ = activity.expired(&limits) => {
            counters.timeout("tunnel_idle");
            tracing::debug!(target: "sluice::proxy", "tunnel closed after {idle_timeout:?} idle");
            Ok(())
        }
    }
}
