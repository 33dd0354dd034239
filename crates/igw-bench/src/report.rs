//! Report rows (one per policy and offered QPS), the text table and the JSON line.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// One traffic class's outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClassRow {
    /// Requests sent in this class.
    pub attempted: u64,
    /// Completed requests.
    pub completed: u64,
    /// Answered 429/503 by the gateway.
    pub rejected: u64,
    /// Abandoned by the client.
    pub timeouts: u64,
    /// p90 end-to-end latency of completed requests, ms.
    pub p90_e2e_ms: f64,
    /// p90 end-to-end latency of every request sent, a dropped one counting as infinite, ms.
    pub p90_e2e_with_drops_ms: f64,
    /// Fraction of the completed output tokens (shares sum to 1); with the open-loop client, of
    /// those completed while arrivals were still coming.
    pub share: f64,
    /// Fraction of the output tokens generated while every class had requests queued at the
    /// gateway (flow control holding them), counted for the requests that completed; `None` when
    /// that never happened (no flow control, or some class never backlogged).
    pub backlogged_share: Option<f64>,
    /// Fraction of the requests sent that met the class's SLO (TTFT from arrival, time per
    /// output token after the first), a dropped one counting as a miss; `None` when the class
    /// states none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slo_attainment: Option<f64>,
}

/// One (policy, offered QPS) result.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    /// Policy name.
    pub policy: String,
    /// Offered QPS.
    pub qps: f64,
    /// QPS actually sent (requests / arrival window).
    pub sent_qps: f64,
    /// `qps / capacity_qps`.
    pub load_factor: f64,
    /// Requests sent.
    pub attempted: u64,
    /// Requests completed.
    pub completed: u64,
    /// Requests answered 429 or 503 by the gateway (shed, queue full, queue TTL).
    pub rejected: u64,
    /// Requests abandoned by the client after `client.timeout_s`.
    pub timeouts: u64,
    /// p90 of e2e / output tokens (the blog's per-output-token latency, queueing included), ms.
    pub p90_tpot_ms: f64,
    /// p90 inter-token latency over all token gaps, ms.
    pub p90_itl_ms: f64,
    /// p90 time to first token, ms.
    pub p90_ttft_ms: f64,
    /// p90 end-to-end latency, ms.
    pub p90_e2e_ms: f64,
    /// Completed output tokens per minute (goodput).
    pub output_tokens_per_min: f64,
    /// Fraction of prompt tokens served from the engines' prefix caches.
    pub cache_hit_rate: f64,
    /// p90 TTFT over every request sent, a rejected or timed-out one counting as infinite (so
    /// shedding cannot make the p90 look good), ms; infinite when more than 10% were dropped.
    pub p90_ttft_with_drops_ms: f64,
    /// p90 end-to-end latency over every request sent, drops infinite, ms.
    pub p90_e2e_with_drops_ms: f64,
    /// Median |predicted − observed| / observed of the TTFT the latency model predicted on the
    /// chosen endpoint (TTFT from reaching the engine); `None` when the policy does not predict.
    pub ttft_error_p50: Option<f64>,
    /// The same for TPOT (decode time per token after the first).
    pub tpot_error_p50: Option<f64>,
    /// Price of a million completed output tokens at capacity: each token at its replica's price
    /// per hour over that replica's capacity in tokens per hour (the fleet's measured capacity
    /// shared by speed factor), so what a fleet right-sized to this placement would pay; `None`
    /// when the fleet is unpriced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_per_mtok: Option<f64>,
    /// Per class.
    pub by_class: BTreeMap<String, ClassRow>,
    /// Virtual seconds during which every class had requests queued at the gateway (the window of
    /// [`ClassRow::backlogged_share`]).
    pub backlogged_s: f64,
}

/// A whole run: the JSON object printed last with `--json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The fleet's capacity in requests/s for this workload.
    pub capacity_qps: f64,
    /// What the workload generator used.
    pub workload: String,
    /// Rows, policy-major.
    pub rows: Vec<Row>,
}

/// The text table: one line per row, then per-class lines when the scenario has several classes.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "scenario {} · capacity {:.1} QPS · workload {}", r.scenario, r.capacity_qps, r.workload);
    let _ = writeln!(
        s,
        "{:<22} {:>7} {:>7} {:>5} {:>8} {:>8} {:>7} {:>6} {:>9} {:>8} {:>9} {:>9} {:>10} {:>5} {:>11}",
        "policy",
        "qps",
        "sent",
        "load",
        "attempt",
        "done",
        "reject",
        "tmout",
        "p90tpot",
        "p90itl",
        "p90ttft",
        "p90e2e",
        "outtok/min",
        "hit%",
        "prederr%"
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "{:<22} {:>7.1} {:>7.1} {:>5.2} {:>8} {:>8} {:>7} {:>6} {:>9.1} {:>8.1} {:>9.0} {:>9.0} {:>10.3e} {:>5.1} {:>11}",
            row.policy,
            row.qps,
            row.sent_qps,
            row.load_factor,
            row.attempted,
            row.completed,
            row.rejected,
            row.timeouts,
            row.p90_tpot_ms,
            row.p90_itl_ms,
            row.p90_ttft_ms,
            row.p90_e2e_ms,
            row.output_tokens_per_min,
            row.cache_hit_rate * 100.0,
            match (row.ttft_error_p50, row.tpot_error_p50) {
                (Some(t), Some(d)) => format!("{:.0}/{:.0}", t * 100.0, d * 100.0),
                _ => "-".into(),
            }
        );
        if let Some(c) = row.cost_per_mtok {
            let _ = writeln!(s, "    cost at capacity {c:.3} per million output tokens");
        }
        if row.by_class.len() > 1 || row.by_class.values().any(|c| c.slo_attainment.is_some()) {
            for (name, c) in &row.by_class {
                let _ = writeln!(
                    s,
                    "    {:<18} attempted {:>7} completed {:>7} rejected {:>7} timeouts {:>6} p90 e2e {:>8.0} ms (drops ∞: {:>8.0}) share {:>5.1}%{}",
                    name,
                    c.attempted,
                    c.completed,
                    c.rejected,
                    c.timeouts,
                    c.p90_e2e_ms,
                    c.p90_e2e_with_drops_ms,
                    c.share * 100.0,
                    c.backlogged_share.map_or(String::new(), |b| format!(
                        " · {:.1}% while all backlogged ({:.0} s)",
                        b * 100.0,
                        row.backlogged_s
                    )) + &c.slo_attainment.map_or(String::new(), |a| format!(" · SLO met {:.1}%", a * 100.0))
                );
            }
        }
    }
    s
}
