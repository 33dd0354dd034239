//! What surrounds the stream driver: the fake pool the EPP scrapes, the EPP's readiness, the
//! gRPC channels (h2c or unverified TLS), and the EPP's CPU, memory and prefix-index size.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::transport::{Channel, Endpoint, Uri};

use super::ExtprocError;

/// `n` loopback servers answering every request with a vLLM `/metrics` page (queue lengths and KV
/// use differ per server); sending `true` on the returned channel, or dropping it, stops them.
pub(super) async fn metrics_servers(
    n: usize,
) -> Result<(Vec<SocketAddr>, tokio::sync::watch::Sender<bool>), ExtprocError> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut addrs = Vec::with_capacity(n);
    for i in 0..n {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(ExtprocError::Bind)?;
        addrs.push(l.local_addr()?);
        let page = Bytes::from(format!(
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
        tokio::spawn(serve_page(l, page, rx.clone()));
    }
    Ok((addrs, tx))
}

/// Serves `page` on `listener` (HTTP/1.1 and h2c) until `stop` turns true or its sender is dropped.
async fn serve_page(listener: tokio::net::TcpListener, page: Bytes, mut stop: tokio::sync::watch::Receiver<bool>) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors and similar: back off briefly, keep serving.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let page = page.clone();
        let service = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
            let page = page.clone();
            async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(page))) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// Polls the EPP's gRPC health until it serves (or 30 s pass).
pub(super) async fn wait_ready(addr: SocketAddr) -> Result<(), ExtprocError> {
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
            return Err(ExtprocError::NotReady(addr));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A channel to the EPP: h2c, or TLS without verification.
pub(super) async fn channel(addr: SocketAddr, tls: bool) -> Result<Channel, ExtprocError> {
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
                Ok::<_, std::io::Error>(TokioIo::new(tls))
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

/// utime + stime of `pid` in clock ticks, from /proc.
pub(super) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

/// utime + stime from the text of `/proc/PID/stat`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
pub(super) fn clock_ticks_per_s() -> f64 {
    100.0
}

/// (VmRSS, VmHWM) of `pid` in MiB; zeros where /proc is unavailable.
pub(super) fn rss(pid: u32) -> (f64, f64) {
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

/// Reads `inference_extension_prefix_indexer_size` from the EPP's /metrics (`None` when it
/// cannot be read).
pub(super) async fn scrape_prefix_size(addr: SocketAddr) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: epp\r\n\r\n").await.ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    let line = text.lines().find(|l| l.starts_with("inference_extension_prefix_indexer_size "))?;
    Some(line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (igw (epp) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("4242 (igw) S 1"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
        let own = cpu_ticks(std::process::id());
        assert!(own.is_some() || !std::path::Path::new("/proc/self/stat").exists());
    }

    #[tokio::test]
    async fn the_pool_serves_vllm_pages_until_stopped() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addrs, stop) = metrics_servers(2).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(addrs[1]).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        assert!(text.contains("vllm:num_requests_waiting{model_name=\"m\"} 1\n"), "{text}");
        assert!(text.contains("vllm:num_requests_running{model_name=\"m\"} 9\n"), "{text}");
        stop.send(true).unwrap();
    }
}
