//! `igw bench workload`: the length statistics of a scenario's workload, as the benchmarks send it.
//!
//! For ShareGPT: conversations parsed from the (truncated) file, those with two turns, the pairs
//! kept by the 4..=1024 token filter, and which token counter was used (DeepSeek's
//! `tokenizer.json` from `scripts/install-bench-data`, or the chars/4 fallback). For the synthetic
//! workloads: the same statistics over a number of seeded draws.

use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;

use crate::BenchError;
use crate::scenario::Scenario;
use crate::sharegpt::{LengthStats, ShareGptStats};
use crate::workload::WorkloadSpec;

/// What `igw bench workload` reports.
#[derive(Debug, Serialize)]
pub struct WorkloadReport {
    /// The scenario.
    pub scenario: String,
    /// The generator's description (names the token counter for ShareGPT).
    pub workload: String,
    /// Prompt/output pairs the statistics cover.
    pub n: usize,
    /// ShareGPT only: conversations parsed, with two turns, kept, and the counter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sharegpt: Option<ShareGptStats>,
    /// Prompt tokens.
    pub input: LengthStats,
    /// Output tokens.
    pub output: LengthStats,
}

/// The report for the built-in `scenario`: every kept pair for ShareGPT, else `samples` (at
/// least 1) draws of the scenario's generator with the workload's seed.
pub fn report(scenario: &str, samples: usize) -> Result<WorkloadReport, BenchError> {
    let sc = Scenario::builtin(scenario)?;
    let sharegpt = match &sc.workload {
        WorkloadSpec::Sharegpt { path, .. } => {
            crate::sharegpt::load_default(path.as_deref().map(std::path::Path::new))?
        }
        _ => None,
    };
    let generator = crate::cluster::generator(&sc)?;
    if let Some(l) = sharegpt {
        let s = l.stats();
        return Ok(WorkloadReport {
            scenario: sc.name.clone(),
            workload: generator.description.clone(),
            n: s.kept,
            input: s.input,
            output: s.output,
            sharegpt: Some(s),
        });
    }
    let mut rng = SmallRng::seed_from_u64(sc.workload.seed());
    let n = samples.max(1);
    let (mut input, mut output): (Vec<u32>, Vec<u32>) = (0..n)
        .map(|_| {
            let r = generator.next(&mut rng);
            (r.input, r.output)
        })
        .unzip();
    Ok(WorkloadReport {
        scenario: sc.name.clone(),
        workload: generator.description.clone(),
        n,
        sharegpt: None,
        input: LengthStats::of(&mut input),
        output: LengthStats::of(&mut output),
    })
}

/// The report as text (a Markdown table of the two length distributions).
pub fn markdown(r: &WorkloadReport) -> String {
    let mut s = format!("scenario {} · workload {} · n = {}\n", r.scenario, r.workload, r.n);
    if let Some(g) = &r.sharegpt {
        s.push_str(&format!(
            "ShareGPT: {} conversations parsed, {} with two turns, {} kept (4..=1024 tokens each), tokens: {}\n",
            g.parsed, g.two_turns, g.kept, g.counter
        ));
    }
    s.push_str("\n| tokens | mean | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|\n");
    for (name, l) in [("input", &r.input), ("output", &r.output)] {
        s.push_str(&format!(
            "| {name} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            l.mean, l.p50, l.p90, l.p99, l.max
        ));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_synthetic_workload_is_sampled() {
        let r = report("shared-prefix", 1000).unwrap();
        assert_eq!(r.n, 1000);
        assert!(r.sharegpt.is_none());
        // Shared-prefix requests all have the same lengths.
        assert_eq!(r.input.p50, r.input.max);
        assert!(r.output.mean > 0.0);
        let text = markdown(&r);
        assert!(text.contains("| input |") && text.contains("| output |"), "{text}");
    }
}
