//! Leader election with a real kube client against a tower-test mock API server: create the
//! Lease, renew it, lose the race, take over an expired lease, follow a live leader.
#![allow(clippy::unwrap_used)]

use http::{Method, Request, Response, StatusCode};
use igw_k8s::lease::{Decision, LeaderElector, LeaseConfig, decide};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use serde_json::json;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/epp";

fn elector() -> (LeaderElector, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "ns");
    (LeaderElector::new(client, LeaseConfig::new("epp", "ns", "me")), handle)
}

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn lease(holder: &str, renewed: Timestamp, transitions: i32) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("epp".into()),
            namespace: Some("ns".into()),
            resource_version: Some("7".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }),
    }
}

fn respond(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
}

fn api_status(code: u16, reason: &str) -> serde_json::Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": reason, "reason": reason, "code": code})
}

/// Answers one request, checking its method and path; returns its body.
async fn expect(handle: &mut Handle, method: Method, path: &str, reply: Response<Body>) -> Option<Lease> {
    let (req, send) = handle.next_request().await.expect("a request");
    assert_eq!(req.method(), method);
    assert_eq!(req.uri().path(), path);
    let bytes = req.into_body().collect_bytes().await.unwrap();
    send.send_response(reply);
    serde_json::from_slice(&bytes).ok()
}

#[tokio::test]
async fn creates_the_lease_when_there_is_none() {
    let (e, mut h) = elector();
    let server = tokio::spawn(async move {
        expect(&mut h, Method::GET, PATH, respond(StatusCode::NOT_FOUND, api_status(404, "NotFound"))).await;
        let body = lease("me", now(), 0);
        expect(
            &mut h,
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases",
            respond(StatusCode::CREATED, serde_json::to_value(&body).unwrap()),
        )
        .await
        .unwrap()
    });
    assert!(e.try_acquire_or_renew(now()).await.unwrap());
    let sent = server.await.unwrap();
    let spec = sent.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("me"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.renew_time, Some(MicroTime(now())));
}

#[tokio::test]
async fn renews_its_own_lease_with_the_resource_version() {
    let (e, mut h) = elector();
    let earlier = now() - SignedDuration::from_secs(2);
    let server = tokio::spawn(async move {
        let held = lease("me", earlier, 3);
        expect(&mut h, Method::GET, PATH, respond(StatusCode::OK, serde_json::to_value(&held).unwrap())).await;
        expect(&mut h, Method::PUT, PATH, respond(StatusCode::OK, serde_json::to_value(lease("me", now(), 3)).unwrap()))
            .await
            .unwrap()
    });
    assert!(e.try_acquire_or_renew(now()).await.unwrap());
    let sent = server.await.unwrap();
    assert_eq!(sent.metadata.resource_version.as_deref(), Some("7"), "optimistic concurrency");
    let spec = sent.spec.unwrap();
    assert_eq!(spec.renew_time, Some(MicroTime(now())));
    assert_eq!(spec.lease_transitions, Some(3), "a renewal is not a transition");
}

#[tokio::test]
async fn loses_the_race_on_conflict() {
    let (e, mut h) = elector();
    let server = tokio::spawn(async move {
        let stale = lease("other", now() - SignedDuration::from_secs(60), 1);
        expect(&mut h, Method::GET, PATH, respond(StatusCode::OK, serde_json::to_value(&stale).unwrap())).await;
        expect(&mut h, Method::PUT, PATH, respond(StatusCode::CONFLICT, api_status(409, "Conflict"))).await.unwrap()
    });
    assert!(!e.try_acquire_or_renew(now()).await.unwrap(), "409: another replica took it first");
    let sent = server.await.unwrap();
    let spec = sent.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("me"), "it did try to take the expired lease over");
    assert_eq!(spec.lease_transitions, Some(2));
}

#[tokio::test]
async fn follows_a_live_leader_without_writing() {
    let (e, mut h) = elector();
    let server = tokio::spawn(async move {
        let live = lease("other", now() - SignedDuration::from_secs(1), 1);
        expect(&mut h, Method::GET, PATH, respond(StatusCode::OK, serde_json::to_value(&live).unwrap())).await;
        h
    });
    assert!(!e.try_acquire_or_renew(now()).await.unwrap());
    let mut h = server.await.unwrap();
    // No further request was made.
    drop(e);
    assert!(h.next_request().await.is_none());
}

#[tokio::test]
async fn api_errors_are_errors() {
    let (e, mut h) = elector();
    let server = tokio::spawn(async move {
        expect(&mut h, Method::GET, PATH, respond(StatusCode::FORBIDDEN, api_status(403, "Forbidden"))).await;
    });
    assert!(e.try_acquire_or_renew(now()).await.is_err());
    server.await.unwrap();
}

#[test]
fn decision_rule() {
    let t = now();
    assert_eq!(decide(None, "me", t), Decision::Create);
    assert_eq!(decide(Some(&lease("me", t, 0)), "me", t), Decision::Renew);
    assert_eq!(decide(Some(&lease("", t, 0)), "me", t), Decision::Acquire);
    let live = lease("other", t - SignedDuration::from_secs(14), 0);
    assert_eq!(decide(Some(&live), "me", t), Decision::Follow("other".into()));
    let expired = lease("other", t - SignedDuration::from_secs(15), 0);
    assert_eq!(decide(Some(&expired), "me", t), Decision::Acquire);
}
