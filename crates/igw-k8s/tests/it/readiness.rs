//! Readiness follows sync and leadership.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

fn recorder() -> (Arc<Mutex<Vec<bool>>>, impl FnMut(bool) -> std::future::Ready<()>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    (log, move |r| {
        l.lock().unwrap().push(r);
        std::future::ready(())
    })
}

#[tokio::test]
async fn ready_when_synced_and_leading() {
    let (synced_tx, synced) = watch::channel(false);
    let (leader_tx, leader) = watch::channel(false);
    let (log, set) = recorder();
    let task = tokio::spawn(igw_k8s::readiness::follow(synced, Some(leader), set));
    tokio::task::yield_now().await; // the single-threaded test runtime runs the task to its first wait
    synced_tx.send(true).unwrap();
    tokio::task::yield_now().await;
    leader_tx.send(true).unwrap();
    tokio::task::yield_now().await;
    leader_tx.send(false).unwrap();
    tokio::task::yield_now().await;
    drop(synced_tx);
    drop(leader_tx);
    task.await.unwrap();
    let got = log.lock().unwrap().clone();
    // Starts not ready; ready only while both hold; duplicates are not reported.
    assert_eq!(got.first(), Some(&false));
    assert!(got.windows(2).all(|w| w[0] != w[1]), "{got:?}");
    assert_eq!(got.iter().filter(|r| **r).count(), 1, "{got:?}");
    assert_eq!(got.last(), Some(&false));
}

#[tokio::test]
async fn without_election_synced_is_ready() {
    let (synced_tx, synced) = watch::channel(false);
    let (log, set) = recorder();
    let task = tokio::spawn(igw_k8s::readiness::follow(synced, None, set));
    tokio::task::yield_now().await;
    synced_tx.send(true).unwrap();
    drop(synced_tx);
    task.await.unwrap();
    assert_eq!(*log.lock().unwrap(), [false, true]);
}
