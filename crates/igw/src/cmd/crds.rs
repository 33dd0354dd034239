//! `igw crds`: prints the CustomResourceDefinitions igw understands, as multi-document YAML.

use clap::Args;

/// Flags of `igw crds`.
#[derive(Args, Debug)]
pub struct CrdsArgs {
    /// Also print the legacy v1alpha2 InferencePool and InferenceModel CRDs.
    #[arg(long)]
    pub legacy: bool,
}

/// Prints the CRDs to stdout.
pub fn run(args: CrdsArgs) -> anyhow::Result<()> {
    let mut crds = igw_k8s::crds::current();
    if args.legacy {
        crds.extend(igw_k8s::crds::legacy());
    }
    print!("{}", igw_k8s::crds::to_yaml(&crds)?);
    Ok(())
}
