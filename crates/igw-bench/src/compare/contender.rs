//! The contenders: how each is started in front of a fleet, and why one cannot run here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::configs::{envoy_epp_config, envoy_round_robin_config, serve_config};
use super::{CLASS_CONTENDERS, CONTENDERS, CompareError};
use crate::BenchError;
use crate::process::{Children, free_port};
use crate::scenario::Scenario;

/// How a contender is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contender {
    /// Envoy balancing round robin over the fleet (`envoy-round-robin`).
    EnvoyRoundRobin,
    /// `igw serve` with a policy, with or without flow control (`igw`, `igw+flow`, `igw-random`,
    /// `igw-latency`, `igw-upstream-default`, `igw-legacy-filter-tree`).
    IgwServe {
        /// The `policy:` of the gateway's pool.
        policy: &'static str,
        /// With the scenario's flowControl section.
        flow: bool,
    },
    /// Real Envoy asking `igw epp` over ext_proc (`envoy+igw-epp`).
    EnvoyEpp,
    /// sglang-router with its `--policy` (`sglang-router-cache-aware`, `sglang-router-power-of-two`).
    Sglang(&'static str),
    /// vllm-router with its `--policy` (`vllm-router-round-robin`, `vllm-router-cache-aware`).
    Vllm(&'static str),
}

/// The programs the contenders run, and where their configurations and logs go.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The `igw` binary (`igw serve`, `igw epp`).
    pub igw: PathBuf,
    /// The Envoy binary.
    pub envoy: PathBuf,
    /// A Python virtualenv with `sglang-router` and/or `vllm-router`.
    pub peers_venv: PathBuf,
    /// Where each child's log (`NAME.log`) and configuration file go.
    pub log_dir: PathBuf,
}

/// A started contender: the URL it serves on and its child processes, stopped on drop.
#[derive(Debug)]
pub struct Running {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    children: Children,
}

impl Running {
    /// Kills and reaps the contender's processes (the last started first).
    pub fn stop(&mut self) {
        self.children.stop();
    }
}

impl Contender {
    /// The contender called `name` (one of [`CONTENDERS`] or [`CLASS_CONTENDERS`]).
    pub fn parse(name: &str) -> Result<Self, CompareError> {
        Ok(match name {
            "envoy-round-robin" => Contender::EnvoyRoundRobin,
            "igw" => Contender::IgwServe { policy: "igw", flow: false },
            "igw+flow" => Contender::IgwServe { policy: "igw", flow: true },
            "igw-random" => Contender::IgwServe { policy: "random", flow: false },
            "igw-latency" => Contender::IgwServe { policy: "igw-latency", flow: false },
            "igw-upstream-default" => Contender::IgwServe { policy: "upstream-default", flow: false },
            "igw-legacy-filter-tree" => Contender::IgwServe { policy: "legacy-filter-tree", flow: false },
            "envoy+igw-epp" => Contender::EnvoyEpp,
            "sglang-router-cache-aware" => Contender::Sglang("cache_aware"),
            "sglang-router-power-of-two" => Contender::Sglang("power_of_two"),
            "vllm-router-round-robin" => Contender::Vllm("round_robin"),
            "vllm-router-cache-aware" => Contender::Vllm("cache_aware"),
            other => {
                return Err(CompareError::UnknownContender {
                    name: other.to_string(),
                    known: format!("{}, {}", CONTENDERS.join(", "), CLASS_CONTENDERS.join(", ")),
                });
            }
        })
    }

