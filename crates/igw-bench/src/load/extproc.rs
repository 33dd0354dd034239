//! `igw bench extproc`: drives a real `igw epp` process over gRPC exactly as Envoy does
//! (FULL_DUPLEX_STREAMED: request headers, body, then the response) at a fixed open-loop rate,
//! and reports achieved requests/s, the client-side round trip of each pick, errors and the
//! EPP's CPU and memory.
//!
//! The pool is `endpoints` tiny HTTP servers on loopback that serve a vLLM-shaped `/metrics`
//! page (with different queue lengths), so the EPP scrapes fresh metrics and runs its normal
//! scoring path (not the all-stale fallback). Prompts share one of 64 long system prompts and
//! end uniquely, so the prefix index grows and is matched as in production. The stream driver
//! speaks envoy-types over tonic directly; it needs no igw driver crate.

mod epp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, ProtocolConfiguration, body_mutation,
    processing_request, processing_response,
};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::process::{Children, free_port};

/// What stops the benchmark (a failed stream is counted in [`ExtprocReport::errors`] instead).
#[derive(Debug, Error)]
pub enum ExtprocError {
    /// A setting out of range (the message names it).
    #[error("{0}")]
    Invalid(&'static str),
    /// A loopback pool endpoint could not be bound.
    #[error("binding a pool endpoint")]
    Bind(#[source] std::io::Error),
    /// The EPP could not be started.
    #[error("starting {} epp", .bin.display())]
    Spawn {
        /// The igw binary.
        bin: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The EPP's gRPC health did not report serving in time.
    #[error("the EPP did not become ready on {0} within 30 s")]
    NotReady(SocketAddr),
    /// Connecting to the EPP.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// The TLS client configuration.
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    /// A socket operation.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ExtprocConfig {
    /// Endpoints in the pool (each a loopback server with a vLLM-shaped /metrics page).
    pub endpoints: usize,
    /// Request body size in bytes (the prompt dominates it).
    pub prompt_bytes: usize,
    /// Offered requests per second (open loop: a late request does not delay the next).
    pub rps: f64,
    /// How long to offer load, after a warm-up of a tenth of it.
    pub duration: Duration,
    /// HTTP/2 connections to the EPP (Envoy opens a few per worker).
    pub connections: usize,
    /// Connect with TLS (the EPP's self-signed certificate, not verified, as gateways do).
    pub tls: bool,
    /// Scheduling policy of the EPP.
    pub policy: String,
    /// Run the EPP with flow control (`igw epp --flow-control`).
    pub flow_control: bool,
    /// The igw binary run as the EPP.
    pub igw_bin: PathBuf,
}

impl ExtprocConfig {
    /// Checks that the pool size, the rate and the connections are positive.
    pub fn check(&self) -> Result<(), ExtprocError> {
        if self.endpoints == 0 || self.rps <= 0.0 || self.connections == 0 {
            return Err(ExtprocError::Invalid("--endpoints, --rps and --connections must be positive"));
        }
        Ok(())
    }
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

impl ExtprocReport {
    /// The report as four lines of text: the setup, the rates, the round trip, the EPP's cost.
    pub fn text(&self) -> String {
        let r = self;
        format!(
            "igw epp · {} endpoints · {}-byte bodies · policy {} · {} · {} connections\n\
             offered {:.0} req/s → achieved {:.0} req/s · {} completed · {} errors\n\
             pick round trip at the client: p50 {:.0} µs · p99 {:.0} µs · p99.9 {:.0} µs\n\
             EPP: {:.0} µs CPU per request · {:.1} MiB resident, {:.1} MiB peak · prefix index {} entries\n",
            r.endpoints,
            r.prompt_bytes,
            r.policy,
            if r.tls { "TLS" } else { "h2c" },
            r.connections,
            r.offered_rps,
            r.rps,
            r.completed,
            r.errors,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.epp_cpu_us_per_request,
            r.rss_mib,
            r.peak_rss_mib,
            r.prefix_index_entries
        )
    }
}

/// Starts the pool and the EPP, offers the load (after a warm-up of a tenth of the duration),
/// measures, and stops both.
pub async fn run(cfg: &ExtprocConfig) -> Result<ExtprocReport, ExtprocError> {
    cfg.check()?;
    let (pool, stop_pool) = epp::metrics_servers(cfg.endpoints).await?;
    let (grpc, health, metrics) = (free_port()?, free_port()?, free_port()?);
    let bin = &cfg.igw_bin;
    let list = pool.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let child = Command::new(bin)
        .args(["epp", "--bind-address", "127.0.0.1", "--endpoints", &list, "--policy", &cfg.policy])
        .args(["--grpc-port", &grpc.to_string(), "--grpc-health-port", &health.to_string()])
        .args(["--metrics-port", &metrics.to_string(), "--secure-serving", if cfg.tls { "true" } else { "false" }])
        .args(["--flow-control", if cfg.flow_control { "true" } else { "false" }])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|source| ExtprocError::Spawn { bin: bin.clone(), source })?;
    let pid = child.id();
    let mut epp = Children::default();
    epp.push("igw epp", child);
    let addr = SocketAddr::from(([127, 0, 0, 1], grpc));
    epp::wait_ready(SocketAddr::from(([127, 0, 0, 1], health))).await?;
    // Let the first scrape land so that decisions see fresh metrics.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut channels = Vec::new();
    for _ in 0..cfg.connections {
        channels.push(epp::channel(addr, cfg.tls).await?);
    }
    let prompts = Prompts::new(cfg.prompt_bytes);
    let warmup = cfg.duration / 10;
    let _ = drive(&channels, &prompts, cfg.rps, warmup).await;
    let cpu_before = epp::cpu_ticks(pid);
    let (latencies, errors, elapsed) = drive(&channels, &prompts, cfg.rps, cfg.duration).await;
    let cpu_after = epp::cpu_ticks(pid);

    let (rss_mib, peak_rss_mib) = epp::rss(pid);
    let prefix_index_entries = epp::scrape_prefix_size(SocketAddr::from(([127, 0, 0, 1], metrics))).await.unwrap_or(0);
    epp.stop();
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
        endpoints: cfg.endpoints,
        prompt_bytes: cfg.prompt_bytes,
        offered_rps: cfg.rps,
        rps: l.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        completed: l.len() as u64,
        errors,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        epp_cpu_us_per_request: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) if !l.is_empty() => (b - a) as f64 * 1e6 / epp::clock_ticks_per_s() / l.len() as f64,
            _ => 0.0,
        },
        rss_mib,
        peak_rss_mib,
        prefix_index_entries,
        tls: cfg.tls,
        connections: cfg.connections,
        policy: cfg.policy.clone(),
        flow_control: cfg.flow_control,
    })
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
            let _ = tx.send(one_stream(ch, body).await);
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

