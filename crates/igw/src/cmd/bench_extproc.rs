//! `igw bench extproc`: drives a real `igw epp` process over gRPC exactly as Envoy does
//! (FULL_DUPLEX_STREAMED: request headers, body, then the response) at a fixed open-loop rate,
//! and reports achieved requests/s, the client-side round trip of each pick, errors and the
//! EPP's memory.
//!
//! The pool is `--endpoints` tiny HTTP servers on loopback that serve a vLLM-shaped `/metrics`
//! page (with different queue lengths), so the EPP scrapes fresh metrics and runs its normal
//! scoring path (not the all-stale fallback). Prompts share one of 64 long system prompts and
//! end uniquely, so the prefix index grows and is matched as in production.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, ProtocolConfiguration, body_mutation,
    processing_request, processing_response,
};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

fn parse_go_duration(s: &str) -> Result<Duration, String> {
    igw_sched::flow::quantity::parse_duration(s).map_err(|e| e.to_string())
}

/// Flags of `igw bench extproc`.
#[derive(Args, Debug)]
pub struct ExtprocArgs {
    /// Endpoints in the pool (each a loopback server with a vLLM-shaped /metrics page).
    #[arg(long, default_value_t = 100)]
    pub endpoints: usize,
    /// Request body size in bytes (the prompt dominates it).
    #[arg(long, default_value_t = 4096)]
    pub prompt_bytes: usize,
    /// Offered requests per second (open loop: a late request does not delay the next).
    #[arg(long, default_value_t = 2000.0)]
    pub rps: f64,
    /// How long to offer load (Go duration), after a warm-up of a tenth of it.
    #[arg(long, default_value = "10s", value_parser = parse_go_duration)]
    pub duration: Duration,
    /// HTTP/2 connections to the EPP (Envoy opens a few per worker).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Connect with TLS (the EPP's self-signed certificate, not verified, as gateways do).
    #[arg(long)]
    pub tls: bool,
    /// Scheduling policy of the EPP.
    #[arg(long, default_value = "igw")]
    pub policy: String,
    /// Run the EPP with flow control (`igw epp --flow-control`).
    #[arg(long)]
    pub flow_control: bool,
    /// The igw binary to run as the EPP (default: this one).
    #[arg(long)]
    pub igw_bin: Option<PathBuf>,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
}

/// What one run measured.
#[derive(Debug, Serialize)]
pub struct ExtprocReport {
    /// Pool size.
    pub endpoints: usize,
    /// Request body bytes.
    pub prompt_bytes: usize,
    /// Offered rate.
    pub offered_rps: f64,
    /// Completed streams per second over the measured window.
    pub rps: f64,
    /// Streams completed without error.
    pub completed: u64,
    /// Streams that failed (gRPC error, immediate response, missing destination).
    pub errors: u64,
    /// Median client round trip of the pick: request headers sent → the last request body chunk back.
    pub p50_us: f64,
    /// 99th percentile of the same.
    pub p99_us: f64,
    /// 99.9th percentile of the same.
    pub p999_us: f64,
    /// The EPP's CPU time (user + system, all threads) per completed request over the measured
    /// window, in µs (0 where /proc is unavailable).
    pub epp_cpu_us_per_request: f64,
    /// The EPP's resident memory at the end (VmRSS).
    pub rss_mib: f64,
    /// The EPP's peak resident memory (VmHWM).
    pub peak_rss_mib: f64,
    /// Entries in the EPP's prefix index at the end (from its /metrics).
    pub prefix_index_entries: u64,
    /// TLS on the ext_proc connection.
    pub tls: bool,
    /// HTTP/2 connections used.
    pub connections: usize,
    /// Scheduling policy.
    pub policy: String,
    /// Flow control on in the EPP.
    pub flow_control: bool,
}

