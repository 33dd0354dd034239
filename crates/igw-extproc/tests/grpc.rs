//! End to end over real sockets: the tonic client plays Envoy against `serve`, plaintext and TLS.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, ProtocolConfiguration, body_mutation,
    processing_request, processing_response,
};
use hyper_util::rt::TokioIo;
use igw_extproc::{Health, Listeners, ServerConfig, TlsConfig, serve};
use igw_testkit::TestPool;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

struct Running {
    ext_proc: SocketAddr,
    health: SocketAddr,
    picker: Arc<TestPool>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.done).await.unwrap().unwrap();
    }
}

async fn start(secure: bool) -> Running {
    let ext = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ext_proc, health_addr) = (ext.local_addr().unwrap(), health.local_addr().unwrap());
    let picker = TestPool::round_robin(igw_testkit::datastore("10.0.0.1:8000,10.0.0.2:8000"));
    let config = ServerConfig { tls: TlsConfig { secure_serving: secure, ..Default::default() }, ..Default::default() };
    let (stop, rx) = oneshot::channel::<()>();
    let h = Health::new(true).await;
    let listeners = Listeners { ext_proc: ext, health: Some(health) };
    let p = picker.pool.clone();
    let done = tokio::spawn(async move {
        serve(config, p, listeners, h, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Running { ext_proc, health: health_addr, picker, stop: Some(stop), done }
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A channel to `addr`: h2c, or TLS without verification (as gateways connect to the EPP).
async fn channel(addr: SocketAddr, secure: bool) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    if !secure {
        return endpoint.connect().await.unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .unwrap()
}

fn headers(h: &[(&str, &str)], eos: bool) -> ProcessingRequest {
    let headers = HeaderMap {
        headers: h
            .iter()
            .map(|(k, v)| HeaderValue { key: k.to_string(), value: String::new(), raw_value: v.as_bytes().to_vec() })
            .collect(),
    };
    ProcessingRequest {
        request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
            headers: Some(headers),
            end_of_stream: eos,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn body(b: &[u8], eos: bool, response: bool) -> ProcessingRequest {
    let hb = HttpBody { body: b.to_vec(), end_of_stream: eos, ..Default::default() };
    let r = if response {
        processing_request::Request::ResponseBody(hb)
    } else {
        processing_request::Request::RequestBody(hb)
    };
    ProcessingRequest { request: Some(r), ..Default::default() }
}

/// One ext_proc stream: a sender of requests and the response stream.
struct Stream {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: tonic::Streaming<ProcessingResponse>,
}

impl Stream {
    async fn open(ch: Channel) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        let mut client = ExternalProcessorClient::new(ch).max_encoding_message_size(64 << 20);
        let rx = client.process(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Stream { tx, rx }
    }
    async fn send(&self, m: ProcessingRequest) {
        self.tx.send(m).await.unwrap();
    }
    async fn recv(&mut self) -> ProcessingResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await.unwrap().unwrap().unwrap()
    }
}

fn destination(r: &ProcessingResponse) -> String {
    let Some(processing_response::Response::RequestHeaders(h)) = &r.response else { panic!("{r:?}") };
    let set = &h.response.as_ref().unwrap().header_mutation.as_ref().unwrap().set_headers;
    let d = set.iter().find(|o| o.header.as_ref().unwrap().key == "x-gateway-destination-endpoint").unwrap();
    String::from_utf8(d.header.as_ref().unwrap().raw_value.clone()).unwrap()
}

async fn full_exchange(secure: bool) {
    let srv = start(secure).await;
    let ch = channel(srv.ext_proc, secure).await;

    // Duplex: request, then a streamed response.
    let mut s = Stream::open(ch.clone()).await;
    s.send(headers(&[(":path", "/v1/completions"), (":method", "POST")], false)).await;
    s.send(body(br#"{"model":"m","#, false, false)).await;
    s.send(body(br#""prompt":"hi"}"#, true, false)).await;
    assert_eq!(destination(&s.recv().await), "10.0.0.1:8000");
    let Some(processing_response::Response::RequestBody(b)) = s.recv().await.response else { panic!() };
    let Some(body_mutation::Mutation::StreamedResponse(sr)) = b.response.unwrap().body_mutation.unwrap().mutation
    else {
        panic!()
    };
    assert_eq!(sr.body, br#"{"model":"m","prompt":"hi"}"#);
    assert!(sr.end_of_stream);
    assert_eq!(srv.picker.in_flight(), 1);
    s.send(headers(&[(":status", "200")], false)).await;
    let mut rh = headers(&[(":status", "200")], false);
    rh.request = match rh.request {
        Some(processing_request::Request::RequestHeaders(h)) => Some(processing_request::Request::ResponseHeaders(h)),
        other => other,
    };
    drop(s);

    // Same again, completing the response this time.
    let mut s = Stream::open(ch.clone()).await;
    s.send(headers(&[(":path", "/v1/completions")], false)).await;
    s.send(body(br#"{"model":"m","prompt":"hi"}"#, true, false)).await;
    s.recv().await;
    s.recv().await;
    s.send(rh).await;
    assert!(matches!(s.recv().await.response, Some(processing_response::Response::ResponseHeaders(_))));
    s.send(body(b"{\"usage\":{}}", true, true)).await;
    assert!(matches!(s.recv().await.response, Some(processing_response::Response::ResponseBody(_))));
    assert!(s.rx.message().await.unwrap().is_none(), "stream closed once the response ended");

    // Errors are ImmediateResponses.
    let mut s = Stream::open(ch.clone()).await;
    s.send(headers(&[(":path", "/v1/completions")], false)).await;
    s.send(body(b"not json", true, false)).await;
    let Some(processing_response::Response::ImmediateResponse(ir)) = s.recv().await.response else { panic!() };
    assert_eq!(ir.status.unwrap().code, 400);

    // BUFFERED with a body well over 4 MiB in one message.
    let mut s = Stream::open(ch.clone()).await;
    let mut h = headers(&[(":path", "/v1/completions")], false);
    h.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: BodySendMode::Buffered as i32,
        response_body_mode: BodySendMode::Streamed as i32,
        ..Default::default()
    });
    s.send(h).await;
    assert!(matches!(s.recv().await.response, Some(processing_response::Response::RequestHeaders(_))));
    let big = format!(r#"{{"model":"m","prompt":"{}"}}"#, "y".repeat(6 << 20));
    s.send(body(big.as_bytes(), true, false)).await;
    let r = s.recv().await;
    assert!(matches!(r.response, Some(processing_response::Response::RequestBody(_))));
    assert!(r.dynamic_metadata.is_some());
    drop(s);

    // The aborted and buffered streams release their picks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while srv.picker.in_flight() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "picks never finished");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Health: the ext_proc service name on the ext_proc port, the probe names on the health port.
    let mut hc = HealthClient::new(ch);
    let status = |r: tonic::Response<tonic_health::pb::HealthCheckResponse>| r.into_inner().status;
    let svc = "envoy.service.ext_proc.v3.ExternalProcessor".to_string();
    assert_eq!(status(hc.check(HealthCheckRequest { service: svc }).await.unwrap()), 1);
    let mut hc = HealthClient::new(channel(srv.health, false).await);
    for name in ["", "liveness", "readiness", "inference-extension"] {
        assert_eq!(status(hc.check(HealthCheckRequest { service: name.into() }).await.unwrap()), 1, "{name}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn plaintext_end_to_end() {
    full_exchange(false).await;
}

#[tokio::test]
async fn tls_end_to_end() {
    full_exchange(true).await;
}

#[tokio::test]
async fn readiness_follows_health_state() {
    let h = Health::new(false).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = h.service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let mut hc = HealthClient::new(channel(addr, false).await);
    let check = |name: &'static str| HealthCheckRequest { service: name.into() };
    assert_eq!(hc.check(check("inference-extension")).await.unwrap().into_inner().status, 2, "NOT_SERVING");
    assert_eq!(hc.check(check("liveness")).await.unwrap().into_inner().status, 1);
    h.set_ready(true).await;
    assert_eq!(hc.check(check("readiness")).await.unwrap().into_inner().status, 1);
}
