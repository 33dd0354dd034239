//! OpenTelemetry spans per request (cargo feature `otel`), as upstream's EPP emits them: a
//! `gateway.request` span for the whole ext_proc stream (child of the caller's W3C trace context,
//! read from the request headers) and a `gateway.request_orchestration` child for admission and
//! scheduling. The request span's context is injected into the upstream request's headers
//! (`traceparent`, `tracestate`), so the model server's spans join the same trace.
//!
//! Only the OpenTelemetry API is used here: the tracer provider, exporter and propagator are the
//! process's globals, which the binary installs (`igw epp` with `--tracing`). With none installed
//! every call is a no-op.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, global};

use igw_request::HeaderMutations;

/// Upstream's tracer name.
pub const TRACER_NAME: &str = "gateway-api-inference-extension/epp/extproc";

struct HeaderExtractor<'a>(&'a [(String, String)]);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct MutationInjector<'a>(&'a mut HeaderMutations);

impl Injector for MutationInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.set_header(key, value);
    }
}

/// The spans of one request.
pub(crate) struct RequestSpan {
    cx: Context,
    orchestration: Option<Context>,
}

impl RequestSpan {
    /// Starts `gateway.request` as a child of the trace context in `headers` (lower-cased names).
    pub(crate) fn start(headers: &[(String, String)]) -> Self {
        let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
        let tracer = global::tracer(TRACER_NAME);
        let span =
            tracer.span_builder("gateway.request").with_kind(SpanKind::Server).start_with_context(&tracer, &parent);
        RequestSpan { cx: parent.with_span(span), orchestration: None }
    }

    /// Starts `gateway.request_orchestration` (admission and scheduling) under the request span.
    pub(crate) fn start_orchestration(&mut self, model: &str, target_model: &str) {
        let tracer = global::tracer(TRACER_NAME);
        let span = tracer
            .span_builder("gateway.request_orchestration")
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("gen_ai.request.model", model.to_string()),
                KeyValue::new("gateway.target_model", target_model.to_string()),
            ])
            .start_with_context(&tracer, &self.cx);
        self.orchestration = Some(self.cx.with_span(span));
    }

    /// Ends the orchestration span with the pick (or the error), records it on the request span,
    /// and injects the request span's context into `mutations` for the upstream request.
    pub(crate) fn picked(&mut self, destination: Result<&str, &str>, mutations: &mut HeaderMutations) {
        if let Some(o) = self.orchestration.take() {
            let span = o.span();
            match destination {
                Ok(d) => span.set_attribute(KeyValue::new("gateway.destination_endpoint", d.to_string())),
                Err(e) => span.set_status(Status::error(e.to_string())),
            }
            span.end();
        }
        if let Ok(d) = destination {
            self.cx.span().set_attribute(KeyValue::new("gateway.destination_endpoint", d.to_string()));
        }
        global::get_text_map_propagator(|p| p.inject_context(&self.cx, &mut MutationInjector(mutations)));
    }

    /// Marks the request failed with `message`.
    pub(crate) fn failed(&mut self, status: u16, message: &str) {
        if let Some(o) = self.orchestration.take() {
            o.span().set_status(Status::error(message.to_string()));
            o.span().end();
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
        span.set_status(Status::error(message.to_string()));
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        if let Some(o) = self.orchestration.take() {
            o.span().end();
        }
        self.cx.span().end();
    }
}
