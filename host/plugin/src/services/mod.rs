//! Services the host offers every plugin, whatever its language: shared state (an
//! embedded store or Redis), metrics, password checks, and the counters of outbound calls. Built once per process from `[state]` and
//! `[metrics]`; a plugin reaches them only through its own namespace.

pub mod metrics;
pub mod passwords;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use crate::outbound::OutboundCounters;
use sluice_config::Config;

pub use metrics::PluginMetrics;
pub use passwords::PasswordChecks;
pub use state::StateService;

/// The bundle every plugin instance gets a handle to.
pub struct Services {
    pub state: StateService,
    pub metrics: Arc<PluginMetrics>,
    pub outbound: OutboundCounters,
    pub passwords: PasswordChecks,
}

impl Services {
    /// Builds the services `config` describes (the Redis backend connects on first use).
    pub fn new(config: &Config) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            state: StateService::new(&config.state)?,
            metrics: Arc::new(PluginMetrics::new(config.metrics.max_series_per_metric)),
            outbound: OutboundCounters::default(),
            passwords: PasswordChecks::new(
                config.plugins.password_checks,
                Duration::from_millis(config.plugins.password_wait_ms),
            ),
        }))
    }

    /// Starts the background upkeep: expired keys leave the memory backend even when
    /// nobody reads them. Stops with the last handle to the services.
    pub fn start_housekeeping(self: &Arc<Self>) {
        let services = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(services) = services.upgrade() else {
                    return;
                };
                let _ = tokio::task::spawn_blocking(move || services.state.sweep()).await;
            }
        });
    }

    /// Memory-backed services with default limits (tests and tools).
    pub fn in_memory() -> Arc<Self> {
        Arc::new(Self {
            state: StateService::in_memory(),
            metrics: Arc::new(PluginMetrics::new(
                sluice_config::MetricsConfig::default().max_series_per_metric,
            )),
            outbound: OutboundCounters::default(),
            passwords: PasswordChecks::new(
                0,
                Duration::from_millis(sluice_config::PluginsConfig::default().password_wait_ms),
            ),
        })
    }
}