/// Runs the benchmark and prints its report.
pub fn run(args: ExtprocArgs) -> anyhow::Result<()> {
    if args.endpoints == 0 || args.rps <= 0.0 || args.connections == 0 {
        bail!("--endpoints, --rps and --connections must be positive");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let report = rt.block_on(bench(&args))?;
    println!(
        "igw epp · {} endpoints · {}-byte bodies · policy {} · {} · {} connections",
        report.endpoints,
        report.prompt_bytes,
        report.policy,
        if report.tls { "TLS" } else { "h2c" },
        report.connections
    );
    println!(
        "offered {:.0} req/s → achieved {:.0} req/s · {} completed · {} errors",
        report.offered_rps, report.rps, report.completed, report.errors
    );
    println!(
        "pick round trip at the client: p50 {:.0} µs · p99 {:.0} µs · p99.9 {:.0} µs",
        report.p50_us, report.p99_us, report.p999_us
    );
    println!(
        "EPP: {:.0} µs CPU per request · {:.1} MiB resident, {:.1} MiB peak · prefix index {} entries",
        report.epp_cpu_us_per_request, report.rss_mib, report.peak_rss_mib, report.prefix_index_entries
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// Kills the EPP child process when dropped.
struct Epp(Child);

impl Drop for Epp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn bench(args: &ExtprocArgs) -> anyhow::Result<ExtprocReport> {
    let (pool, stop_pool) = metrics_servers(args.endpoints).await?;
    let (grpc, health, metrics) = (free_port()?, free_port()?, free_port()?);
    let bin = match &args.igw_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("locating the igw binary")?,
    };
    let list = pool.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let child = Command::new(&bin)
        .args(["epp", "--bind-address", "127.0.0.1", "--endpoints", &list, "--policy", &args.policy])
        .args(["--grpc-port", &grpc.to_string(), "--grpc-health-port", &health.to_string()])
        .args(["--metrics-port", &metrics.to_string(), "--secure-serving", if args.tls { "true" } else { "false" }])
        .args(["--flow-control", if args.flow_control { "true" } else { "false" }])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} epp", bin.display()))?;
    let epp = Epp(child);
    let pid = epp.0.id();
    let addr = SocketAddr::from(([127, 0, 0, 1], grpc));
    wait_ready(SocketAddr::from(([127, 0, 0, 1], health))).await?;
    // Let the first scrape land so that decisions see fresh metrics.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(channel(addr, args.tls).await?);
    }
    let prompts = Prompts::new(args.prompt_bytes);
    let warmup = args.duration / 10;
    let _ = drive(&channels, &prompts, args.rps, warmup).await;
    let cpu_before = cpu_ticks(pid);
    let (latencies, errors, elapsed) = drive(&channels, &prompts, args.rps, args.duration).await;
    let cpu_after = cpu_ticks(pid);

    let (rss_mib, peak_rss_mib) = rss(pid);
    let prefix_index_entries = scrape_prefix_size(SocketAddr::from(([127, 0, 0, 1], metrics))).await.unwrap_or(0);
    drop(epp);
    let _ = stop_pool.send(true);
    let mut l = latencies;
    l.sort_unstable();
    // igw's one percentile definition (igw_core::stats: nearest rank).
    let pct = |p: f64| -> f64 {
        if l.is_empty() {
            return 0.0;
        }
        l[igw_core::stats::nearest_rank(l.len(), p) - 1].as_secs_f64() * 1e6
    };
    Ok(ExtprocReport {
        endpoints: args.endpoints,
        prompt_bytes: args.prompt_bytes,
        offered_rps: args.rps,
        rps: l.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        completed: l.len() as u64,
        errors,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        epp_cpu_us_per_request: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) if !l.is_empty() => (b - a) as f64 * 1e6 / clock_ticks_per_s() / l.len() as f64,
            _ => 0.0,
        },
        rss_mib,
        peak_rss_mib,
        prefix_index_entries,
        tls: args.tls,
        connections: args.connections,
        policy: args.policy.clone(),
        flow_control: args.flow_control,
    })
}

