//! The Director: igw's [`Picker`], running admission and the scheduler on the request path and
//! recording the request metrics. Every data plane (ext_proc, the proxy, the simulator) routes
//! through it, so they all make the same decisions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use igw_core::{Datastore, Endpoint, Instant, Snapshot};
use igw_sched::{Decision as SchedDecision, ScheduleError, Scheduler};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::error::{MSG_NO_CANDIDATES, MSG_SATURATED, MSG_SCHEDULE_FAILED, RequestError};
use crate::metrics::{RequestMetrics, model_labels};
use crate::picker::{Decision, Picker};
use crate::request::PreparedRequest;
use crate::usage::ResponseSummary;

/// What the Director keeps of a request between the decision and its end.
#[derive(Debug)]
pub struct Routed {
    decision: SchedDecision,
    model: String,
    target_model: String,
    started: Instant,
}

/// Admission + scheduling over one pool's datastore.
#[derive(Debug)]
pub struct Director {
    datastore: Arc<Datastore>,
    scheduler: Arc<Scheduler>,
    metrics: Arc<RequestMetrics>,
    rng_state: AtomicU64,
    legacy_shedding: bool,
}

fn splitmix(state: &AtomicU64) -> u64 {
    let mut z = state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Director {
    /// A director for `datastore` deciding with `scheduler`; randomness seeded with `seed`.
    pub fn new(datastore: Arc<Datastore>, scheduler: Arc<Scheduler>, seed: u64) -> Self {
        Director {
            datastore,
            scheduler,
            metrics: Arc::new(RequestMetrics::new()),
            rng_state: AtomicU64::new(seed),
            legacy_shedding: true,
        }
    }

    /// Turns the legacy admission off: sheddable requests are no longer answered 429 when the
    /// pool is saturated. Flow control (a [`FlowGate`](crate::flow_gate::FlowGate) in front of the
    /// Director) replaces it, as upstream's `flowControl` feature gate does.
    pub fn without_legacy_shedding(mut self) -> Self {
        self.legacy_shedding = false;
        self
    }

    /// The request metrics it records.
    pub fn metrics(&self) -> &Arc<RequestMetrics> {
        &self.metrics
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    fn error(&self, prepared: &PreparedRequest, e: RequestError) -> RequestError {
        let mut l = model_labels(&prepared.request.model, &prepared.request.target_model);
        l.insert(0, ("error_code", e.code.as_str().to_string()));
        self.metrics.request_error_total.add(l, 1.0);
        e
    }
}

impl Picker for Director {
    type State = Routed;

    fn snapshot(&self) -> Arc<Snapshot> {
        self.datastore.snapshot()
    }

    fn draw(&self) -> u64 {
        splitmix(&self.rng_state)
    }

    fn decide(
        &self,
        prepared: &PreparedRequest,
        candidates: &[Arc<Endpoint>],
        max: usize,
        now: Instant,
    ) -> Result<Decision<Routed>, RequestError> {
        let req = &prepared.request;
        if self.legacy_shedding
            && let Err(ScheduleError::Saturated) = self.scheduler.admit(req, candidates, now)
        {
            return Err(self.error(prepared, RequestError::resource_exhausted(MSG_SATURATED)));
        }
        let t0 = std::time::Instant::now();
        let mut rng = SmallRng::seed_from_u64(self.draw());
        let result = self.scheduler.schedule(req, candidates, max, now, &mut rng);
        self.metrics.scheduler_e2e.observe(Vec::new(), t0.elapsed().as_secs_f64());
        match result {
            Ok(decision) => {
                let primary = &decision.endpoints[0];
                let m = primary.meta();
                self.metrics.scheduler_attempts.add(
                    vec![
                        ("namespace", m.namespace.clone()),
                        ("pod_name", m.pod.clone()),
                        ("port", primary.address().port().to_string()),
                        ("status", "success".into()),
                        ("target_model_name", req.target_model.clone()),
                    ],
                    1.0,
                );
                let labels = model_labels(&req.model, &req.target_model);
                let mut l = labels.clone();
                l.insert(1, ("priority", req.priority.to_string()));
                self.metrics.request_total.add(l, 1.0);
                self.metrics.request_sizes.observe(labels, prepared.body.len() as f64);
                if let Some(name) = &prepared.rewrite.rule_name {
                    self.metrics.model_rewrite_decisions.add(
                        vec![
                            ("model_name", req.model.clone()),
                            ("model_rewrite_name", name.clone()),
                            ("target_model", req.target_model.clone()),
                        ],
                        1.0,
                    );
                }
                if let (Some(ratio), Some(index)) = (decision.prefix_hit_ratio(), self.scheduler.prefix_index()) {
                    self.metrics.prefix_hit_ratio.observe(Vec::new(), ratio);
                    let bytes = f64::from(decision.prefix_matched_blocks) * index.config().chars_per_block() as f64;
                    self.metrics.prefix_hit_bytes.observe(Vec::new(), bytes);
                }
                let endpoints = decision.endpoints.clone();
                let state =
                    Routed { decision, model: req.model.clone(), target_model: req.target_model.clone(), started: now };
                Ok(Decision { endpoints, state })
            }
            Err(e) => {
                self.metrics.scheduler_attempts.add(
                    vec![
                        ("namespace", String::new()),
                        ("pod_name", String::new()),
                        ("port", String::new()),
                        ("status", "failure".into()),
                        ("target_model_name", req.target_model.clone()),
                    ],
                    1.0,
                );
                let err = match e {
                    ScheduleError::NoCandidates => RequestError::service_unavailable(MSG_NO_CANDIDATES),
                    ScheduleError::Saturated => RequestError::resource_exhausted(MSG_SATURATED),
                };
                let err = if err.code == crate::error::ErrorCode::ResourceExhausted {
                    err
                } else {
                    RequestError::new(err.code, format!("{MSG_SCHEDULE_FAILED}: {}", err.message))
                };
                Err(self.error(prepared, err))
            }
        }
    }

    fn dispatched(&self, state: &Routed, endpoint: &Arc<Endpoint>, _now: Instant) {
        self.scheduler.on_routed(&state.decision, endpoint);
        self.metrics.running_requests.add(vec![("model_name", state.model.clone())], 1.0);
        if let Some(index) = self.scheduler.prefix_index() {
            self.metrics.prefix_indexer_size.set(Vec::new(), index.len() as f64);
        }
    }

    fn response_headers(&self, endpoint: &Arc<Endpoint>) -> Vec<(String, String)> {
        if !self.scheduler.session_affinity() {
            return Vec::new();
        }
        let m = endpoint.meta();
        vec![(
            igw_sched::session::SESSION_TOKEN_HEADER.to_string(),
            igw_sched::session::encode_token(&m.namespace, &m.pod),
        )]
    }

    fn finished(&self, state: &Routed, endpoint: &Arc<Endpoint>, summary: Option<&ResponseSummary>, now: Instant) {
        self.scheduler.on_finished(&state.decision, endpoint);
        self.metrics.running_requests.add(vec![("model_name", state.model.clone())], -1.0);
        let labels = model_labels(&state.model, &state.target_model);
        let secs = now.saturating_duration_since(state.started).as_secs_f64();
        match summary {
            Some(s) if !s.model_server_error => {
                self.metrics.request_duration.observe(labels.clone(), secs);
                self.metrics.response_sizes.observe(labels.clone(), s.response_bytes as f64);
                if let Some(u) = s.usage {
                    if u.cached_tokens > 0 {
                        self.metrics.prompt_cached_tokens.observe(labels.clone(), u.cached_tokens as f64);
                    }
                    if u.prompt_tokens > 0 {
                        self.metrics.input_tokens.observe(labels.clone(), u.prompt_tokens as f64);
                    }
                    if u.completion_tokens > 0 {
                        self.metrics.output_tokens.observe(labels.clone(), u.completion_tokens as f64);
                        self.metrics.ntpot.observe(labels, secs / u.completion_tokens as f64);
                    }
                }
            }
            Some(_) => {
                let mut l = labels;
                l.insert(0, ("error_code", "ModelServerError".into()));
                self.metrics.request_error_total.add(l, 1.0);
            }
            None => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::request::{Draws, Prepared, build_request};
    use bytes::Bytes;
    use igw_core::{EndpointMeta, EndpointMetrics};

    fn prepared(ds: &Datastore, priority_header: Option<&str>) -> PreparedRequest {
        let body = Bytes::from_static(br#"{"model":"m","prompt":"hello there"}"#);
        let headers: Vec<(&str, &str)> =
            priority_header.map(|o| vec![("x-gateway-inference-objective", o)]).unwrap_or_default();
        match build_request(Some("/v1/completions"), headers, Some(body), &ds.snapshot(), Draws::default()).unwrap() {
            Prepared::Inference(p) => *p,
            Prepared::NoBody(_) => panic!("inference expected"),
        }
    }

    #[test]
    fn decides_accounts_and_records_metrics() {
        let ds = Arc::new(Datastore::with_endpoints(
            ["10.0.0.1:8000", "10.0.0.2:8000"].map(|a| EndpointMeta::parse_addr(a).unwrap()),
        ));
        let now = Instant::from_millis(5);
        let s = ds.snapshot();
        s.endpoints[0].set_metrics(EndpointMetrics { waiting: 9, update_time: Some(now), ..Default::default() });
        s.endpoints[1].set_metrics(EndpointMetrics { waiting: 0, update_time: Some(now), ..Default::default() });
        let d = Director::new(ds.clone(), Arc::new(Scheduler::from_policy("igw").unwrap()), 1);
        let p = prepared(&ds, None);
        let dec = d.decide(&p, &s.endpoints, 2, now).unwrap();
        assert_eq!(dec.endpoints[0].id(), s.endpoints[1].id());
        d.dispatched(&dec.state, &dec.endpoints[0], now);
        assert_eq!(dec.endpoints[0].in_flight().requests(), 1);
        d.finished(&dec.state, &dec.endpoints[0], Some(&ResponseSummary::default()), Instant::from_millis(40));
        assert_eq!(dec.endpoints[0].in_flight().requests(), 0);
        let mut out = String::new();
        d.metrics().render(&mut out);
        assert!(
            out.contains(
                "inference_objective_request_total{model_name=\"m\",priority=\"0\",target_model_name=\"m\"} 1"
            ),
            "{out}"
        );
        assert!(out.contains("inference_extension_scheduler_attempts_total{namespace=\"default\""));
    }

    #[test]
    fn records_sizes_prefix_hits_and_rewrite_decisions() {
        let ds = Arc::new(Datastore::with_endpoints([EndpointMeta::parse_addr("10.0.0.1:8000").unwrap()]));
        ds.apply_rewrite(igw_core::ModelRewrite {
            id: igw_core::ObjectRef::new("default", "canary"),
            created_unix: 1,
            rules: vec![igw_core::RewriteRule {
                matches: vec!["m".into()],
                targets: vec![igw_core::TargetModel { model: "m-v2".into(), weight: 1 }],
            }],
        })
        .unwrap();
        let d = Director::new(ds.clone(), Arc::new(Scheduler::from_policy("igw").unwrap()), 1);
        let now = Instant::from_millis(5);
        let s = ds.snapshot();
        let p = prepared(&ds, None);
        assert_eq!(p.request.target_model, "m-v2");
        for _ in 0..2 {
            let dec = d.decide(&p, &s.endpoints, 1, now).unwrap();
            d.dispatched(&dec.state, &dec.endpoints[0], now);
            let summary = ResponseSummary {
                response_bytes: 300,
                usage: Some(crate::usage::Usage {
                    prompt_tokens: 4,
                    completion_tokens: 2,
                    total_tokens: 6,
                    cached_tokens: 3,
                }),
                ..Default::default()
            };
            d.finished(&dec.state, &dec.endpoints[0], Some(&summary), now);
        }
        let mut out = String::new();
        d.metrics().render(&mut out);
        let has = |line: &str| assert!(out.contains(line), "missing {line:?} in\n{out}");
        let m = "model_name=\"m\",target_model_name=\"m-v2\"";
        has(&format!("inference_objective_request_sizes_bucket{{{m},le=\"64\"}} 2"));
        has(&format!("inference_objective_response_sizes_bucket{{{m},le=\"512\"}} 2"));
        has(&format!("inference_objective_response_sizes_bucket{{{m},le=\"256\"}} 0"));
        has(&format!("inference_objective_prompt_cached_tokens_count{{{m}}} 2"));
        has(
            "inference_extension_model_rewrite_decisions_total{model_name=\"m\",model_rewrite_name=\"canary\",target_model=\"m-v2\"} 2",
        );
        has("inference_extension_info{build_ref=\"");
        // The prompt is shorter than a block: nothing to hash, so no hit is recorded.
        assert!(!out.contains("inference_extension_prefix_indexer_hit_ratio_count"), "{out}");
    }

    #[test]
    fn prefix_hits_are_recorded_for_the_pick() {
        let ds = Arc::new(Datastore::with_endpoints([EndpointMeta::parse_addr("10.0.0.1:8000").unwrap()]));
        let d = Director::new(ds.clone(), Arc::new(Scheduler::from_policy("igw").unwrap()), 1);
        let now = Instant::from_millis(5);
        let s = ds.snapshot();
        let body = format!(r#"{{"model":"m","prompt":"{}"}}"#, "a long shared system prompt. ".repeat(20));
        let Prepared::Inference(p) = build_request(
            Some("/v1/completions"),
            Vec::<(&str, &str)>::new(),
            Some(Bytes::from(body)),
            &s,
            Draws::default(),
        )
        .unwrap() else {
            panic!("inference expected")
        };
        for _ in 0..2 {
            let dec = d.decide(&p, &s.endpoints, 1, now).unwrap();
            d.dispatched(&dec.state, &dec.endpoints[0], now);
            d.finished(&dec.state, &dec.endpoints[0], None, now);
        }
        let mut out = String::new();
        d.metrics().render(&mut out);
        // First request: a miss (ratio 0); second: the whole prompt (ratio 1, 10 blocks of 64 bytes).
        assert!(out.contains("inference_extension_prefix_indexer_hit_ratio_bucket{le=\"0\"} 1\n"), "{out}");
        assert!(out.contains("inference_extension_prefix_indexer_hit_ratio_count 2\n"), "{out}");
        assert!(out.contains("inference_extension_prefix_indexer_hit_bytes_sum 640\n"), "{out}");
        assert!(out.contains("inference_extension_prefix_indexer_size 10\n"), "{out}");
    }

    #[test]
    fn sheds_sheddable_requests_when_saturated() {
        let ds = Arc::new(Datastore::with_endpoints([EndpointMeta::parse_addr("10.0.0.1:8000").unwrap()]));
        ds.apply_objective(igw_core::InferenceObjective {
            id: igw_core::ObjectRef::new("default", "batch"),
            priority: -1,
            legacy_model_name: None,
        });
        let now = Instant::from_millis(5);
        let s = ds.snapshot();
        s.endpoints[0].set_metrics(EndpointMetrics { waiting: 50, update_time: Some(now), ..Default::default() });
        let d = Director::new(ds.clone(), Arc::new(Scheduler::from_policy("igw").unwrap()), 1);
        let err = d.decide(&prepared(&ds, Some("batch")), &s.endpoints, 1, now).unwrap_err();
        assert_eq!(err.http_status(), 429);
        assert!(d.decide(&prepared(&ds, None), &s.endpoints, 1, now).is_ok(), "priority 0 is never shed");
        let mut out = String::new();
        d.metrics().render(&mut out);
        assert!(out.contains("error_code=\"ResourceExhausted\""));
    }
}
