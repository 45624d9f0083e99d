//! The plugin runtime: engine, bindings, host API, loading and chain execution.

pub mod bindings;
pub mod cache;
pub mod chain;
pub mod engine;
pub mod host_api;
pub mod loader;
pub mod registry;

pub use cache::CompileCache;
pub use chain::{BoundPlugin, ChainFailure, PluginFault, RequestDecision, ResponseDecision, Reuse};
pub use engine::{EngineLimits, PluginEngine};
pub use loader::{load_plugin, plugin_path, LoadError, LoadedPlugin};
pub use registry::{PluginRegistry, PluginStatus};