/// `n` loopback servers answering `/metrics` with a vLLM page; a send on the returned channel stops them.
async fn metrics_servers(n: usize) -> anyhow::Result<(Vec<SocketAddr>, tokio::sync::watch::Sender<bool>)> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut addrs = Vec::with_capacity(n);
    for i in 0..n {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding a pool endpoint")?;
        addrs.push(l.local_addr()?);
        let page = bytes::Bytes::from(format!(
            "# TYPE vllm:num_requests_waiting gauge\n\
             vllm:num_requests_waiting{{model_name=\"m\"}} {}\n\
             # TYPE vllm:num_requests_running gauge\n\
             vllm:num_requests_running{{model_name=\"m\"}} {}\n\
             # TYPE vllm:kv_cache_usage_perc gauge\n\
             vllm:kv_cache_usage_perc{{model_name=\"m\"}} {}\n\
             # TYPE vllm:cache_config_info gauge\n\
             vllm:cache_config_info{{block_size=\"16\",num_gpu_blocks=\"8192\"}} 1\n",
            i % 5,
            8 + i % 16,
            (i % 10) as f64 / 20.0
        ));
        let mut stop = rx.clone();
        tokio::spawn(igw_proxy::listener::serve(
            l,
            move |_req: hyper::Request<hyper::body::Incoming>| {
                let page = page.clone();
                async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(page))) }
            },
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
            Duration::from_millis(100),
        ));
    }
    Ok((addrs, tx))
}

/// Polls the EPP's gRPC health until it serves (or 30 s pass).
async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = Endpoint::from_shared(format!("http://{addr}"))?.connect().await {
            let req = HealthCheckRequest { service: "inference-extension".into() };
            if let Ok(r) = HealthClient::new(ch).check(req).await
                && r.into_inner().status == 1
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the EPP did not become ready on {addr} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A channel to the EPP: h2c, or TLS without verification.
async fn channel(addr: SocketAddr, tls: bool) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
    if !tls {
        return Ok(endpoint.connect().await?);
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    Ok(endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await?)
}

/// Accepts any certificate: the EPP's is self-signed, and gateways do not verify it either.
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Request bodies: one of 64 shared system prompts, then a unique question.
struct Prompts {
    systems: Vec<String>,
    prompt_bytes: usize,
}

impl Prompts {
    fn new(prompt_bytes: usize) -> Self {
        let systems = (0..64)
            .map(|i| {
                let unit = format!("System prompt {i}: answer carefully, cite sources, keep it short. ");
                unit.repeat(prompt_bytes / unit.len() + 1)
            })
            .collect();
        Prompts { systems, prompt_bytes }
    }

    /// The body of request `i`: about `prompt_bytes` bytes, 3/4 of them shared with other requests.
    fn body(&self, i: u64) -> Vec<u8> {
        let shared = self.prompt_bytes * 3 / 4;
        let sys = &self.systems[(i % 64) as usize];
        let mut prompt = String::with_capacity(self.prompt_bytes + 32);
        prompt.push_str(&sys[..shared.min(sys.len())]);
        let tail = format!(" question {i} ");
        while prompt.len() < self.prompt_bytes {
            prompt.push_str(&tail);
        }
        prompt.truncate(self.prompt_bytes.max(1));
        serde_json::json!({"model": "m", "prompt": prompt, "max_tokens": 16}).to_string().into_bytes()
    }
}

/// Offers `rps` for `duration`; returns the successful round trips, the error count and the
/// window from the first send to the last completion.
async fn drive(
    channels: &[Channel],
    prompts: &Prompts,
    rps: f64,
    duration: Duration,
) -> (Vec<Duration>, u64, Duration) {
    let total = (rps * duration.as_secs_f64()).round() as u64;
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<Duration>>();
    let start = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rps)).await;
        let ch = channels[(i as usize) % channels.len()].clone();
        let body = prompts.body(i);
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(one_stream(ch, body).await.ok());
        });
    }
    drop(tx);
    let (mut ok, mut errors) = (Vec::with_capacity(total as usize), 0);
    while let Some(r) = rx.recv().await {
        match r {
            Some(d) => ok.push(d),
            None => errors += 1,
        }
    }
    (ok, errors, start.elapsed())
}

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue { key: (*k).into(), raw_value: v.as_bytes().to_vec(), ..Default::default() })
            .collect(),
    }
}

fn message(r: processing_request::Request, first: bool) -> ProcessingRequest {
    let protocol_config = first.then(|| ProtocolConfiguration {
        request_body_mode: BodySendMode::FullDuplexStreamed as i32,
        response_body_mode: BodySendMode::FullDuplexStreamed as i32,
        ..Default::default()
    });
    ProcessingRequest { request: Some(r), protocol_config, ..Default::default() }
}

