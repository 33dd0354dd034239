//! Subcommands. Each file owns one subcommand's flags and wiring.

pub mod bbr;
pub mod bench;
pub mod crds;
pub mod epp;
pub mod manifests;
pub mod serve;
pub mod sim;
pub mod tracing_otel;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}
