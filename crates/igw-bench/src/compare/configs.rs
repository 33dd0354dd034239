//! The configuration files the contenders are started with: Envoy's (round robin over the fleet,
//! and the ext_proc template of `deploy/envoy/` in front of `igw epp`) and `igw serve`'s.

use super::CompareError;
use crate::scenario::Scenario;

/// An Envoy bootstrap listening on `listen` (admin on `admin`) that balances round robin over
/// `addrs` (`ip:port`), with circuit breakers raised out of the way.
pub fn envoy_round_robin_config(listen: u16, admin: u16, addrs: &[String]) -> String {
    let endpoints: String = addrs
        .iter()
        .map(|a| {
            let (ip, port) = a.rsplit_once(':').unwrap_or((a.as_str(), "80"));
            format!(
                "        - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }}\n"
            )
        })
        .collect();
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: gateway
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: pool
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: pool, timeout: 0s, idle_timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: pool
    type: STATIC
    connect_timeout: 5s
    lb_policy: ROUND_ROBIN
    circuit_breakers:
      thresholds:
      - {{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }}
    load_assignment:
      cluster_name: pool
      endpoints:
      - lb_endpoints:
{endpoints}"#
    )
}

/// The `igw serve --config` file of an igw contender: one pool over the fleet with `policy`, the
/// scenario's classes as objectives, and with `flow` a flowControl section carrying the scenario's
/// TTL, fairness policy and lower-band concurrency limit (as the DES's `igw+flow` policy). The
/// gateway runs on the wall clock, so the TTL (model time) is multiplied by the fleet's `time_scale`.
pub fn serve_config(addrs: &[String], policy: &str, flow: bool, sc: &Scenario, time_scale: f64) -> String {
    let mut s = if sc.fleet.costs_per_hour.is_empty() {
        format!("pools:\n- name: compare\n  endpoints: [{}]\n  policy: {policy}\n", addrs.join(", "))
    } else {
        // Each replica's price as the label a pod would carry (replica i is addrs[i]).
        let mut s = String::from("pools:\n- name: compare\n  endpoints:\n");
        for (a, c) in addrs.iter().zip(&sc.fleet.costs_per_hour) {
            s.push_str(&format!("  - {{address: '{a}', labels: {{igw.dev/cost-per-hour: '{c}'}}}}\n"));
        }
        s.push_str(&format!("  policy: {policy}\n"));
        s
    };
    if flow {
        let ttl_ms = (sc.flow.ttl_s.unwrap_or(30.0) * 1000.0 * time_scale).round();
        s.push_str(&format!("  flowControl:\n    defaultRequestTTL: {ttl_ms}ms\n"));
        if let Some(n) = sc.flow.lower_band_max_concurrency {
            s.push_str(&format!("    lowerBandMaxConcurrency: {n}\n"));
        }
        if let Some(f) = &sc.flow.fairness {
            s.push_str(&format!("    defaultPriorityBand:\n      fairnessPolicyRef: {f}\n"));
        }
    }
    if !sc.classes.is_empty() {
        s.push_str("objectives:\n");
        for c in &sc.classes {
            s.push_str(&format!("- name: {:?}\n  priority: {}\n", c.name, c.priority));
            // SLOs are model time; the gateway measures the wall clock.
            let wall = |ms: Option<u32>| ms.map(|m| ((f64::from(m) * time_scale).round() as u64).max(1));
            if let Some(slo) = c.slo {
                let fields: Vec<String> = [("ttftMs", wall(slo.ttft_ms)), ("tpotMs", wall(slo.tpot_ms))]
                    .iter()
                    .filter_map(|(k, v)| v.map(|v| format!("{k}: {v}")))
                    .collect();
                s.push_str(&format!("  slo: {{{}}}\n", fields.join(", ")));
            }
            if let Some(p) = &c.placement {
                s.push_str(&format!("  placement: {p}\n"));
            }
        }
    }
    s
}

/// `deploy/envoy/extproc-plaintext.yaml` with its ports filled in: Envoy listening on `listen`
/// (admin on `admin`), asking the plaintext `igw epp` on `epp` for every request's endpoint.
pub fn envoy_epp_config(listen: u16, admin: u16, epp: u16) -> Result<String, CompareError> {
    let template = include_str!("../../../../deploy/envoy/extproc-plaintext.yaml");
    let text = template
        .replace("{{LISTEN_PORT}}", &listen.to_string())
        .replace("{{ADMIN_PORT}}", &admin.to_string())
        .replace("{{EPP_PORT}}", &epp.to_string());
    if text.contains("{{") {
        return Err(CompareError::Template);
    }
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn envoy_configs_name_every_endpoint_and_fill_every_placeholder() {
        let c = envoy_round_robin_config(10000, 10001, &["127.0.0.1:8001".into(), "127.0.0.1:8002".into()]);
        assert!(c.contains("port_value: 8001") && c.contains("port_value: 8002") && c.contains("ROUND_ROBIN"));
        let c = envoy_epp_config(10000, 10001, 9002).unwrap();
        assert!(c.contains("port_value: 9002") && !c.contains("{{"));
    }

    #[test]
    fn serve_configs_carry_the_scenarios_objectives_and_flow() {
        // The gateway's own parser reads these in crates/igw/tests/bench_compare.rs.
        let sc = Scenario::builtin("priority-overload").unwrap();
        let addrs = ["127.0.0.1:8001".to_string(), "127.0.0.1:8002".to_string()];
        let text = serve_config(&addrs, "igw", true, &sc, 1.0);
        assert!(text.starts_with("pools:\n- name: compare\n  endpoints: [127.0.0.1:8001, 127.0.0.1:8002]\n"), "{text}");
        assert!(text.contains("  flowControl:\n    defaultRequestTTL: 30000ms\n"), "{text}");
        assert!(text.contains("- name: \"sheddable\"\n  priority: -1\n"), "{text}");
        assert!(!serve_config(&addrs, "igw", false, &sc, 1.0).contains("flowControl"));
        // At time_scale 2 the fleet runs at half speed, so 30 s of model time is 60 s on the wall.
        assert!(serve_config(&addrs, "igw", true, &sc, 2.0).contains("defaultRequestTTL: 60000ms"));
        let shared = Scenario::builtin("shared-prefix").unwrap();
        assert!(!serve_config(&addrs, "igw", false, &shared, 1.0).contains("objectives"));
        // A priced fleet's labels and a class's SLO (scaled to the wall clock) and placement.
        let cost = Scenario::builtin("heterogeneous-cost").unwrap();
        let eight: Vec<String> = (0..8).map(|i| format!("127.0.0.1:{}", 8001 + i)).collect();
        let text = serve_config(&eight, "igw-latency", false, &cost, 0.5);
        assert!(text.contains("  - {address: '127.0.0.1:8002', labels: {igw.dev/cost-per-hour: '1.01'}}\n"), "{text}");
        assert!(
            text.contains(
                "- name: \"batch\"\n  priority: 0\n  slo: {ttftMs: 1500, tpotMs: 25}\n  placement: cheapest\n"
            ),
            "{text}"
        );
    }
}
