//! The plugin runtime: engine, bindings, host API, loading and chain execution.

pub mod bindings;
pub mod cache;
pub mod calls;
pub mod chain;
pub mod convert;
pub mod crypto;
pub mod engine;
pub mod guard;
pub mod host_api;
pub mod instance;
pub mod loader;
pub mod outbound;
pub mod preinit;
pub mod registry;
pub mod services;
pub mod stage;
pub mod stderr;

pub use cache::CompileCache;
pub use chain::{BodyLimits, BoundPlugin, ChainFailure, RequestDecision, Reuse};
pub use engine::{EngineLimits, PluginEngine};
pub use guard::{GuardLimits, PluginGuard};
pub use instance::{CallLimits, PluginFault};
pub use loader::{load_plugin, plugin_path, LoadError, LoadedPlugin};
pub use preinit::SnapshotSlot;
pub use registry::{PluginRegistry, PluginStatus};