    /// Why this contender cannot run with `tools`, if it cannot (Envoy or the router's Python
    /// module not installed).
    pub fn missing(&self, tools: &Tools) -> Option<String> {
        let (envoy, venv) = (&tools.envoy, &tools.peers_venv);
        let needs_envoy = matches!(self, Contender::EnvoyRoundRobin | Contender::EnvoyEpp);
        if needs_envoy && !envoy.exists() {
            return Some(format!("no Envoy at {} (run scripts/install-envoy or pass --envoy-bin)", envoy.display()));
        }
        let python = venv.join("bin/python");
        let module = match self {
            Contender::Sglang(_) => "sglang_router",
            Contender::Vllm(_) => "vllm_router",
            _ => return None,
        };
        let ok = python.exists()
            && Command::new(&python)
                .args(["-c", &format!("import {module}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        (!ok).then(|| {
            format!(
                "Python module {module} not found in {} (python3 -m venv {0} && {0}/bin/pip install sglang-router==0.3.2 vllm-router==0.1.17)",
                venv.display()
            )
        })
    }

    /// Starts the contender called `name` on a free loopback port in front of the fleet at
    /// `addrs` (`ip:port`), configured for `sc` on a fleet running at `time_scale`; each child's
    /// output goes to a log in `tools.log_dir`.
    pub fn start(
        &self,
        name: &str,
        addrs: &[String],
        sc: &Scenario,
        time_scale: f64,
        tools: &Tools,
    ) -> Result<Running, CompareError> {
        let (igw, envoy, venv, log_dir) = (&tools.igw, &tools.envoy, &tools.peers_venv, &tools.log_dir);
        let port = free_port().map_err(CompareError::FreePort)?;
        let mut procs = Running { url: format!("http://127.0.0.1:{port}"), children: Children::default() };
        let endpoints = addrs.join(",");
        let worker_urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
        let free = || free_port().map_err(CompareError::FreePort);
        match self {
            Contender::EnvoyRoundRobin => {
                let cfg = log_dir.join("envoy-round-robin.yaml");
                std::fs::write(&cfg, envoy_round_robin_config(port, free()?, addrs))?;
                let mut c = Command::new(envoy);
                c.arg("-c").arg(&cfg).args(["--log-level", "warn", "--concurrency", "1", "--base-id"]);
                c.arg(free()?.to_string());
                procs.children.push(name, spawn(&mut c, name, log_dir)?);
            }
            Contender::IgwServe { policy, flow } => {
                let cfg = log_dir.join(format!("{}.gateway.yaml", name.replace('+', "_")));
                std::fs::write(&cfg, serve_config(addrs, policy, *flow, sc, time_scale))?;
                let mut c = Command::new(igw);
                c.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                    .args(["--admin-listen", &format!("127.0.0.1:{}", free()?)])
                    .arg("--config")
                    .arg(&cfg)
                    .env("RUST_LOG", "warn");
                procs.children.push(name, spawn(&mut c, name, log_dir)?);
            }
            Contender::EnvoyEpp => {
                let (grpc, health, metrics) = (free()?, free()?, free()?);
                let mut e = Command::new(igw);
                e.args(["epp", "--bind-address", "127.0.0.1", "--secure-serving=false"])
                    .args(["--grpc-port", &grpc.to_string(), "--grpc-health-port", &health.to_string()])
                    .args(["--metrics-port", &metrics.to_string(), "--endpoints", &endpoints])
                    .env("RUST_LOG", "warn");
                for c in &sc.classes {
                    e.arg("--objective").arg(format!("{}={}", c.name, c.priority));
                }
                procs.children.push("igw epp", spawn(&mut e, "igw-epp", log_dir)?);
                let cfg = log_dir.join("envoy-epp.yaml");
                std::fs::write(&cfg, envoy_epp_config(port, free()?, grpc)?)?;
                let mut c = Command::new(envoy);
                c.arg("-c").arg(&cfg).args(["--log-level", "warn", "--concurrency", "1", "--base-id"]);
                c.arg(free()?.to_string());
                procs.children.push("envoy", spawn(&mut c, "envoy-epp", log_dir)?);
            }
            Contender::Sglang(policy) | Contender::Vllm(policy) => {
                // The two routers share their launcher flags; only the entry point and a log level name differ.
                let (mut c, log_level) = match self {
                    Contender::Sglang(_) => {
                        let mut c = Command::new(venv.join("bin/python"));
                        c.args(["-m", "sglang_router.launch_router"]);
                        (c, "warn")
                    }
                    _ => (Command::new(venv.join("bin/vllm-router")), "warning"),
                };
                c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .arg("--worker-urls")
                    .args(&worker_urls)
                    .args(["--policy", policy, "--prometheus-host", "127.0.0.1"])
                    .args(["--prometheus-port", &free()?.to_string()])
                    .args(["--worker-startup-check-interval", "1", "--log-level", log_level]);
                procs.children.push(name, spawn(&mut c, name, log_dir)?);
            }
        }
        Ok(procs)
    }
}

/// Starts `cmd` with stdin closed and stdout and stderr in `LOG_DIR/WHAT.log`.
fn spawn(cmd: &mut Command, what: &str, log_dir: &Path) -> Result<Child, CompareError> {
    let log = log_dir.join(format!("{}.log", what.replace(['/', ' ', '+'], "_")));
    let out = std::fs::File::create(&log).map_err(|e| BenchError::io(format!("creating {}", log.display()), e))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn().map_err(|source| CompareError::Spawn {
        what: what.to_string(),
        program: cmd.get_program().to_owned(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_contender_has_a_kind_and_unknown_ones_are_named() {
        for c in CONTENDERS.iter().chain(CLASS_CONTENDERS) {
            Contender::parse(c).unwrap();
        }
        let e = Contender::parse("nginx").unwrap_err().to_string();
        assert!(e.contains("nginx") && e.contains("envoy-round-robin") && e.contains("igw+flow"), "{e}");
        assert_eq!(super::super::des_policy("envoy+igw-epp"), Some("igw"));
        assert_eq!(super::super::des_policy("vllm-router-cache-aware"), None);
    }

    #[test]
    fn missing_programs_are_named() {
        let tools = Tools {
            igw: "igw".into(),
            envoy: "/nonexistent/envoy".into(),
            peers_venv: "/nonexistent/venv".into(),
            log_dir: std::env::temp_dir(),
        };
        let envoy = Contender::EnvoyEpp.missing(&tools).unwrap();
        assert!(envoy.starts_with("no Envoy at /nonexistent/envoy"), "{envoy}");
        let peer = Contender::Vllm("round_robin").missing(&tools).unwrap();
        assert!(peer.starts_with("Python module vllm_router not found in /nonexistent/venv"), "{peer}");
        assert_eq!(Contender::IgwServe { policy: "igw", flow: false }.missing(&tools), None);
    }

    #[test]
    fn a_program_that_is_not_there_is_named_in_the_error() {
        let tools = Tools {
            igw: "/nonexistent/igw".into(),
            envoy: "/nonexistent/envoy".into(),
            peers_venv: "/nonexistent/venv".into(),
            log_dir: std::env::temp_dir(),
        };
        let sc = Scenario::builtin("shared-prefix").unwrap();
        let e = Contender::IgwServe { policy: "igw", flow: false }
            .start("igw-test-contender", &["127.0.0.1:1".into()], &sc, 1.0, &tools)
            .unwrap_err();
        assert_eq!(e.to_string(), "starting igw-test-contender (\"/nonexistent/igw\")");
        let _ = std::fs::remove_file(tools.log_dir.join("igw-test-contender.log"));
        let _ = std::fs::remove_file(tools.log_dir.join("igw-test-contender.gateway.yaml"));
    }
}
