//! Subcommands. Each file owns one subcommand's flags and wiring.

pub mod bench;
pub mod serve;
pub mod sim;

use clap::Args;

/// Accepts any arguments for a subcommand that is not built yet.
#[derive(Args, Debug)]
pub struct NotBuilt {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _rest: Vec<String>,
}

/// Says plainly that a subcommand does not exist yet and fails.
pub fn not_built(name: &str, what: &str) -> anyhow::Result<()> {
    anyhow::bail!("`igw {name}` ({what}) is not built yet in this version of igw; see README.md for what is available")
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}
