//! Semantic checks that serde cannot express. Each error names the key path.

use std::collections::HashSet;

use super::{route_name, Config, StateBackendKind};

#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ValidationError {
    pub key: String,
    pub problem: String,
}

fn err(key: impl Into<String>, problem: impl Into<String>) -> ValidationError {
    ValidationError {
        key: key.into(),
        problem: problem.into(),
    }
}

/// Smallest buffer hyper accepts for an HTTP/1 connection.
const MIN_HEADER_BYTES: usize = 8192;

impl Config {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let s = &self.server;
        positive("server.header_read_timeout_ms", s.header_read_timeout_ms)?;
        positive("server.max_connections", s.max_connections as u64)?;
        positive("server.max_headers", s.max_headers as u64)?;
        positive("server.max_uri_bytes", s.max_uri_bytes as u64)?;
        positive(
            "server.access_log_buffer_kib",
            s.access_log_buffer_kib as u64,
        )?;
        positive("server.idle_timeout_ms", s.idle_timeout_ms)?;
        positive("server.send_timeout_ms", s.send_timeout_ms)?;
        positive(
            "server.h2_max_concurrent_streams",
            s.h2_max_concurrent_streams.into(),
        )?;
        if s.max_header_bytes < MIN_HEADER_BYTES {
            return Err(err(
                "server.max_header_bytes",
                format!("must be at least {MIN_HEADER_BYTES}"),
            ));
        }

        positive("server.tunnel_idle_timeout_ms", s.tunnel_idle_timeout_ms)?;
        positive("server.idle_release_ms", s.idle_release_ms)?;
        positive("tls.handshake_timeout_ms", self.tls.handshake_timeout_ms)?;
        match (s.tls_listen, self.certificates.is_empty()) {
            (Some(_), true) => {
                return Err(err(
                    "server.tls_listen",
                    "needs at least one [[certificates]] entry (cert and key)",
                ))
            }
            (None, false) => {
                return Err(err(
                    "certificates",
                    "set server.tls_listen to serve them (certificates without a TLS listener)",
                ))
            }
            _ => {}
        }
        if s.tls_listen == Some(s.listen) && s.listen.port() != 0 {
            return Err(err(
                "server.tls_listen",
                format!("{} is also server.listen", s.listen),
            ));
        }
        if s.https_redirect && s.tls_listen.is_none() {
            return Err(err(
                "server.https_redirect",
                "needs server.tls_listen (there is no https listener to redirect to)",
            ));
        }
        self.validate_state()?;
        positive(
            "metrics.max_series_per_metric",
            self.metrics.max_series_per_metric as u64,
        )?;
        if self.tls.client_ca.is_some() && s.tls_listen.is_none() {
            return Err(err("tls.client_ca", "needs server.tls_listen"));
        }

        let p = &self.plugins;
        positive("plugins.deadline_ms", p.deadline_ms)?;
        positive("plugins.memory_limit_mib", p.memory_limit_mib)?;
        positive("plugins.max_instances", p.max_instances.into())?;
        positive(
            "plugins.max_concurrent_calls",
            p.max_concurrent_calls.into(),
        )?;
        positive("plugins.breaker_backoff_ms", p.breaker_backoff_ms)?;
        if p.memory_budget_mib < p.memory_limit_mib {
            return Err(err(
                "plugins.memory_budget_mib",
                format!(
                    "{} MiB is less than plugins.memory_limit_mib ({} MiB): no instance could reach its cap",
                    p.memory_budget_mib, p.memory_limit_mib
                ),
            ));
        }
        positive(
            "plugins.max_requests_per_instance",
            p.max_requests_per_instance.into(),
        )?;
        if !(1..=100).contains(&p.recycle_memory_percent) {
            return Err(err("plugins.recycle_memory_percent", "must be 1 to 100"));
        }
        if p.instance_wait_ms > 60_000 {
            return Err(err("plugins.instance_wait_ms", "must be at most 60000"));
        }
        if p.memory_limit_mib > 4096 {
            return Err(err("plugins.memory_limit_mib", "must be at most 4096"));
        }
        positive("plugins.body_max_bytes", p.body_max_bytes as u64)?;
        positive("plugins.body_timeout_ms", p.body_timeout_ms)?;
        if p.password_checks > 64 {
            return Err(err("plugins.password_checks", "must be at most 64"));
        }
        if p.password_wait_ms > 60_000 {
            return Err(err("plugins.password_wait_ms", "must be at most 60000"));
        }
        if p.body_max_bytes > p.body_ceiling_bytes {
            return Err(err(
                "plugins.body_max_bytes",
                format!(
                    "{} exceeds plugins.body_ceiling_bytes ({})",
                    p.body_max_bytes, p.body_ceiling_bytes
                ),
            ));
        }
        if p.compile_cache && same_dir(&p.cache_dir, &p.dir) {
            return Err(err(
                "plugins.cache_dir",
                "must not be the plugins directory (precompiled code is trusted; plugin files are not)",
            ));
        }
        if let Some(addr) = self.admin.listen {
            if !addr.ip().is_loopback() && !self.admin.allow_remote {
                return Err(err(
                    "admin.listen",
                    format!("{addr} is not a loopback address; the admin API has no authentication (set admin.allow_remote = true to allow it)"),
                ));
            }
        }

