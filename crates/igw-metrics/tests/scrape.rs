//! The scrape loop against a local HTTP server (bound on 127.0.0.1:0) whose answer can be
//! switched: the vLLM fixture, a 500, a response that never comes, a truncated page, garbage.
//! Synchronisation is on observable events (requests the server received), never fixed sleeps.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use igw_core::endpoint::ENGINE_TYPE_LABEL;
use igw_core::{Datastore, Endpoint, EndpointMeta, EndpointMetrics};
use igw_metrics::{EngineRegistry, ScrapeConfig, ScrapeError, Scraper, SyncReport};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const VLLM: &[u8] = include_bytes!("fixtures/vllm.txt");
const SGLANG: &[u8] = include_bytes!("fixtures/sglang.txt");
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Page,
    Sglang,
    Status500,
    Hang,
    Truncated,
    Garbage,
}

struct Server {
    addr: std::net::SocketAddr,
    mode: Mutex<Mode>,
    hits: watch::Sender<usize>,
    /// The waiting count served in `Page` mode, so tests can see a change.
    waiting: Mutex<u32>,
    /// The `/v1/models` body (`None`: 404); its requests are counted apart from the scrapes.
    models: Mutex<Option<String>>,
    model_hits: watch::Sender<usize>,
}

impl Server {
    async fn start(mode: Mode) -> Arc<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Arc::new(Server {
            addr: listener.local_addr().unwrap(),
            mode: Mutex::new(mode),
            hits: watch::Sender::new(0),
            waiting: Mutex::new(12),
            models: Mutex::new(None),
            model_hits: watch::Sender::new(0),
        });
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(s.clone().connection(sock));
            }
        });
        server
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }

    fn hits(&self) -> usize {
        *self.hits.borrow()
    }

    /// Waits until the server has received `n` more requests than `from`.
    async fn wait_hits(&self, from: usize, n: usize) {
        let mut rx = self.hits.subscribe();
        tokio::time::timeout(DEADLINE, rx.wait_for(|&h| h >= from + n)).await.unwrap().unwrap();
    }

    fn body(&self, mode: Mode) -> Vec<u8> {
        let page = String::from_utf8(VLLM.to_vec()).unwrap();
        let waiting = *self.waiting.lock();
        let page = page.replace("} 12.0\n", &format!("}} {waiting}.0\n"));
        match mode {
            Mode::Sglang => SGLANG.to_vec(),
            // Cut inside the KV-usage line: queue and running survive.
            Mode::Truncated => {
                let at = page.find("vllm:kv_cache_usage_perc{").unwrap() + 30;
                page.as_bytes()[..at].to_vec()
            }
            Mode::Garbage => b"\x00\xffnot { a \"metrics page\n\n}}}".repeat(50),
            _ => page.into_bytes(),
        }
    }

    async fn connection(self: Arc<Self>, mut sock: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let is_models = buf.starts_with(b"GET /v1/models ");
            buf.drain(..end);
            if is_models {
                let models = self.models.lock().clone();
                self.model_hits.send_modify(|h| *h += 1);
                let (status, body) = match models {
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", "{}".to_owned()),
                };
                let head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n", body.len());
                if sock.write_all(head.as_bytes()).await.is_err() || sock.write_all(body.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            let mode = *self.mode.lock();
            self.hits.send_modify(|h| *h += 1);
            let (status, body) = match mode {
                Mode::Status500 => ("500 Internal Server Error", b"boom".to_vec()),
                Mode::Hang => {
                    // Never answer; the client times out and drops the connection.
                    let mut sink = [0u8; 64];
                    while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
                    return;
                }
                m => ("200 OK", self.body(m)),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            if sock.write_all(head.as_bytes()).await.is_err() || sock.write_all(&body).await.is_err() {
                return;
            }
        }
    }
}

fn config() -> ScrapeConfig {
    ScrapeConfig { interval: Duration::from_millis(5), timeout: Duration::from_millis(200), ..ScrapeConfig::default() }
}

fn meta(addr: std::net::SocketAddr, engine: Option<&str>) -> EndpointMeta {
    let mut m = EndpointMeta::from_addr(addr);
    if let Some(e) = engine {
        m.labels.insert(ENGINE_TYPE_LABEL.into(), e.into());
    }
    m
}

fn only_endpoint(ds: &Datastore) -> Arc<Endpoint> {
    ds.snapshot().endpoints[0].clone()
}

#[tokio::test]
async fn scrape_loop_publishes_and_handles_failures() {
    let server = Server::start(Mode::Page).await;
    let ds = Datastore::with_endpoints([meta(server.addr, None)]);
    let scraper = Scraper::new(config(), EngineRegistry::builtin());
    assert_eq!(scraper.sync(&ds.snapshot()), SyncReport { started: 1, ..SyncReport::default() });
    let ep = only_endpoint(&ds);

    // Page: every field parses.
    server.wait_hits(0, 2).await;
    let m = ep.metrics();
    assert_eq!((m.running, m.waiting, m.kv_usage, m.cache_num_blocks), (187, 12, 0.8123, Some(7300)));
    assert!(m.has_active_adapter("tweet-summary-1"));
    let t0 = m.update_time.unwrap();

    // Later scrapes refresh the values and the update time.
    *server.waiting.lock() = 3;
    let h = server.hits();
    server.wait_hits(h, 2).await;
    let m = ep.metrics();
    assert_eq!(m.waiting, 3);
    assert!(m.update_time.unwrap() > t0);

    // Garbage: nothing parses, metrics and update time stay as they were.
    server.set(Mode::Garbage);
    let h = server.hits();
    server.wait_hits(h, 1).await;
    let before = ep.metrics();
    let h = server.hits();
    server.wait_hits(h, 3).await;
    assert_eq!(*ep.metrics(), *before);

    // 500: same.
    server.set(Mode::Status500);
    let h = server.hits();
    server.wait_hits(h, 3).await;
    assert_eq!(*ep.metrics(), *before);

    // No answer within the timeout: the next request only comes after the first timed out.
    server.set(Mode::Hang);
    let h = server.hits();
    server.wait_hits(h, 2).await;
    assert_eq!(*ep.metrics(), *before);

    // Truncated page: the fields before the cut are fresh, the others keep their old values.
    *server.waiting.lock() = 7;
    server.set(Mode::Truncated);
    let h = server.hits();
    server.wait_hits(h, 2).await;
    let m = ep.metrics();
    assert_eq!((m.waiting, m.running, m.kv_usage), (7, 187, 0.8123));
    assert_eq!(m.cache_num_blocks, Some(7300));
    assert!(m.update_time > before.update_time);

    scraper.shutdown().await;
    assert!(scraper.is_empty());
}

#[tokio::test]
async fn the_model_list_says_where_adapters_are_loaded() {
    let server = Server::start(Mode::Page).await;
    *server.models.lock() =
        Some(r#"{"object":"list","data":[{"id":"base","parent":null},{"id":"ad1","parent":"base"}]}"#.to_owned());
    let ds = Datastore::with_endpoints([meta(server.addr, None)]);
    let cfg = ScrapeConfig { models_interval: Duration::from_millis(20), ..config() };
    let scraper = Scraper::new(cfg, EngineRegistry::builtin());
    scraper.sync(&ds.snapshot());
    let ep = only_endpoint(&ds);
    let mut rx = server.model_hits.subscribe();
    tokio::time::timeout(DEADLINE, rx.wait_for(|&h| h >= 1)).await.unwrap().unwrap();
    let h = server.hits();
    // The second scrape after the poll is sent only once the first was published.
    server.wait_hits(h, 2).await;
    let m = ep.metrics();
    assert_eq!((m.serves("ad1"), m.serves("base"), m.serves("ad2")), (Some(true), Some(true), Some(false)));
    // Polled far less often than the metrics page.
    assert!(server.hits() > *server.model_hits.borrow(), "metrics every 5 ms, models every 20 ms");

    // A server that stops listing its models is routed without the list, not with the old one.
    *server.models.lock() = None;
    let mh = *server.model_hits.borrow();
    tokio::time::timeout(DEADLINE, rx.wait_for(|&h| h > mh)).await.unwrap().unwrap();
    let h = server.hits();
    // The second scrape after the poll is sent only once the first was published.
    server.wait_hits(h, 2).await;
    assert_eq!(ep.metrics().serves("ad1"), None);

    // Off: never asked.
    let server = Server::start(Mode::Page).await;
    let ds = Datastore::with_endpoints([meta(server.addr, None)]);
    let scraper = Scraper::new(ScrapeConfig { models_path: String::new(), ..config() }, EngineRegistry::builtin());
    scraper.sync(&ds.snapshot());
    server.wait_hits(0, 3).await;
    assert_eq!((*server.model_hits.borrow(), only_endpoint(&ds).metrics().served_models.clone()), (0, None));
}

#[test]
fn the_model_list_poll_follows_its_interval() {
    let on = ScrapeConfig::default().with_models_interval(Duration::from_millis(250));
    assert_eq!((on.models_path.as_str(), on.models_interval), ("/v1/models", Duration::from_millis(250)));
    assert!(ScrapeConfig::default().with_models_interval(Duration::ZERO).models_path.is_empty(), "0 turns it off");
}

#[tokio::test]
async fn scrape_once_reports_errors() {
    let server = Server::start(Mode::Status500).await;
    let scraper = Scraper::new(config(), EngineRegistry::builtin());
    let ep = Endpoint::new(igw_core::EndpointId(0), meta(server.addr, None));
    assert!(matches!(scraper.scrape_once(&ep).await, Err(ScrapeError::Status(500))));
    server.set(Mode::Hang);
    assert!(matches!(scraper.scrape_once(&ep).await, Err(ScrapeError::Timeout(_))));
    server.set(Mode::Garbage);
    let x = scraper.scrape_once(&ep).await.unwrap();
    assert!(!x.is_fresh());
    assert_eq!(x.metrics, EndpointMetrics::default());
    server.set(Mode::Page);
    let x = scraper.scrape_once(&ep).await.unwrap();
    assert!(x.errors.is_empty());
    assert_eq!(ep.metrics().update_time, None, "scrape_once does not publish");

    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let ep = Endpoint::new(igw_core::EndpointId(1), meta(closed, None));
    assert!(matches!(scraper.scrape_once(&ep).await, Err(ScrapeError::Request(_))));

    let ep = Endpoint::new(igw_core::EndpointId(2), meta(server.addr, Some("tgi")));
    assert!(matches!(scraper.scrape_once(&ep).await, Err(ScrapeError::UnknownEngine(_))));
}

#[tokio::test]
async fn engine_label_picks_mapping() {
    let server = Server::start(Mode::Sglang).await;
    let ds = Datastore::with_endpoints([meta(server.addr, Some("sglang"))]);
    let scraper = Scraper::new(config(), EngineRegistry::builtin());
    scraper.sync(&ds.snapshot());
    server.wait_hits(0, 2).await;
    let m = only_endpoint(&ds).metrics();
    assert_eq!((m.running, m.waiting, m.kv_usage, m.cache_block_size), (24, 5, 0.37, Some(16)));
}

#[tokio::test]
async fn sync_follows_datastore_changes() {
    let a = Server::start(Mode::Page).await;
    let b = Server::start(Mode::Page).await;
    let ds = Datastore::new();
    let scraper = Scraper::new(config(), EngineRegistry::builtin());
    assert_eq!(scraper.sync(&ds.snapshot()), SyncReport::default());

    let ida = ds.apply_endpoint(meta(a.addr, None));
    let idb = ds.apply_endpoint(meta(b.addr, None));
    assert_eq!(scraper.sync(&ds.snapshot()).started, 2);
    assert_eq!(scraper.endpoints(), vec![ida, idb]);
    assert_eq!(scraper.sync(&ds.snapshot()), SyncReport::default());

    // Relabelling replaces the Endpoint object: its task restarts on the new one.
    ds.apply_endpoint(meta(a.addr, Some("sglang")));
    assert_eq!(scraper.sync(&ds.snapshot()).restarted, 1);
    a.set(Mode::Sglang);
    let h = a.hits();
    a.wait_hits(h, 2).await;
    let ep = ds.snapshot().endpoint(ida).unwrap().clone();
    assert_eq!(ep.metrics().running, 24);

    ds.delete_endpoint(&meta(b.addr, None).key());
    assert_eq!(scraper.sync(&ds.snapshot()).stopped, 1);
    assert_eq!(scraper.endpoints(), vec![ida]);
}

#[tokio::test]
async fn follow_polls_the_datastore_and_stops_on_drop() {
    let server = Server::start(Mode::Page).await;
    let ds = Arc::new(Datastore::new());
    let scraper = Scraper::new(config(), EngineRegistry::builtin());
    let follower = scraper.follow(ds.clone());
    let id = ds.apply_endpoint(meta(server.addr, None));
    server.wait_hits(0, 2).await;
    assert_eq!(scraper.endpoints(), vec![id]);
    assert!(ds.snapshot().endpoint(id).unwrap().metrics().update_time.is_some());

    ds.delete_endpoint(&meta(server.addr, None).key());
    tokio::time::timeout(DEADLINE, async {
        while !scraper.is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();

    let token = scraper.cancellation_token();
    drop(scraper);
    assert!(token.is_cancelled());
    tokio::time::timeout(DEADLINE, follower).await.unwrap().unwrap();
}

#[tokio::test]
async fn parent_token_cancels_tasks() {
    let server = Server::start(Mode::Page).await;
    let parent = tokio_util::sync::CancellationToken::new();
    let ds = Datastore::with_endpoints([meta(server.addr, None)]);
    let scraper = Scraper::new(config(), EngineRegistry::builtin()).with_parent_token(&parent);
    scraper.sync(&ds.snapshot());
    server.wait_hits(0, 1).await;
    parent.cancel();
    assert!(scraper.cancellation_token().is_cancelled());
    assert_eq!(scraper.sync(&ds.snapshot()), SyncReport::default());
    scraper.shutdown().await;
}