/// True if `r` is a streamed body chunk carrying end of stream.
fn ends_body(r: &ProcessingResponse) -> bool {
    let br = match &r.response {
        Some(processing_response::Response::RequestBody(b) | processing_response::Response::ResponseBody(b)) => b,
        _ => return false,
    };
    matches!(
        br.response.as_ref().and_then(|c| c.body_mutation.as_ref()).and_then(|m| m.mutation.as_ref()),
        Some(body_mutation::Mutation::StreamedResponse(s)) if s.end_of_stream
    )
}

/// One request as Envoy sends it; returns the pick's round trip.
async fn one_stream(ch: Channel, body: Vec<u8>) -> anyhow::Result<Duration> {
    let (tx, rx) = mpsc::channel(8);
    let t0 = Instant::now();
    let headers = header_map(&[
        (":method", "POST"),
        (":path", "/v1/completions"),
        (":authority", "gateway"),
        ("content-type", "application/json"),
    ]);
    tx.send(message(
        processing_request::Request::RequestHeaders(HttpHeaders { headers: Some(headers), ..Default::default() }),
        true,
    ))
    .await?;
    tx.send(message(
        processing_request::Request::RequestBody(HttpBody { body, end_of_stream: true, ..Default::default() }),
        false,
    ))
    .await?;
    let mut client = ExternalProcessorClient::new(ch).max_encoding_message_size(64 << 20);
    let mut inbound = client.process(ReceiverStream::new(rx)).await?.into_inner();
    // The pick: the headers response with the destination, then the re-streamed body.
    let mut picked = false;
    loop {
        let r = inbound.message().await?.context("stream ended before the pick")?;
        match &r.response {
            Some(processing_response::Response::RequestHeaders(h)) => {
                let dest = h.response.as_ref().and_then(|c| c.header_mutation.as_ref()).is_some_and(|m| {
                    m.set_headers
                        .iter()
                        .any(|o| o.header.as_ref().is_some_and(|h| h.key == "x-gateway-destination-endpoint"))
                });
                if !dest {
                    bail!("headers response without a destination");
                }
                picked = true;
            }
            Some(processing_response::Response::ImmediateResponse(ir)) => bail!("immediate response {:?}", ir.status),
            _ if ends_body(&r) && picked => break,
            _ => {}
        }
    }
    let rtt = t0.elapsed();
    // The response, so the EPP releases the request's load as it would in production.
    let resp_headers = header_map(&[(":status", "200"), ("content-type", "application/json")]);
    tx.send(message(
        processing_request::Request::ResponseHeaders(HttpHeaders { headers: Some(resp_headers), ..Default::default() }),
        false,
    ))
    .await?;
    let usage = br#"{"usage":{"prompt_tokens":1000,"completion_tokens":16,"total_tokens":1016}}"#.to_vec();
    tx.send(message(
        processing_request::Request::ResponseBody(HttpBody { body: usage, end_of_stream: true, ..Default::default() }),
        false,
    ))
    .await?;
    loop {
        match inbound.message().await? {
            Some(r) if ends_body(&r) => break,
            Some(_) => {}
            None => break,
        }
    }
    Ok(rtt)
}

/// utime + stime of `pid` in clock ticks, from /proc.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
fn clock_ticks_per_s() -> f64 {
    100.0
}

/// (VmRSS, VmHWM) of `pid` in MiB; zeros where /proc is unavailable.
fn rss(pid: u32) -> (f64, f64) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return (0.0, 0.0) };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reads `inference_extension_prefix_indexer_size` from the EPP's /metrics.
async fn scrape_prefix_size(addr: SocketAddr) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: epp\r\n\r\n").await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let line = text
        .lines()
        .find(|l| l.starts_with("inference_extension_prefix_indexer_size "))
        .context("no prefix index size in the EPP's metrics")?;
    Ok(line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_asked_size_and_share_prefixes() {
        let p = Prompts::new(4096);
        let (a, b, c) = (p.body(1), p.body(65), p.body(2));
        let prompt =
            |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap()["prompt"].as_str().unwrap().to_string();
        assert_eq!(prompt(&a).len(), 4096);
        assert_eq!(prompt(&a)[..3072], prompt(&b)[..3072], "same system prompt every 64 requests");
        assert_ne!(prompt(&a), prompt(&b), "unique tails");
        assert_ne!(prompt(&a)[..100], prompt(&c)[..100]);
    }
}