        for (name, up) in &self.upstreams {
            let key = format!("upstreams.{name}");
            if up.servers.is_empty() {
                return Err(err(format!("{key}.servers"), "needs at least one server"));
            }
            for (i, server) in up.servers.iter().enumerate() {
                check_server_addr(&server.addr)
                    .map_err(|problem| err(format!("{key}.servers[{i}]"), problem))?;
                if !(1..=1000).contains(&server.weight) {
                    return Err(err(
                        format!("{key}.servers[{i}].weight"),
                        "must be 1 to 1000",
                    ));
                }
                if up.servers[..i].iter().any(|s| s.addr == server.addr) {
                    return Err(err(
                        format!("{key}.servers[{i}]"),
                        format!("{:?} is listed twice (use weight instead)", server.addr),
                    ));
                }
            }
            if up.servers.iter().all(|s| s.backup) {
                return Err(err(
                    format!("{key}.servers"),
                    "every server is a backup; at least one must be a primary",
                ));
            }
            check_upstream_policies(&key, up)?;
            positive(&format!("{key}.connect_timeout_ms"), up.connect_timeout_ms)?;
            positive(&format!("{key}.read_timeout_ms"), up.read_timeout_ms)?;
            positive(
                &format!("{key}.response_timeout_ms"),
                up.response_timeout_ms,
            )?;
        }

