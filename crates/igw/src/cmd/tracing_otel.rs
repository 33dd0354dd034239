//! OpenTelemetry for `igw epp --tracing` (cargo feature `otel`): spans exported over OTLP/gRPC,
//! configured by the standard environment variables as upstream's EPP is:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://localhost:4317`), `OTEL_SERVICE_NAME` (default
//! `gateway-api-inference-extension/epp`), `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
//! W3C TraceContext and Baggage propagation.

/// Upstream's default service name.
#[cfg(feature = "otel")]
pub const DEFAULT_SERVICE_NAME: &str = "gateway-api-inference-extension/epp";

/// Keeps the tracer provider alive; flushes and shuts it down when dropped.
pub struct Guard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global tracer provider and propagator when `enabled` and the binary was built
/// with the `otel` feature; otherwise says what happens and installs nothing.
pub fn init(enabled: bool) -> anyhow::Result<Guard> {
    if !enabled {
        return Ok(Guard {
            #[cfg(feature = "otel")]
            provider: None,
        });
    }
    #[cfg(feature = "otel")]
    {
        use anyhow::Context as _;
        use opentelemetry::propagation::TextMapCompositePropagator;
        use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
        use opentelemetry_sdk::trace::SdkTracerProvider;

        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .context("building the OTLP span exporter")?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
        }
        let provider =
            SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]));
        tracing::info!("OpenTelemetry tracing on (OTLP/gRPC; OTEL_* environment variables apply)");
        Ok(Guard { provider: Some(provider) })
    }
    #[cfg(not(feature = "otel"))]
    {
        tracing::debug!("--tracing: this igw was built without the `otel` feature; no spans are exported");
        Ok(Guard {})
    }
}
