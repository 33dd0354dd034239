//! The comparison's report: one row per (contender, QPS) in model time with the DES's figures
//! beside, how far real time and the DES agree, and the report as Markdown.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::CompareError;
use crate::BenchError;
use crate::load::http::StepReport;

/// One (contender, QPS) row, latencies in model time.
#[derive(Debug, Serialize, Deserialize)]
pub struct CompareRow {
    /// Contender name.
    pub contender: String,
    /// The real-time client's results for the step, converted to model time.
    #[serde(flatten)]
    pub step: StepReport,
    /// The DES's row for the same policy, scenario, fleet and QPS, if it models the contender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub des: Option<DesPoint>,
}

/// The DES's figures for one point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesPoint {
    /// The DES policy.
    pub policy: String,
    /// p90 TTFT, ms.
    pub p90_ttft_ms: f64,
    /// p90 inter-token latency, ms.
    pub p90_itl_ms: f64,
    /// p90 e2e ÷ output tokens, ms.
    pub p90_tpot_ms: f64,
    /// p90 e2e, ms.
    pub p90_e2e_ms: f64,
    /// Completed output tokens per minute.
    pub output_tokens_per_min: f64,
    /// Per class (scenarios with classes): rejected requests and p90 e2e.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_class: BTreeMap<String, DesClass>,
    /// Cost per million output tokens at capacity, for a priced fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_mtok: Option<f64>,
}

/// The DES's figures for one class at one point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesClass {
    /// Completed requests.
    pub completed: u64,
    /// Answered 429/503 by the gateway.
    pub rejected: u64,
    /// Abandoned by the client.
    pub timeouts: u64,
    /// p90 e2e of completed requests, ms.
    pub p90_e2e_ms: f64,
    /// Fraction of its requests that met its SLO, when it states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_attainment: Option<f64>,
}

/// A contender that did not run, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    /// Contender name.
    pub contender: String,
    /// Why.
    pub reason: String,
}

/// The agreement of real time and DES at one QPS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validation {
    /// Offered QPS (model time).
    pub qps: f64,
    /// DES policies ordered by real-time p90 e2e (best first).
    pub real_order: Vec<String>,
    /// The same policies ordered by DES p90 e2e.
    pub des_order: Vec<String>,
    /// Pairs of contenders that the two rank the same way, of those whose p90 e2e differ by more
    /// than the tolerance in both (closer pairs are ties and not counted).
    pub concordant_pairs: usize,
    /// Pairs ranked the other way round (beyond the tolerance in both).
    pub discordant_pairs: usize,
    /// Largest |real / DES − 1| of p90 TPOT over the contenders.
    pub max_tpot_dev: f64,
    /// Largest |real / DES − 1| of p90 e2e over the contenders.
    pub max_e2e_dev: f64,
    /// Median |real / DES − 1| of p90 e2e.
    pub median_e2e_dev: f64,
}

/// The whole comparison.
#[derive(Debug, Serialize, Deserialize)]
pub struct CompareReport {
    /// Scenario name.
    pub scenario: String,
    /// Workload description.
    pub workload: String,
    /// Fleet size.
    pub replicas: usize,
    /// The fleet's time_scale.
    pub time_scale: f64,
    /// The DES capacity estimate of this fleet (requests/s, model time).
    pub capacity_qps: f64,
    /// Every row.
    pub rows: Vec<CompareRow>,
    /// Contenders not run.
    pub skipped: Vec<Skipped>,
    /// Real time vs DES, per QPS.
    pub validation: Vec<Validation>,
    /// The stated tolerance.
    pub tolerance: f64,
}

impl CompareReport {
    /// A report saved from an earlier `igw bench compare --json` run: the file's last line that
    /// starts with `{`.
    pub fn load_saved(path: &Path) -> Result<CompareReport, CompareError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| BenchError::io(format!("reading {}", path.display()), e))?;
        let last = text.lines().rev().find(|l| l.starts_with('{')).ok_or(CompareError::NoReportLine)?;
        serde_json::from_str(last).map_err(|e| CompareError::NotAReport(path.to_path_buf(), e))
    }
}

fn dev(real: f64, des: f64) -> f64 {
    if des > 0.0 { (real / des - 1.0).abs() } else { f64::INFINITY }
}

