//! Processes the real-vLLM tests run: a fleet of real vLLM servers (`scripts/real-vllm`), `igw serve`,
//! `igw epp` and real Envoy, all on loopback, each stopped when its handle drops. Blocking on
//! purpose: every test is a sequence of requests against child processes.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"))
}

/// A fresh folder for one test's logs.
pub fn log_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("igw-real-vllm-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tail(path: &Path, bytes: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let mut start = s.len().saturating_sub(bytes);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

/// The vLLM venv's python, or `None` (after a loud notice) when it is absent and not required.
fn vllm_python() -> Option<PathBuf> {
    let py = std::env::var_os("IGW_VLLM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("venv-vllm/bin/python"));
    let model = target_dir().join("tiny-models/tiny/config.json");
    if py.exists() && model.exists() {
        return Some(py);
    }
    assert!(
        std::env::var_os("IGW_REQUIRE_VLLM").is_none(),
        "IGW_REQUIRE_VLLM is set but {} or {} is missing; run scripts/install-vllm",
        py.display(),
        model.display()
    );
    eprintln!(
        "\n!!!!!!!! SKIPPING real-vLLM test: {} not found. Run scripts/install-vllm (set IGW_REQUIRE_VLLM=1 to fail \
         instead) !!!!!!!!\n",
        py.display()
    );
    None
}

/// True if the vLLM venv and the tiny model are installed; false after a loud notice when they are
/// not and not required (panics under `IGW_REQUIRE_VLLM`).
pub fn vllm_installed() -> bool {
    vllm_python().is_some()
}

/// A child process whose output goes to a log file; killed when dropped (the log's tail is printed
/// if the test is failing).
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { name: name.to_owned(), child, log }
    }

    /// Waits until a line of the log matches `find` (polling the file), or panics after `limit`.
    fn wait_for_line<T>(&mut self, limit: Duration, mut find: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(v) = text.lines().find_map(&mut find) {
                return v;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}) before it was ready:\n{}", self.name, tail(&self.log, 4000));
            }
            assert!(Instant::now() < deadline, "{} not ready after {limit:?}:\n{}", self.name, tail(&self.log, 4000));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log ({}) ---\n{}", self.name, self.log.display(), tail(&self.log, 6000));
        }
    }
}

/// Real vLLM servers started by `scripts/real-vllm`, stopped (SIGTERM to the launcher) on drop.
pub struct Fleet {
    launcher: Child,
    /// `ip:port` of every replica, in launch order.
    pub replicas: Vec<String>,
    /// Process id of every replica's server (its own process group).
    pub pids: Vec<i32>,
    /// The LoRA adapters' names and folders (with `--lora`), to load at run time.
    pub adapters: Vec<(String, String)>,
    logs: PathBuf,
}

impl Fleet {
    /// Starts `scripts/real-vllm` with `args`; `None` when vLLM is not installed and not required.
    pub fn start(args: &[&str], logs: &Path) -> Option<Fleet> {
        let py = vllm_python()?;
        let mut launcher = Command::new(repo_root().join("scripts/real-vllm"))
            .args(args)
            .arg("--log-dir")
            .arg(logs)
            .arg("--python")
            .arg(&py)
            .arg("--models")
            .arg(target_dir().join("tiny-models"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // The launcher has its own readiness limit and exits non-zero past it, so this read ends.
        let mut line = String::new();
        BufReader::new(launcher.stdout.take().unwrap()).read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            let status = launcher.wait().unwrap();
            panic!("scripts/real-vllm {args:?} started no fleet ({status}); server logs in {}", logs.display());
        }
        let v: Value = serde_json::from_str(&line).unwrap();
        let strings = |k: &str| -> Vec<String> {
            v[k].as_array().map(|a| a.iter().map(|x| x.as_str().unwrap().to_owned()).collect()).unwrap_or_default()
        };
        let pids = v["pids"].as_array().unwrap().iter().map(|p| i32::try_from(p.as_i64().unwrap()).unwrap()).collect();
        let adapters = v["adapters"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| (x["name"].as_str().unwrap().to_owned(), x["path"].as_str().unwrap().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Some(Fleet { launcher, replicas: strings("replicas"), pids, adapters, logs: logs.to_owned() })
    }

    /// The replicas as `igw --endpoints` takes them.
    pub fn endpoints(&self) -> String {
        self.replicas.join(",")
    }

    /// Kills replica `i` at once (SIGKILL to its process group), as a crashed server.
    pub fn kill_replica(&self, i: usize) {
        let status = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.pids[i])]).status().unwrap();
        assert!(status.success(), "kill replica {i}");
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.launcher.id().to_string()]).status();
        let _ = self.launcher.wait();
        if std::thread::panicking() {
            for entry in std::fs::read_dir(&self.logs).into_iter().flatten().flatten() {
                eprintln!("--- {} ---\n{}", entry.path().display(), tail(&entry.path(), 3000));
            }
        }
    }
}

