//! The `sluice` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Sluice: a reverse proxy programmed with WebAssembly plugins.
#[derive(Parser)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy until SIGTERM/SIGINT, then drain in-flight requests and exit 0.
    Run {
        /// Path of the TOML config file.
        #[arg(short, long, default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// Validate a config file: schema, routes, upstreams, and every plugin (load + init).
    /// Exits non-zero with a message naming the key and the problem.
    Check {
        /// Path of the TOML config file.
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    // A child this binary started to compile a plugin (see `plugin::cache::child`).
    if std::env::args_os().nth(1).as_deref()
        == Some(sluice_plugin::cache::child::SUBCOMMAND.as_ref())
    {
        return match sluice_plugin::cache::child::serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    sluice_plugin::cache::child::enable();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // `run` sizes the runtime from the config; a config that does not load fails here.
    let config = match &cli.command {
        Command::Run { config } | Command::Check { config } => sluice_config::Config::load(config),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Single-threaded: with one worker it serves the listeners itself; with more, each
    // worker thread runs a runtime of its own and this one keeps the admin API,
    // reloads and health checks.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config: path } => sluice::app::run(&path, config).await,
            Command::Check { config: path } => {
                let summary = sluice::app::check(&config).await?;
                println!(
                    "{}: ok ({} routes, {} upstreams, plugins: {})",
                    path.display(),
                    summary.routes,
                    summary.upstreams,
                    if summary.plugins.is_empty() {
                        "none".to_string()
                    } else {
                        summary.plugins.join(", ")
                    }
                );
                for line in &summary.certificates {
                    println!("  {line}");
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
