//! The gRPC server: `ExternalProcessor/Process` on the ext_proc port (TLS by default, with
//! gRPC health for the ext_proc service name), and plaintext gRPC health on the health port.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures::FutureExt;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::conn::incoming;
use crate::health::Health;
use crate::stream::{Step, StreamConfig, StreamState};
use crate::tls::{TlsConfig, TlsError, server_config};
use igw_request::Pool;

/// Everything [`serve`] needs besides the pool and the listeners.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Per-stream behaviour.
    pub stream: StreamConfig,
    /// TLS of the ext_proc port.
    pub tls: TlsConfig,
    /// Largest gRPC message accepted or sent. Default 64 MiB, well above grpc-go's 4 MiB, for
    /// gateways that send whole bodies (`BUFFERED`).
    pub max_message_bytes: usize,
    /// HTTP/2 concurrent streams per connection; one stream is one in-flight HTTP request, and
    /// LLM responses are long. Default unlimited, as grpc-go.
    pub max_concurrent_streams: Option<u32>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            stream: StreamConfig::default(),
            tls: TlsConfig::default(),
            max_message_bytes: 64 * 1024 * 1024,
            max_concurrent_streams: Some(u32::MAX),
        }
    }
}

/// Pre-bound listeners (bind `127.0.0.1:0` in tests and read the port back).
#[derive(Debug)]
pub struct Listeners {
    /// The ext_proc port (`--grpc-port`, default 9002).
    pub ext_proc: TcpListener,
    /// The plaintext gRPC health port (`--grpc-health-port`, default 9003), if served.
    pub health: Option<TcpListener>,
}

/// Why the server stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves ext_proc (and health on the ext_proc port) on `listeners.ext_proc`, and health on
/// `listeners.health`, until `shutdown` completes; then drains gracefully.
pub async fn serve(
    config: ServerConfig,
    pool: Arc<Pool>,
    listeners: Listeners,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = if config.tls.secure_serving { Some(server_config(&config.tls)?) } else { None };
    let shutdown = shutdown.shared();
    let ext_proc = ExternalProcessorServer::new(ExtProcService::new(pool, config.stream.clone()))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let main = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .add_service(health.service())
        .add_service(ext_proc)
        .serve_with_incoming_shutdown(incoming(listeners.ext_proc, tls), shutdown.clone());
    match listeners.health {
        None => main.await?,
        Some(l) => {
            let health_server = tonic::transport::Server::builder()
                .add_service(health.service())
                .serve_with_incoming_shutdown(incoming(l, None), shutdown);
            let (a, b) = tokio::join!(main, health_server);
            a?;
            b?;
        }
    }
    Ok(())
}

/// The `ExternalProcessor` service: one task per stream driving a [`StreamState`].
#[derive(Clone)]
pub struct ExtProcService {
    pool: Arc<Pool>,
    config: Arc<StreamConfig>,
}

impl std::fmt::Debug for ExtProcService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtProcService").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ExtProcService {
    /// A service running every stream's request through `pool`.
    pub fn new(pool: Arc<Pool>, config: StreamConfig) -> Self {
        ExtProcService { pool, config: Arc::new(config) }
    }
}

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let state = StreamState::new(self.pool.clone(), self.config.clone());
        tokio::spawn(drive(inbound, tx, state, self.pool.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type Tx = mpsc::Sender<Result<ProcessingResponse, Status>>;

/// Sends `out` in order; false if the gateway went away.
async fn send_all(tx: &Tx, out: Vec<ProcessingResponse>) -> bool {
    for r in out {
        if tx.send(Ok(r)).await.is_err() {
            return false;
        }
    }
    true
}

/// Runs one stream. Ends when the state machine is done, the gateway closes or resets the
/// stream, or the response channel closes; dropping `state` then reports an unfinished pick.
async fn drive(mut inbound: Streaming<ProcessingRequest>, tx: Tx, mut state: StreamState, pool: Arc<Pool>) {
    // Messages that arrived while a pick was pending (e.g. request trailers).
    let mut backlog: VecDeque<ProcessingRequest> = VecDeque::new();
    while !state.is_done() {
        let msg = match backlog.pop_front() {
            Some(m) => m,
            None => match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(%status, "ext_proc stream ended by the gateway");
                    return;
                }
            },
        };
        let step = match state.on_message(msg) {
            Step::Pick(pending) => {
                // Await admission, but keep reading: a reset stream cancels a queued request.
                let result = {
                    let pick = pool.admit(pending.prepared());
                    tokio::pin!(pick);
                    loop {
                        tokio::select! {
                            r = &mut pick => break Some(r),
                            m = inbound.message() => match m {
                                Ok(Some(m)) => backlog.push_back(m),
                                _ => break None,
                            },
                        }
                    }
                };
                match result {
                    Some(r) => state.on_picked(pending, r),
                    None => return,
                }
            }
            other => other,
        };
        match step {
            Step::Reply(out) => {
                if !send_all(&tx, out).await {
                    return;
                }
            }
            Step::Fail(status) => {
                tracing::warn!(%status, "ext_proc stream failed");
                let _ = tx.send(Err(status)).await;
                return;
            }
            Step::Pick(_) => {
                let _ = tx.send(Err(Status::internal("the request was admitted twice"))).await;
                return;
            }
        }
    }
}