        self.validate_cache()?;
        let mut names = HashSet::new();
        let mut places = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if !names.insert(route_name(route, i)) {
                return Err(err(
                    format!("{key}.name"),
                    format!("duplicate route name {:?}", route_name(route, i)),
                ));
            }
            if !route.path.starts_with('/') {
                return Err(err(format!("{key}.path"), "must start with \"/\""));
            }
            if let Some(host) = &route.host {
                check_route_host(host).map_err(|problem| err(format!("{key}.host"), problem))?;
            }
            let place = (
                route.host.as_deref().map(str::to_ascii_lowercase),
                route.path.clone(),
            );
            if !places.insert(place) {
                return Err(err(
                    format!("{key}.path"),
                    "another route has the same host and path",
                ));
            }
            if !self.upstreams.contains_key(&route.upstream) {
                return Err(err(
                    format!("{key}.upstream"),
                    format!(
                        "unknown upstream {:?} (defined: {})",
                        route.upstream,
                        self.upstream_names()
                    ),
                ));
            }
            for (j, plugin) in route.plugins.iter().enumerate() {
                let pkey = format!("{key}.plugins[{j}]");
                check_plugin_name(&plugin.name)
                    .map_err(|problem| err(format!("{pkey}.name"), problem))?;
                if let Some(ms) = plugin.deadline_ms {
                    positive(&format!("{pkey}.deadline_ms"), ms)?;
                }
                if let Some(bytes) = plugin.body_max_bytes {
                    positive(&format!("{pkey}.body_max_bytes"), bytes as u64)?;
                }
                for (k, name) in plugin.outbound.iter().enumerate() {
                    if !self.upstreams.contains_key(name) {
                        return Err(err(
                            format!("{pkey}.outbound[{k}]"),
                            format!(
                                "unknown upstream {name:?} (defined: {})",
                                self.upstream_names()
                            ),
                        ));
                    }
                }
                let timeout_key = format!("{pkey}.outbound_timeout_ms");
                positive(&timeout_key, plugin.outbound_timeout_ms)?;
                if plugin.outbound_timeout_ms > MAX_OUTBOUND_TIMEOUT_MS {
                    return Err(err(
                        timeout_key,
                        format!("must be at most {MAX_OUTBOUND_TIMEOUT_MS} (a minute)"),
                    ));
                }
                let bytes_key = format!("{pkey}.outbound_max_bytes");
                positive(&bytes_key, plugin.outbound_max_bytes as u64)?;
                if plugin.outbound_max_bytes > p.body_ceiling_bytes {
                    return Err(err(
                        bytes_key,
                        format!(
                            "{} exceeds plugins.body_ceiling_bytes ({})",
                            plugin.outbound_max_bytes, p.body_ceiling_bytes
                        ),
                    ));
                }
                if let Some(mib) = plugin.memory_limit_mib {
                    positive(&format!("{pkey}.memory_limit_mib"), mib)?;
                    if mib > p.memory_limit_mib {
                        return Err(err(
                            format!("{pkey}.memory_limit_mib"),
                            format!(
                                "{mib} exceeds plugins.memory_limit_mib ({})",
                                p.memory_limit_mib
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_cache(&self) -> Result<(), ValidationError> {
        for (name, zone) in &self.cache.zones {
            let key = format!("cache.zones.{name}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                return Err(err(key, "a zone name is letters, digits, '-' and '_'"));
            }
            positive(&format!("{key}.max_mib"), zone.max_mib)?;
            match (&zone.disk_dir, zone.disk_max_mib) {
                (None, Some(_)) => {
                    return Err(err(format!("{key}.disk_max_mib"), "needs disk_dir"));
                }
                (Some(dir), mib) => {
                    positive(&format!("{key}.disk_max_mib"), mib.unwrap_or(1))?;
                    if same_dir(dir, &self.plugins.dir) || same_dir(dir, &self.plugins.cache_dir) {
                        return Err(err(
                            format!("{key}.disk_dir"),
                            "must not be the plugins directory or their compile cache",
                        ));
                    }
                    let shared = self.cache.zones.iter().any(|(other, z)| {
                        other != name && z.disk_dir.as_ref().is_some_and(|d| same_dir(d, dir))
                    });
                    if shared {
                        return Err(err(
                            format!("{key}.disk_dir"),
                            "another zone uses this directory",
                        ));
                    }
                }
                (None, None) => {}
            }
            if let Some(max_object) = zone.max_object_mib {
                positive(&format!("{key}.max_object_mib"), max_object)?;
                if max_object > zone.max_mib {
                    return Err(err(
                        format!("{key}.max_object_mib"),
                        format!("{max_object} exceeds max_mib ({})", zone.max_mib),
                    ));
                }
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let Some(cache) = &route.cache else { continue };
            let key = format!("routes[{i}].cache");
            if !self.cache.zones.contains_key(&cache.zone) {
                let defined: Vec<_> = self.cache.zones.keys().map(String::as_str).collect();
                return Err(err(
                    format!("{key}.zone"),
                    format!(
                        "unknown cache zone {:?} (defined in [cache.zones]: {})",
                        cache.zone,
                        if defined.is_empty() {
                            "none".to_string()
                        } else {
                            defined.join(", ")
                        }
                    ),
                ));
            }
            for (k, item) in cache.key.iter().enumerate() {
                let name = item
                    .strip_prefix("header:")
                    .or_else(|| item.strip_prefix("cookie:"));
                if !name.is_some_and(|n| {
                    !n.is_empty()
                        && n.bytes()
                            .all(|b| b.is_ascii_graphic() && !b"=;,:".contains(&b))
                }) {
                    return Err(err(
                        format!("{key}.key[{k}]"),
                        format!("{item:?} is neither \"header:NAME\" nor \"cookie:NAME\""),
                    ));
                }
            }
            positive(&format!("{key}.lock_timeout_ms"), cache.lock_timeout_ms)?;
            if cache.lock_timeout_ms > 60_000 {
                return Err(err(
                    format!("{key}.lock_timeout_ms"),
                    "must be at most 60000",
                ));
            }
        }
        Ok(())
    }

    fn validate_state(&self) -> Result<(), ValidationError> {
        let st = &self.state;
        positive("state.timeout_ms", st.timeout_ms)?;
        positive("state.max_key_bytes", st.max_key_bytes as u64)?;
        positive("state.max_value_bytes", st.max_value_bytes as u64)?;
        match st.backend {
            StateBackendKind::Memory => {
                if st.url.is_some() || st.cluster {
                    let key = if st.cluster {
                        "state.cluster"
                    } else {
                        "state.url"
                    };
                    return Err(err(
                        key,
                        "is for backend = \"redis\" (the backend is \"memory\")",
                    ));
                }
                if let Some(mib) = st.memory_max_mib {
                    positive("state.memory_max_mib", mib)?;
                }
            }
            StateBackendKind::Redis => {
                if st.memory_max_mib.is_some() {
                    return Err(err(
                        "state.memory_max_mib",
                        "is for backend = \"memory\" (Redis bounds its own memory: maxmemory)",
                    ));
                }
                let url = st.url.as_deref().ok_or_else(|| {
                    err(
                        "state.url",
                        "backend = \"redis\" needs a url (redis://host:port or rediss://host:port)",
                    )
                })?;
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(err(
                        "state.url",
                        format!("{url:?} is not a redis:// or rediss:// URL"),
                    ));
                }
                redis::Client::open(url)
                    .map_err(|e| err("state.url", format!("not a usable Redis URL: {e}")))?;
            }
        }
        Ok(())
    }

    fn upstream_names(&self) -> String {
        if self.upstreams.is_empty() {
            return "none".to_string();
        }
        self.upstreams
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Balancing, retries, health and TLS settings of one upstream.
fn check_upstream_policies(key: &str, up: &super::UpstreamConfig) -> Result<(), ValidationError> {
    use super::{Balance, UpstreamProtocol};
    match (&up.hash_key, up.balance) {
        (None, Balance::Hash) => {
            return Err(err(
                format!("{key}.hash_key"),
                "balance = \"hash\" needs a hash_key (\"ip\", \"header:NAME\" or \"cookie:NAME\")",
            ))
        }
        (Some(_), b) if b != Balance::Hash => {
            return Err(err(
                format!("{key}.hash_key"),
                "is used only with balance = \"hash\"",
            ))
        }
        (Some(k), _) => {
            let valid = k == "ip"
                || k.strip_prefix("header:")
                    .or_else(|| k.strip_prefix("cookie:"))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()));
            if !valid {
                return Err(err(
                    format!("{key}.hash_key"),
                    format!("{k:?} is not \"ip\", \"header:NAME\" or \"cookie:NAME\""),
                ));
            }
        }
        (None, _) => {}
    }
    if up.retries > 10 {
        return Err(err(format!("{key}.retries"), "must be at most 10"));
    }
    if up.retry_budget_percent > 100 {
        return Err(err(
            format!("{key}.retry_budget_percent"),
            "must be at most 100",
        ));
    }
    if let Some(bad) = up
        .retry_on_status
        .iter()
        .find(|s| !(400..=599).contains(*s))
    {
        return Err(err(
            format!("{key}.retry_on_status"),
            format!("{bad} is not a 4xx or 5xx status"),
        ));
    }
    if let Some(h) = &up.health {
        positive(&format!("{key}.health.interval_ms"), h.interval_ms)?;
        positive(&format!("{key}.health.timeout_ms"), h.timeout_ms)?;
        positive(&format!("{key}.health.healthy"), h.healthy.into())?;
        positive(&format!("{key}.health.unhealthy"), h.unhealthy.into())?;
        if !h.path.starts_with('/') {
            return Err(err(format!("{key}.health.path"), "must start with \"/\""));
        }
        if let Some(bad) = h.expected_status.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(err(
                format!("{key}.health.expected_status"),
                format!("{bad} is not an HTTP status"),
            ));
        }
    }
    if up.passive.failures > 0 {
        positive(&format!("{key}.passive.eject_ms"), up.passive.eject_ms)?;
        if up.passive.max_eject_ms < up.passive.eject_ms {
            return Err(err(
                format!("{key}.passive.max_eject_ms"),
                "must be at least passive.eject_ms",
            ));
        }
    }
    if up.protocol == UpstreamProtocol::H2 && up.tls.is_none() {
        return Err(err(
            format!("{key}.protocol"),
            "\"h2\" is HTTP/2 over TLS: add tls = { ... } (or use \"h2c\" without TLS)",
        ));
    }
    if up.protocol == UpstreamProtocol::H2c && up.tls.is_some() {
        return Err(err(
            format!("{key}.protocol"),
            "\"h2c\" is HTTP/2 without TLS; use \"h2\" with tls",
        ));
    }
    if let Some(tls) = &up.tls {
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(err(
                format!("{key}.tls"),
                "a client certificate needs both cert and key",
            ));
        }
    }
    Ok(())
}

fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Longest an outbound call may wait: a plugin holds its request (and an instance) meanwhile.
const MAX_OUTBOUND_TIMEOUT_MS: u64 = 60_000;

fn positive(key: &str, value: u64) -> Result<(), ValidationError> {
    if value == 0 {
        return Err(err(key, "must be greater than 0"));
    }
    Ok(())
}

/// `host:port` with a non-empty host and a numeric port; no scheme or path.
fn check_server_addr(addr: &str) -> Result<(), String> {
    if addr.contains("://") || addr.contains('/') {
        return Err(format!(
            "{addr:?} must be host:port, without scheme or path"
        ));
    }
    let authority: http::uri::Authority = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not a valid host:port"))?;
    if authority.port_u16().is_none() {
        return Err(format!("{addr:?} has no port (expected host:port)"));
    }
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(format!("{addr:?} is not a valid host:port"));
    }
    Ok(())
}

fn check_route_host(host: &str) -> Result<(), String> {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    let valid = !bare.is_empty()
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !bare.starts_with('.')
        && !bare.ends_with('.');
    if !valid {
        return Err(format!(
            "{host:?} is not a host name (use \"example.com\" or \"*.example.com\", without port)"
        ));
    }
    Ok(())
}

fn check_plugin_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(format!(
            "{name:?} is not a plugin name (letters, digits, '-' and '_'; the file is NAME.wasm)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, Path::new("."))
    }

    const BASE: &str =
        "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.app]\nservers = [\"127.0.0.1:9001\"]\n";

    #[test]
    fn unknown_key_is_named() {
        let e = parse(&format!(
            "{BASE}[[routes]]\nupstream = \"app\"\npth = \"/\"\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `pth`"), "{e:#}");
    }

    #[test]
    fn unknown_upstream_lists_defined_ones() {
        let e = parse(&format!("{BASE}[[routes]]\nupstream = \"nope\"\n")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("routes[0].upstream"), "{msg}");
        assert!(
            msg.contains("unknown upstream \"nope\" (defined: app)"),
            "{msg}"
        );
    }

    #[test]
    fn state_keys_of_the_other_backend_are_refused_not_ignored() {
        for (state, key) in [
            ("url = \"redis://127.0.0.1:6379\"", "state.url"),
            ("cluster = true", "state.cluster"),
            ("backend = \"redis\"", "state.url"),
            ("backend = \"redis\"\nurl = \"http://x\"", "state.url"),
            (
                "backend = \"redis\"\nurl = \"redis://h:1\"\nmemory_max_mib = 8",
                "state.memory_max_mib",
            ),
            ("max_value_bytes = 0", "state.max_value_bytes"),
        ] {
            let e = parse(&format!("{BASE}[state]\n{state}\n")).unwrap_err();
            assert!(format!("{e:#}").contains(key), "{state}: {e:#}");
        }
        assert!(parse(&format!(
            "{BASE}[state]\nbackend = \"redis\"\nurl = \"rediss://user:pw@h:6380/1\"\n"
        ))
        .is_ok());
    }

    #[test]
    fn cache_zones_and_route_tables() {
        let base = r#"
[server]
listen = "127.0.0.1:8080"
[upstreams.app]
servers = ["127.0.0.1:9000"]
[cache.zones.main]
max_mib = 64
[[routes]]
path = "/"
upstream = "app"
"#;
        let ok = parse(&format!("{base}cache = {{ zone = \"main\", key = [\"header:accept-language\", \"cookie:lang\"] }}\n")).unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.cache.zones["main"].max_object_bytes(), 8 << 20);
        let cache = ok.routes[0].cache.as_ref().unwrap();
        assert_eq!(cache.lock_timeout_ms, 5000);
        assert!(!cache.honour_client_no_cache);

        let fails = |text: &str| format!("{:#}", parse(text).unwrap_err());
        let e = fails(&format!("{base}cache = {{ zone = \"other\" }}\n"));
        assert!(
            e.contains("routes[0].cache.zone") && e.contains("main"),
            "{e}"
        );
        let e = fails(&format!(
            "{base}cache = {{ zone = \"main\", key = [\"query:x\"] }}\n"
        ));
        assert!(e.contains("routes[0].cache.key[0]"), "{e}");
        let e = fails(&base.replace("max_mib = 64", "max_mib = 4\nmax_object_mib = 8"));
        assert!(e.contains("cache.zones.main.max_object_mib"), "{e}");
        let e = parse(&format!("{base}cache = {{ zone = \"main\", ttl = 5 }}\n")).unwrap_err();
        assert!(format!("{e:#}").contains("ttl"), "{e:#}");
    }

    #[test]
    fn server_without_port_is_rejected() {
        let e = parse(
            "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.app]\nservers = [\"localhost\"]\n",
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("upstreams.app.servers[0]"),
            "{e:#}"
        );
    }

    #[test]
    fn per_plugin_memory_cannot_exceed_global() {
        let e = parse(&format!(
            "{BASE}[[routes]]\nupstream = \"app\"\n[[routes.plugins]]\nname = \"x\"\nmemory_limit_mib = 64\n"
        ))
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("routes[0].plugins[0].memory_limit_mib"),
            "{e:#}"
        );
    }

    #[test]
    fn bad_on_error_value_is_named() {
        let e = parse(&format!(
            "{BASE}[[routes]]\nupstream = \"app\"\n[[routes.plugins]]\nname = \"x\"\non_error = \"maybe\"\n"
        ))
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("maybe") && msg.contains("deny"), "{msg}");
    }

