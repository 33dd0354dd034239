//! `igw manifests`: prints a complete Kubernetes install (CRDs, EPP, RBAC, config, pool,
//! ServiceMonitor, optional simulated model servers) as multi-document YAML.

use anyhow::Context as _;
use clap::Args;
use igw_k8s::manifests::InstallOptions;

/// Flags of `igw manifests`.
#[derive(Args, Debug)]
pub struct ManifestsArgs {
    /// InferencePool name (the EPP objects are `<pool>-epp`).
    #[arg(long, default_value = "vllm-llama2-7b")]
    pub pool_name: String,
    /// Namespace of every object.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Model-server pod selector, k=v,k2=v2 (default app=<pool-name>).
    #[arg(long)]
    pub selector: Option<String>,
    /// Model-server ports (1-8), e.g. 8000 or 8000,8001.
    #[arg(long, value_delimiter = ',', default_value = "8000")]
    pub target_port: Vec<u16>,
    /// EPP replicas.
    #[arg(long, default_value_t = 1)]
    pub replicas: i32,
    /// Container image with the igw binary.
    #[arg(long, default_value = "igw:latest")]
    pub image: String,
    /// Also deploy simulated model servers (`igw sim`) matching the selector.
    #[arg(long)]
    pub with_sim: bool,
    /// Simulated model-server pods.
    #[arg(long, default_value_t = 3)]
    pub sim_replicas: i32,
}

/// Prints the install to stdout.
pub fn run(args: ManifestsArgs) -> anyhow::Result<()> {
    let selector = args.selector.clone().unwrap_or_else(|| format!("app={}", args.pool_name));
    let target = igw_k8s::reconcile::Target::from_selector(&args.namespace, &selector, &args.target_port)
        .context("--selector / --target-port")?;
    let igw_k8s::reconcile::Target::Selector(spec) = target else {
        anyhow::bail!("--selector must be k=v pairs");
    };
    let opts = InstallOptions {
        pool_name: args.pool_name,
        namespace: args.namespace,
        selector: spec.selector,
        target_ports: spec.target_ports,
        replicas: args.replicas,
        image: args.image,
        with_sim: args.with_sim,
        sim_replicas: args.sim_replicas,
    };
    print!("{}", igw_k8s::manifests::to_yaml(&opts)?);
    Ok(())
}
