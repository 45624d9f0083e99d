//! Lines in the proxy's log, tagged with the plugin's name by the host.
//!
//! Functions take a `&str`; the macros of the same name take `format!` arguments:
//! `log::info("ready")` or `log::info!("user {} denied", id)`.

/// Log level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// Something failed.
    Error,
}

/// Writes `message` at `level`.
pub fn log(level: Level, message: &str) {
    imp::log(level, message);
}

/// Writes `message` at trace level.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}
/// Writes `message` at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}
/// Writes `message` at info level.
pub fn info(message: &str) {
    log(Level::Info, message);
}
/// Writes `message` at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}
/// Writes `message` at error level.
pub fn error(message: &str) {
    log(Level::Error, message);
}

pub use crate::{
    __sluice_log_debug as debug, __sluice_log_error as error, __sluice_log_info as info,
    __sluice_log_trace as trace, __sluice_log_warn as warn,
};

#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_log_trace {
    ($($arg:tt)+) => { $crate::log::trace(&::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_log_debug {
    ($($arg:tt)+) => { $crate::log::debug(&::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_log_info {
    ($($arg:tt)+) => { $crate::log::info(&::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_log_warn {
    ($($arg:tt)+) => { $crate::log::warn(&::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __sluice_log_error {
    ($($arg:tt)+) => { $crate::log::error(&::std::format!($($arg)+)) };
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::bindings::sluice::plugin::{host, types::LogLevel};

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        host::log(level, message);
    }
}

// Off wasm (plugin unit tests on the build machine) there is no host: print instead.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub fn log(level: super::Level, message: &str) {
        eprintln!("[{level:?}] {message}");
    }
}
