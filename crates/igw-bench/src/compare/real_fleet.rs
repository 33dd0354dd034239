//! The model servers a comparison runs over: the simulator in this process, or real vLLM servers
//! started by the fleet launcher (`scripts/real-vllm`, docs/real-vllm.md).

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::CompareError;

/// Which model servers `igw bench compare` starts for each contender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetKind {
    /// `igw-sim` replicas in this process: the scenario's engine profile at the `time_scale`.
    Sim,
    /// Real vLLM servers started by `launcher --replicas N --log-dir DIR`, serving `model`, in real
    /// time (the launcher prints `{"replicas":["ip:port",...]}` once every server answers and stops
    /// them all on SIGTERM).
    Vllm {
        /// The launcher program (`scripts/real-vllm`).
        launcher: PathBuf,
        /// The served model name every request names (`tiny`).
        model: String,
    },
}

/// A started fleet; stopped by [`shutdown`](Fleet::shutdown) or on drop.
pub(super) enum Fleet {
    /// Simulated replicas.
    Sim(igw_sim::Fleet),
    /// The launcher of real servers.
    Vllm {
        /// The launcher process (stopped when dropped).
        launcher: Launcher,
        /// The servers' addresses.
        addrs: Vec<String>,
    },
}

/// The launcher process: SIGTERM on drop lets it stop its servers, and the drop waits for that
/// (also when a comparison is abandoned on Ctrl-C).
pub(super) struct Launcher(Child);

impl Drop for Launcher {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        }
        let _ = self.0.wait();
    }
}

/// How long the launcher may take to bring every server up (it has its own limit too).
const READY_LIMIT: Duration = Duration::from_secs(900);

impl Fleet {
    /// Starts `replicas` real vLLM servers with `launcher`, sized as `profile` (KV blocks, batch
    /// limits, context), their logs under `log_dir`.
    pub(super) async fn vllm(
        launcher: &PathBuf,
        replicas: usize,
        profile: &igw_sim::Profile,
        log_dir: PathBuf,
    ) -> Result<Fleet, CompareError> {
        let spawn_err = |source| CompareError::Spawn {
            what: "the vLLM fleet launcher".into(),
            program: launcher.clone().into_os_string(),
            source,
        };
        std::fs::create_dir_all(&log_dir)?;
        let mut child = Command::new(launcher)
            .args(["--replicas", &replicas.to_string(), "--ready-timeout-s", &READY_LIMIT.as_secs().to_string()])
            .args(["--num-gpu-blocks", &profile.num_gpu_blocks.to_string()])
            .args(["--max-num-seqs", &profile.max_num_seqs.to_string()])
            .args(["--max-num-batched-tokens", &profile.max_num_batched_tokens.to_string()])
            .args(["--max-model-len", &profile.max_model_len.to_string()])
            .arg("--log-dir")
            .arg(&log_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(spawn_err)?;
        let Some(stdout) = child.stdout.take() else {
            return Err(CompareError::FleetFailed("the launcher's stdout was not captured".into()));
        };
        // The launcher ends its one line, or exits, within its own limit: read it off the runtime.
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .map_err(|e| CompareError::FleetFailed(e.to_string()))??;
        let addrs = parse_launch_line(&line).ok_or_else(|| {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            CompareError::FleetFailed(format!(
                "the launcher printed no fleet ({status}; got {:?}); server logs in {}",
                line.trim(),
                log_dir.display()
            ))
        })?;
        let launcher = Launcher(child);
        if addrs.len() != replicas {
            return Err(CompareError::FleetFailed(format!("asked for {replicas} servers, got {addrs:?}")));
        }
        Ok(Fleet::Vllm { launcher, addrs })
    }

    /// The replicas' `ip:port`.
    pub(super) fn addrs(&self) -> Vec<String> {
        match self {
            Fleet::Sim(f) => f.addrs().iter().map(ToString::to_string).collect(),
            Fleet::Vllm { addrs, .. } => addrs.clone(),
        }
    }

    /// Stops every server and waits for them.
    pub(super) async fn shutdown(self) {
        match self {
            Fleet::Sim(f) => f.shutdown().await,
            Fleet::Vllm { launcher, .. } => {
                let _ = tokio::task::spawn_blocking(move || drop(launcher)).await;
            }
        }
    }
}

/// The replicas of the launcher's line `{"replicas":["ip:port",...],...}`.
fn parse_launch_line(line: &str) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    v.get("replicas")?.as_array()?.iter().map(|a| a.as_str().map(str::to_owned)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_launch_line_names_the_replicas() {
        let line = r#"{"replicas": ["127.0.0.1:1", "127.0.0.1:2"], "pids": [5, 6]}"#;
        assert_eq!(parse_launch_line(line).unwrap(), ["127.0.0.1:1", "127.0.0.1:2"]);
        for bad in ["", "real-vllm: error", "{}", r#"{"replicas":[1]}"#] {
            assert!(parse_launch_line(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_launcher_that_prints_nothing_is_an_error_naming_the_logs() {
        let dir = std::env::temp_dir().join(format!("igw-fleet-test-{}", std::process::id()));
        let p = igw_sim::Profile::llama2_7b_h100();
        let err = Fleet::vllm(&PathBuf::from("/bin/true"), 2, &p, dir.clone()).await.err().unwrap();
        assert!(err.to_string().contains("printed no fleet"), "{err}");
        let err = Fleet::vllm(&PathBuf::from("/nonexistent/real-vllm"), 2, &p, dir).await.err().unwrap();
        assert!(matches!(err, CompareError::Spawn { .. }), "{err}");
    }
}