/// One request as Envoy sends it; returns the pick's round trip, or `None` when the stream
/// failed (a gRPC error, an immediate response, a headers response without a destination, or
/// the stream ending before the pick).
async fn one_stream(ch: Channel, body: Vec<u8>) -> Option<Duration> {
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
    .await
    .ok()?;
    tx.send(message(
        processing_request::Request::RequestBody(HttpBody { body, end_of_stream: true, ..Default::default() }),
        false,
    ))
    .await
    .ok()?;
    let mut client = ExternalProcessorClient::new(ch).max_encoding_message_size(64 << 20);
    let mut inbound = client.process(ReceiverStream::new(rx)).await.ok()?.into_inner();
    // The pick: the headers response with the destination, then the re-streamed body.
    let mut picked = false;
    loop {
        let r = inbound.message().await.ok()??;
        match &r.response {
            Some(processing_response::Response::RequestHeaders(h)) => {
                let dest = h.response.as_ref().and_then(|c| c.header_mutation.as_ref()).is_some_and(|m| {
                    m.set_headers
                        .iter()
                        .any(|o| o.header.as_ref().is_some_and(|h| h.key == "x-gateway-destination-endpoint"))
                });
                if !dest {
                    return None;
                }
                picked = true;
            }
            Some(processing_response::Response::ImmediateResponse(_)) => return None,
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
    .await
    .ok()?;
    let usage = br#"{"usage":{"prompt_tokens":1000,"completion_tokens":16,"total_tokens":1016}}"#.to_vec();
    tx.send(message(
        processing_request::Request::ResponseBody(HttpBody { body: usage, end_of_stream: true, ..Default::default() }),
        false,
    ))
    .await
    .ok()?;
    loop {
        match inbound.message().await.ok()? {
            Some(r) if ends_body(&r) => break,
            Some(_) => {}
            None => break,
        }
    }
    Some(rtt)
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

    #[test]
    fn settings_are_checked_and_the_text_has_four_lines() {
        let cfg = ExtprocConfig {
            endpoints: 0,
            prompt_bytes: 4096,
            rps: 1.0,
            duration: Duration::from_secs(1),
            connections: 1,
            tls: false,
            policy: "igw".into(),
            flow_control: false,
            igw_bin: "igw".into(),
        };
        assert_eq!(cfg.check().unwrap_err().to_string(), "--endpoints, --rps and --connections must be positive");
        let r = ExtprocReport {
            endpoints: 4,
            prompt_bytes: 4096,
            offered_rps: 100.0,
            rps: 99.6,
            completed: 50,
            errors: 0,
            p50_us: 812.4,
            p99_us: 1500.0,
            p999_us: 2000.0,
            epp_cpu_us_per_request: 41.0,
            rss_mib: 18.3,
            peak_rss_mib: 19.0,
            prefix_index_entries: 123,
            tls: false,
            connections: 4,
            policy: "igw".into(),
            flow_control: false,
        };
        assert_eq!(
            r.text(),
            "igw epp · 4 endpoints · 4096-byte bodies · policy igw · h2c · 4 connections\n\
             offered 100 req/s → achieved 100 req/s · 50 completed · 0 errors\n\
             pick round trip at the client: p50 812 µs · p99 1500 µs · p99.9 2000 µs\n\
             EPP: 41 µs CPU per request · 18.3 MiB resident, 19.0 MiB peak · prefix index 123 entries\n"
        );
    }

    #[tokio::test]
    async fn a_missing_epp_binary_is_named() {
        let cfg = ExtprocConfig {
            endpoints: 2,
            prompt_bytes: 64,
            rps: 1.0,
            duration: Duration::from_millis(10),
            connections: 1,
            tls: false,
            policy: "igw".into(),
            flow_control: false,
            igw_bin: "/nonexistent/igw".into(),
        };
        let e = run(&cfg).await.unwrap_err();
        assert_eq!(e.to_string(), "starting /nonexistent/igw epp");
        assert!(std::error::Error::source(&e).is_some());
    }
}
