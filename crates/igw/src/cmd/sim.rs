//! `igw sim`: simulated vLLM model servers (being built).

use clap::Args;

/// Flags of `igw sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _rest: Vec<String>,
}

/// Runs `igw sim`.
pub fn run(_args: SimArgs) -> anyhow::Result<()> {
    super::not_built("sim", "the model-server simulator")
}