/// Real time vs DES per QPS: orders, pair agreement, deviations.
pub fn validate(rows: &[CompareRow], ladder: &[f64], tolerance: f64) -> Vec<Validation> {
    let mut out = Vec::new();
    for &q in ladder {
        let pts: Vec<(&CompareRow, &DesPoint)> =
            rows.iter().filter(|r| r.step.qps == q).filter_map(|r| r.des.as_ref().map(|d| (r, d))).collect();
        if pts.is_empty() {
            continue;
        }
        let order = |key: &dyn Fn(&(&CompareRow, &DesPoint)) -> f64| {
            let mut v: Vec<&(&CompareRow, &DesPoint)> = pts.iter().collect();
            v.sort_by(|a, b| key(a).total_cmp(&key(b)));
            v.iter().map(|(r, _)| r.contender.clone()).collect::<Vec<_>>()
        };
        let (mut concordant, mut discordant) = (0, 0);
        for (i, a) in pts.iter().enumerate() {
            for b in &pts[i + 1..] {
                let real = a.0.step.p90_e2e_ms / b.0.step.p90_e2e_ms.max(1e-9);
                let des = a.1.p90_e2e_ms / b.1.p90_e2e_ms.max(1e-9);
                let clear = |r: f64| (r - 1.0).abs() > tolerance;
                if clear(real) && clear(des) {
                    if (real > 1.0) == (des > 1.0) {
                        concordant += 1;
                    } else {
                        discordant += 1;
                    }
                }
            }
        }
        let mut e2e: Vec<f64> = pts.iter().map(|(r, d)| dev(r.step.p90_e2e_ms, d.p90_e2e_ms)).collect();
        let tpot = pts.iter().map(|(r, d)| dev(r.step.p90_tpot_ms, d.p90_tpot_ms)).fold(0.0, f64::max);
        e2e.sort_by(f64::total_cmp);
        out.push(Validation {
            qps: q,
            real_order: order(&|p| p.0.step.p90_e2e_ms),
            des_order: order(&|p| p.1.p90_e2e_ms),
            concordant_pairs: concordant,
            discordant_pairs: discordant,
            max_tpot_dev: tpot,
            max_e2e_dev: e2e.last().copied().unwrap_or(0.0),
            median_e2e_dev: e2e[e2e.len() / 2],
        });
    }
    out
}