/// `igw serve` over `endpoints`, with its gateway and admin addresses.
pub struct Serve {
    /// The process (held so it stops when this drops).
    pub _proc: Proc,
    /// `http://ip:port` of the gateway.
    pub url: String,
    /// `http://ip:port` of the admin listener.
    pub admin: String,
}

impl Serve {
    /// Starts `igw serve --endpoints ENDPOINTS` on free loopback ports, with `extra` flags.
    pub fn start(endpoints: &str, extra: &[&str], logs: &Path) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_igw"));
        cmd.args(["serve", "--endpoints", endpoints, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(extra);
        let mut proc = Proc::spawn("igw serve", &mut cmd, logs.join("igw-serve.log"));
        let (url, admin) = proc.wait_for_line(Duration::from_secs(30), |l| {
            let rest = l.strip_prefix("igw serve: listening on ")?;
            let (url, rest) = rest.split_once(" (admin ")?;
            Some((url.to_owned(), rest.split(')').next()?.to_owned()))
        });
        Serve { _proc: proc, url, admin }
    }
}

/// One `igw sim` replica (the simulator, for comparing its pages with the real engine's).
pub struct Sim {
    /// The process (held so it stops when this drops).
    pub _proc: Proc,
    /// `http://ip:port` of the replica.
    pub url: String,
}

/// Starts `igw sim --replicas 1 --port 0` with `extra` flags.
pub fn sim(extra: &[&str], logs: &Path) -> Sim {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_igw"));
    cmd.args(["sim", "--replicas", "1", "--port", "0"]).args(extra);
    let mut proc = Proc::spawn("igw sim", &mut cmd, logs.join("igw-sim.log"));
    let addr = proc.wait_for_line(Duration::from_secs(30), |l| {
        let v: Value = serde_json::from_str(l).ok()?;
        Some(v["replicas"][0].as_str()?.to_owned())
    });
    Sim { _proc: proc, url: format!("http://{addr}") }
}

/// `igw epp --endpoints ENDPOINTS` (plaintext gRPC) behind real Envoy.
pub struct EnvoyEpp {
    /// Envoy, started last so it drops first (held so it stops when this drops).
    pub _envoy: Proc,
    /// The EPP (held likewise).
    pub _epp: Proc,
    /// `http://ip:port` of Envoy's listener.
    pub url: String,
    /// `http://ip:port` of the EPP's metrics listener.
    pub epp_metrics: String,
}

/// The Envoy binary; panics when it is missing (the real-vLLM tests run only where CI installed
/// both).
fn envoy_bin() -> PathBuf {
    let bin = std::env::var_os("IGW_ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("venv-envoy/lib/envoy"));
    assert!(bin.exists(), "{} not found: run scripts/install-envoy", bin.display());
    bin
}

impl EnvoyEpp {
    /// Starts `igw epp` and Envoy (`deploy/envoy/extproc-plaintext.yaml`) in front of it.
    pub fn start(endpoints: &str, extra: &[&str], logs: &Path) -> EnvoyEpp {
        let metrics_port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_igw"));
        cmd.args(["epp", "--endpoints", endpoints, "--bind-address", "127.0.0.1", "--secure-serving=false"])
            .args(["--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", &metrics_port.to_string()])
            .args(extra);
        let mut epp = Proc::spawn("igw epp", &mut cmd, logs.join("igw-epp.log"));
        let grpc = epp.wait_for_line(Duration::from_secs(30), |l| {
            let rest = &l[l.find("igw epp serving grpc=")? + "igw epp serving grpc=".len()..];
            Some(rest.split_whitespace().next()?.rsplit(':').next()?.to_owned())
        });
        let template = std::fs::read_to_string(repo_root().join("deploy/envoy/extproc-plaintext.yaml")).unwrap();
        let yaml =
            template.replace("{{EPP_PORT}}", &grpc).replace("{{LISTEN_PORT}}", "0").replace("{{ADMIN_PORT}}", "0");
        assert!(!yaml.contains("{{"), "unsubstituted placeholder in extproc-plaintext.yaml");
        let (cfg, admin_path) = (logs.join("envoy.yaml"), logs.join("envoy-admin"));
        std::fs::write(&cfg, yaml).unwrap();
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c").arg(&cfg).arg("--disable-hot-restart").arg("--admin-address-path").arg(&admin_path);
        cmd.args(["-l", "info"]);
        let envoy = Proc::spawn("envoy", &mut cmd, logs.join("envoy.log"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            assert!(Instant::now() < deadline, "envoy not ready:\n{}", envoy.log());
            if let Ok(admin) = std::fs::read_to_string(&admin_path)
                && !admin.trim().is_empty()
                && get(&format!("http://{}/ready", admin.trim())).0 == 200
            {
                let (_, body) = get(&format!("http://{}/listeners?format=json", admin.trim()));
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                if let Some(p) = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()
                    && p != 0
                {
                    break p;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        EnvoyEpp {
            _envoy: envoy,
            _epp: epp,
            url: format!("http://127.0.0.1:{port}"),
            epp_metrics: format!("http://127.0.0.1:{metrics_port}"),
        }
    }
}

/// A free loopback port (for listeners that report no bound port, such as the EPP's metrics).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// GET `url`: status (0 when it could not connect) and body.
pub fn get(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// A response: status, headers of interest and body.
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `x-gateway-destination-endpoint-served`, if present.
    pub served: Option<String>,
    /// The body.
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// POST a JSON body to `url` and read the whole answer.
pub fn post(url: &str, body: &Value) -> Reply {
    let mut r = agent()
        .post(url)
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let served =
        r.headers().get("x-gateway-destination-endpoint-served").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Reply { status: r.status().as_u16(), served, body: r.body_mut().read_to_string().unwrap() }
}

/// POST a streaming request and hand back the open response, for a test that reads part of it.
pub fn post_stream(url: &str, body: &Value) -> ureq::http::Response<ureq::Body> {
    agent()
        .post(url)
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// Reads an open response until `n` bytes have come (or the stream ends); returns what came.
pub fn read_some(resp: &mut ureq::http::Response<ureq::Body>, n: usize) -> Vec<u8> {
    let mut reader = resp.body_mut().as_reader();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < n {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
        }
    }
    got
}

/// Polls `probe` every 100 ms until it returns `Some`, or panics with `what` after `limit`.
pub fn poll<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the first sample of `name` on a Prometheus text page (`None` if absent).
pub fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Sum of every sample of `name` (all label sets).
pub fn sum_samples(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs `f(0..n)` on `n` threads at once; the results arrive on the channel as they finish (load
/// that runs while a test acts).
pub fn spawn_load<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    let f = std::sync::Arc::new(f);
    for i in 0..n {
        let (tx, f) = (tx.clone(), f.clone());
        std::thread::spawn(move || {
            let _ = tx.send(f(i));
        });
    }
    rx
}
