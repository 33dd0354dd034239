//! Readiness as upstream's EPP defines it: ready once the pool has synced, and, with leader
//! election, only while leading.

use std::future::Future;

use tokio::sync::watch;

/// Calls `set_ready` with `synced && leading` now and on every change, until both senders are
/// gone. Without election (`leader` is `None`) every synced replica is ready (active-active).
pub async fn follow<F, Fut>(
    mut synced: watch::Receiver<bool>,
    mut leader: Option<watch::Receiver<bool>>,
    mut set_ready: F,
) where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut last = None;
    loop {
        let now = *synced.borrow_and_update() && leader.as_mut().is_none_or(|l| *l.borrow_and_update());
        if last != Some(now) {
            set_ready(now).await;
            last = Some(now);
        }
        let changed = match leader.as_mut() {
            Some(l) => tokio::select! {
                r = synced.changed() => r,
                r = l.changed() => r,
            },
            None => synced.changed().await,
        };
        if changed.is_err() {
            return;
        }
    }
}