/// The report as Markdown: the table, what was skipped, the DES agreement.
pub fn markdown(r: &CompareReport) -> String {
    let mut s = format!(
        "`igw bench compare` · scenario {} · {} · {} replicas · capacity {:.1} QPS · time_scale {} · latencies in model time\n\n",
        r.scenario, r.workload, r.replicas, r.capacity_qps, r.time_scale
    );
    s.push_str("| contender | QPS | sent | attempted | completed | rejected | failed | timeouts | p50 / p90 TTFT ms | p90 ITL ms | p90 TPOT ms | p50 / p90 e2e ms | output tok/min | DES p90 TTFT / ITL / TPOT / e2e ms |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut rows: Vec<&CompareRow> = r.rows.iter().collect();
    rows.sort_by(|a, b| a.step.qps.total_cmp(&b.step.qps));
    for row in rows {
        let t = &row.step;
        let des = row.des.as_ref().map_or_else(
            || "–".to_string(),
            |d| format!("{:.0} / {:.1} / {:.1} / {:.0}", d.p90_ttft_ms, d.p90_itl_ms, d.p90_tpot_ms, d.p90_e2e_ms),
        );
        s.push_str(&format!("| {} | {} | {des} |\n", row.contender, t.cells()));
    }
    if r.rows.iter().any(|row| row.step.cost_per_mtok.is_some()) {
        s.push_str("\nCost per million output tokens at capacity (replica price over its capacity):\n\n");
        s.push_str("| contender | QPS | real time | DES |\n|---|---|---|---|\n");
        let mut rows: Vec<&CompareRow> = r.rows.iter().collect();
        rows.sort_by(|a, b| a.step.qps.total_cmp(&b.step.qps));
        let cell = |c: Option<f64>| c.map_or_else(|| "–".to_string(), |c| format!("{c:.3}"));
        for row in rows {
            let des = row.des.as_ref().and_then(|d| d.cost_per_mtok);
            s.push_str(&format!(
                "| {} | {:.1} | {} | {} |\n",
                row.contender,
                row.step.qps,
                cell(row.step.cost_per_mtok),
                cell(des)
            ));
        }
    }
    if r.rows.iter().any(|row| !row.step.by_class.is_empty()) {
        s.push_str("\nPer traffic class (objective and fairness id sent as headers; peers ignore them):\n\n");
        s.push_str("| contender | QPS | class | attempted | completed | rejected | failed | timeouts | p90 TTFT ms | p90 e2e ms | token share | SLO met (real / DES) | DES completed / rejected / p90 e2e ms |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        let mut rows: Vec<&CompareRow> = r.rows.iter().collect();
        rows.sort_by(|a, b| a.step.qps.total_cmp(&b.step.qps));
        for row in rows {
            for (name, c) in &row.step.by_class {
                let des = row.des.as_ref().and_then(|d| d.by_class.get(name)).map_or_else(
                    || "–".to_string(),
                    |d| format!("{} / {} / {:.0}", d.completed, d.rejected + d.timeouts, d.p90_e2e_ms),
                );
                let pct = |a: Option<f64>| a.map_or_else(|| "–".to_string(), |a| format!("{:.1}%", a * 100.0));
                let slo = format!(
                    "{} / {}",
                    pct(c.slo_attainment),
                    pct(row.des.as_ref().and_then(|d| d.by_class.get(name)).and_then(|d| d.slo_attainment))
                );
                s.push_str(&format!(
                    "| {} | {:.1} | {name} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.3} | {slo} | {des} |\n",
                    row.contender,
                    row.step.qps,
                    c.attempted,
                    c.completed,
                    c.rejected,
                    c.failed,
                    c.timeouts,
                    c.p90_ttft_ms,
                    c.p90_e2e_ms,
                    c.share
                ));
            }
        }
    }
    for k in &r.skipped {
        s.push_str(&format!("\nskipped {}: {}\n", k.contender, k.reason));
    }
    for v in &r.validation {
        s.push_str(&format!(
            "\nDES vs real time at {:.1} QPS: p90 e2e order real {:?} / DES {:?}; pairs apart by more than ±{:.0}% in both: {} same way, {} reversed; |real/DES − 1| of p90 e2e median {:.0}%, max {:.0}%; of p90 TPOT max {:.0}%\n",
            v.qps,
            v.real_order,
            v.des_order,
            r.tolerance * 100.0,
            v.concordant_pairs,
            v.discordant_pairs,
            v.median_e2e_dev * 100.0,
            v.max_e2e_dev * 100.0,
            v.max_tpot_dev * 100.0
        ));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(c: &str, q: f64, real: f64, des: f64) -> CompareRow {
        CompareRow {
            contender: c.into(),
            step: StepReport { qps: q, p90_e2e_ms: real, p90_tpot_ms: real / 100.0, ..Default::default() },
            des: Some(DesPoint {
                policy: c.into(),
                p90_ttft_ms: 0.0,
                p90_itl_ms: 0.0,
                p90_tpot_ms: des / 100.0,
                p90_e2e_ms: des,
                output_tokens_per_min: 0.0,
                by_class: BTreeMap::new(),
                cost_per_mtok: None,
            }),
        }
    }

    #[test]
    fn validation_counts_pairs_beyond_the_tolerance_only() {
        // a ≪ b in both; b vs c within 10% in real time (a tie); c ≪ d reversed in the DES.
        let rows = vec![
            row("a", 1.0, 100.0, 110.0),
            row("b", 1.0, 300.0, 300.0),
            row("c", 1.0, 310.0, 600.0),
            row("d", 1.0, 900.0, 500.0),
        ];
        let v = &validate(&rows, &[1.0], 0.25)[0];
        assert_eq!(v.real_order, ["a", "b", "c", "d"]);
        assert_eq!(v.des_order, ["a", "b", "d", "c"]);
        // Pairs clear in both: a-b, a-c, a-d (same way), b-c (real 1.03: a tie, skipped), b-d (same), c-d (real 2.9 vs des 0.83: reversed? des 0.83 is within 25% → skipped).
        assert_eq!((v.concordant_pairs, v.discordant_pairs), (4, 0));
        assert!((v.max_e2e_dev - 0.8).abs() < 1e-9, "{}", v.max_e2e_dev);
        let rows = vec![row("a", 1.0, 100.0, 400.0), row("b", 1.0, 400.0, 100.0)];
        let v = &validate(&rows, &[1.0, 2.0], 0.25);
        assert_eq!(v.len(), 1, "no rows at 2.0 QPS → no validation entry");
        assert_eq!((v[0].concordant_pairs, v[0].discordant_pairs), (0, 1));
    }

    #[test]
    fn a_saved_report_is_read_back_from_its_last_json_line() {
        let report = CompareReport {
            scenario: "shared-prefix".into(),
            workload: "w".into(),
            replicas: 2,
            time_scale: 0.2,
            capacity_qps: 20.0,
            rows: vec![row("igw", 10.0, 900.0, 850.0)],
            skipped: vec![Skipped { contender: "vllm-router-cache-aware".into(), reason: "not installed".into() }],
            validation: Vec::new(),
            tolerance: 0.25,
        };
        let dir = std::env::temp_dir().join(format!("igw-bench-compare-saved-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.txt");
        let text = format!("{}\n{}\n", markdown(&report), serde_json::to_string(&report).unwrap());
        std::fs::write(&path, text).unwrap();
        let back = CompareReport::load_saved(&path).unwrap();
        assert_eq!(markdown(&back), markdown(&report));
        assert!(markdown(&back).contains("| igw | 10.0 |") && markdown(&back).contains("skipped vllm-router"));
        std::fs::write(&path, "no report here\n").unwrap();
        assert_eq!(CompareReport::load_saved(&path).unwrap_err().to_string(), "no JSON report line in the file");
        std::fs::write(&path, "{\"rows\": 3}\n").unwrap();
        let e = CompareReport::load_saved(&path).unwrap_err().to_string();
        assert_eq!(e, format!("{}: not an igw bench compare report", path.display()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