    #[test]
    fn cache_dir_cannot_be_the_plugins_dir() {
        let e = parse(&format!(
            "{BASE}[plugins]\ndir = \"p\"\ncache_dir = \"p\"\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("plugins.cache_dir"), "{e:#}");
    }

    #[test]
    fn admin_must_be_loopback_unless_allowed() {
        let e = parse(&format!("{BASE}[admin]\nlisten = \"0.0.0.0:9901\"\n")).unwrap_err();
        assert!(format!("{e:#}").contains("admin.listen"), "{e:#}");
        parse(&format!(
            "{BASE}[admin]\nlisten = \"0.0.0.0:9901\"\nallow_remote = true\n"
        ))
        .unwrap();
    }

    #[test]
    fn tls_listener_and_certificates_go_together() {
        let e = parse(&BASE.replace("[server]\n", "[server]\ntls_listen = \"127.0.0.1:8443\"\n"))
            .unwrap_err();
        assert!(format!("{e:#}").contains("server.tls_listen"), "{e:#}");
        let e = parse(&format!(
            "{BASE}[[certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").starts_with("certificates"), "{e:#}");
        let e =
            parse(&BASE.replace("[server]\n", "[server]\nhttps_redirect = true\n")).unwrap_err();
        assert!(format!("{e:#}").contains("server.https_redirect"), "{e:#}");
    }

    #[test]
    fn certificate_paths_are_anchored_at_config_dir() {
        let text = BASE.replace("[server]\n", "[server]\ntls_listen = \"127.0.0.1:8443\"\n")
            + "[[certificates]]\ncert = \"certs/a.pem\"\nkey = \"/abs/a.key\"\n[tls]\nclient_ca = \"ca.pem\"\n";
        let c = Config::parse(&text, Path::new("/etc/sluice")).unwrap();
        assert_eq!(c.certificates[0].cert, Path::new("/etc/sluice/certs/a.pem"));
        assert_eq!(c.certificates[0].key, Path::new("/abs/a.key"));
        assert_eq!(
            c.tls.client_ca.as_deref(),
            Some(Path::new("/etc/sluice/ca.pem"))
        );
    }

    #[test]
    fn upstream_server_tables_and_policies() {
        let c = parse(
            "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.app]\nbalance = \"least-conn\"\n\
             servers = [{ addr = \"127.0.0.1:9001\", weight = 3 }, \"127.0.0.1:9002\", { addr = \"127.0.0.1:9003\", backup = true }]\n",
        )
        .unwrap();
        let up = &c.upstreams["app"];
        assert_eq!(up.servers[0].weight, 3);
        assert_eq!(up.servers[1].addr, "127.0.0.1:9002");
        assert!(up.servers[2].backup);
        let bad = |extra: &str| {
            parse(&format!(
                "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.app]\nservers = [\"127.0.0.1:9001\"]\n{extra}"
            ))
            .map(|_| ())
            .unwrap_err()
            .to_string()
        };
        assert!(bad("balance = \"hash\"\n").contains("upstreams.app.hash_key"));
        assert!(bad("balance = \"hash\"\nhash_key = \"body\"\n").contains("not \"ip\""));
        assert!(bad("protocol = \"h2\"\n").contains("upstreams.app.protocol"));
        assert!(bad("retry_on_status = [200]\n").contains("retry_on_status"));
        assert!(bad("health = { path = \"healthz\" }\n").contains("health.path"));
        let e = parse(
            "[server]\nlisten = \"127.0.0.1:8080\"\n[upstreams.app]\nservers = [{ addr = \"127.0.0.1:9001\", wieght = 2 }]\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("wieght"), "{e:#}");
    }

    #[test]
    fn the_documented_upstream_example_parses() {
        let c = Config::parse(
            r#"[server]
listen = "127.0.0.1:8080"

[upstreams.app]
balance = "least-conn"
servers = [
  { addr = "127.0.0.1:9001", weight = 3 },
  { addr = "127.0.0.1:9002" },
  { addr = "127.0.0.1:9003", backup = true },
]
retries = 2
health = { path = "/healthz", interval_ms = 1000, timeout_ms = 500, healthy = 2, unhealthy = 2 }

[upstreams.sticky]
balance = "hash"
hash_key = "cookie:session"
servers = ["127.0.0.1:9004", "127.0.0.1:9005"]

[upstreams.secure]
servers = ["127.0.0.1:9443"]
protocol = "h2"
tls = { server_name = "origin.internal", ca = "certs/ca.pem" }
"#,
            Path::new("/etc/sluice"),
        )
        .unwrap();
        let secure = &c.upstreams["secure"];
        assert_eq!(
            secure.tls.as_ref().and_then(|t| t.ca.as_deref()),
            Some(Path::new("/etc/sluice/certs/ca.pem"))
        );
        assert_eq!(c.upstreams["app"].retries, 2);
        assert_eq!(c.upstreams["app"].health.as_ref().unwrap().path, "/healthz");
    }

    #[test]
    fn relative_plugin_dir_is_anchored_at_config_dir() {
        let c = Config::parse(BASE, Path::new("/etc/sluice")).unwrap();
        assert_eq!(c.plugins.dir, Path::new("/etc/sluice/plugins"));
    }
}
