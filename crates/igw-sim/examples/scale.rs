//! Scale measurement: 16 in-process replicas, streamed completions over loopback, token arrival times
//! against the modelled ones.
//!
//! `cargo run --release -p igw-sim --example scale -- [time_scale] [streams_per_replica] [seconds] [replicas]`
//!
//! Reports aggregate streamed tokens/s and the absolute timing error of each token (arrival at the client vs the
//! modelled time of its step end) at p50/p99, in ms and relative to the token's modelled (scaled)
//! inter-token interval.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use igw_sim::profile::Profile;
use igw_sim::{Fleet, FleetConfig};

fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// igw's one percentile definition (nearest rank).
fn pct(v: &mut [f64], q: f64) -> f64 {
    igw_core::stats::quantile(v, q)
}

/// One keep-alive client: sends streamed completions back to back until `until`; returns
/// ((port, request number, token index) → arrival) for every token.
async fn client(addr: std::net::SocketAddr, until: Instant, prompt: String) -> Vec<((u16, u64, u32), Instant)> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let body = format!(r#"{{"prompt":"{prompt}","max_tokens":128,"ignore_eos":true,"stream":true}}"#);
    let mut out = Vec::new();
    while Instant::now() < until {
        let req = hyper::Request::post("/v1/completions")
            .header("host", "x")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let mut resp = sender.send_request(req).await.unwrap().into_body();
        let mut req_no = None;
        let mut index = 0u32;
        while let Some(frame) = resp.frame().await {
            let now = Instant::now();
            let Ok(data) = frame.unwrap().into_data() else { continue };
            let text = std::str::from_utf8(&data).unwrap();
            if req_no.is_none()
                && let Some(p) = text.find("\"id\":\"cmpl-")
            {
                let rest = &text[p + 11..];
                let end = rest.find('"').unwrap();
                let (port, n) = rest[..end].split_once('-').unwrap();
                req_no = Some((port.parse::<u16>().unwrap(), n.parse::<u64>().unwrap()));
            }
            let events = text.matches("\"text\":").count();
            for _ in 0..events {
                let (port, n) = req_no.unwrap();
                out.push(((port, n, index), now));
                index += 1;
            }
        }
    }
    out
}

fn main() {
    let time_scale: f64 = arg(1, 1.0);
    let per_replica: usize = arg(2, 2);
    let seconds: f64 = arg(3, 10.0);
    let replicas: usize = arg(4, 16);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let mut cfg = FleetConfig::new(Profile::llama2_7b_h100());
        cfg.time_scale = time_scale;
        cfg.record_token_times = true;
        cfg.seed = 1;
        let fleet = Fleet::bind(cfg, replicas, 0).await.unwrap();
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(seconds);
        let mut handles = Vec::new();
        for (i, addr) in fleet.addrs().iter().enumerate() {
            for c in 0..per_replica {
                let prompt = format!("replica {i} client {c} ").repeat(20);
                handles.push(tokio::spawn(client(*addr, until, prompt)));
            }
        }
        let mut arrivals: HashMap<(u16, u64, u32), Instant> = HashMap::new();
        for h in handles {
            arrivals.extend(h.await.unwrap());
        }
        let elapsed = start.elapsed().as_secs_f64();
        let ports: Vec<u16> = fleet.addrs().iter().map(|a| a.port()).collect();
        let mut due: HashMap<(u16, u64, u32), Instant> = HashMap::new();
        for t in fleet.token_trace() {
            due.insert((ports[t.replica], t.request, t.index), t.due);
        }
        let (mut late_ms, mut rel) = (Vec::new(), Vec::new());
        for (k, at) in &arrivals {
            let Some(d) = due.get(k) else { continue };
            let late = at.saturating_duration_since(*d).as_secs_f64() - d.saturating_duration_since(*at).as_secs_f64();
            late_ms.push(late.abs() * 1000.0);
            if k.2 > 0
                && let Some(prev) = due.get(&(k.0, k.1, k.2 - 1))
            {
                let itl = d.saturating_duration_since(*prev).as_secs_f64();
                if itl > 0.0 {
                    rel.push(late.abs() / itl);
                }
            }
        }
        println!(
            "replicas={replicas} streams={} time_scale={time_scale} tokens={} elapsed={elapsed:.1}s tokens/s={:.0}",
            replicas * per_replica,
            arrivals.len(),
            arrivals.len() as f64 / elapsed
        );
        println!(
            "|arrival - modelled| ms: p50={:.3} p99={:.3} max={:.3}; relative to modelled ITL: p50={:.2}% p99={:.2}%",
            pct(&mut late_ms, 0.5),
            pct(&mut late_ms, 0.99),
            pct(&mut late_ms, 1.0),
            100.0 * pct(&mut rel, 0.5),
            100.0 * pct(&mut rel, 0.99)
        );
        fleet.shutdown().await;
    });
}
