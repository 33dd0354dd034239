//! Property tests: render/parse round trips and "never panics" on arbitrary input.

#![allow(clippy::unwrap_used)]

use igw_core::{EndpointMetrics, Instant};
use igw_metrics::{
    EngineMapping, Exposition, Family, MetricSpec, MetricType, Sample, extract_from_bytes, parse, parse_filtered,
};
use proptest::prelude::*;

const VLLM: &[u8] = include_bytes!("fixtures/vllm.txt");

fn metric_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_:][a-zA-Z0-9_:]{0,12}"
}

fn label_value() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        3 => prop::sample::select(vec!['\\', '"', '\n', '}', '{', ',', '=', ' ', '#', '\t', 'é', '\u{1F600}']),
        2 => any::<char>(),
        2 => prop::char::range('a', 'z'),
    ];
    prop::collection::vec(ch, 0..12).prop_map(|v| v.into_iter().collect())
}

fn labels() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", label_value(), 0..4).prop_map(|m| m.into_iter().collect())
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-0.0),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
        any::<f64>(),
        (-1e6f64..1e6),
        any::<i32>().prop_map(f64::from),
    ]
}

fn help() -> impl Strategy<Value = Option<String>> {
    let ch = prop_oneof![prop::sample::select(vec!['\\', '\n', '"', ' ', '{', '#']), any::<char>()];
    prop::option::of(
        prop::collection::vec(ch, 0..16)
            .prop_map(|v| v.into_iter().filter(|c| *c != '\r').collect::<String>().trim_start().to_owned()),
    )
}

fn kind() -> impl Strategy<Value = MetricType> {
    prop::sample::select(vec![
        MetricType::Counter,
        MetricType::Gauge,
        MetricType::Histogram,
        MetricType::Summary,
        MetricType::Untyped,
    ])
}

fn family(index: usize) -> impl Strategy<Value = Family> {
    (metric_name(), help(), kind()).prop_flat_map(move |(base, help, kind)| {
        // The `_<index>` tail keeps family names unique and never equal to another's suffixed name.
        let name = format!("{base}_{index}");
        let suffixes: Vec<&'static str> = match kind {
            MetricType::Histogram => vec!["_bucket", "_sum", "_count"],
            MetricType::Summary => vec!["", "_sum", "_count"],
            MetricType::Counter => vec!["", "_total"],
            _ => vec![""],
        };
        let sample = (prop::sample::select(suffixes), labels(), value(), prop::option::of(any::<i64>()));
        let n = name.clone();
        prop::collection::vec(sample, 0..5).prop_map(move |samples| Family {
            name: n.clone(),
            help: help.clone(),
            kind,
            samples: samples
                .into_iter()
                .map(|(suffix, labels, value, timestamp)| Sample {
                    name: format!("{n}{suffix}"),
                    labels: labels.into_iter().collect(),
                    value,
                    timestamp,
                })
                .collect(),
        })
    })
}

fn exposition() -> impl Strategy<Value = Exposition> {
    (0usize..6)
        .prop_flat_map(|n| (0..n).map(family).collect::<Vec<_>>())
        .prop_map(|families| Exposition { families, errors: Vec::new() })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn render_then_parse_round_trips(expo in exposition()) {
        let text = expo.to_string();
        let back = parse(text.as_bytes());
        prop_assert!(back.errors.is_empty(), "{:?}\n{}", back.errors, text);
        prop_assert_eq!(&back, &expo, "{}", text);
        // The filtered parser sees the same samples for every sample name.
        for s in expo.families.iter().flat_map(|f| &f.samples) {
            let f = parse_filtered(text.as_bytes(), &[s.name.as_str()]);
            prop_assert_eq!(f.samples_named(&s.name).count(), expo.samples_named(&s.name).count());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let e = parse(&bytes);
        let lines = bytes.split(|&b| b == b'\n').count();
        prop_assert!(e.errors.iter().all(|err| err.line >= 1 && err.line <= lines));
        let _ = parse_filtered(&bytes, &["a", "vllm:num_requests_waiting"]);
        let _ = extract_from_bytes(&bytes, &EngineMapping::vllm(), &EndpointMetrics::default(), Instant::ZERO);
    }

    #[test]
    fn text_like_bytes_never_panic(
        bytes in prop::collection::vec(prop::sample::select(b"ab:_ {}=\",\\\"n#\n\t0.9e+-InfNaHELPTYPE".to_vec()), 0..512)
    ) {
        let _ = parse(&bytes);
        let _ = parse_filtered(&bytes, &["a", "b"]);
    }

    #[test]
    fn mutated_vllm_page_never_panics_and_keeps_other_lines(
        edits in prop::collection::vec((0..VLLM.len(), any::<u8>()), 1..8),
        cut in 0..=VLLM.len(),
    ) {
        let mut page = VLLM.to_vec();
        for (at, b) in edits {
            page[at] = b;
        }
        page.truncate(cut);
        let e = parse(&page);
        let full_lines = page.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
        // Each edit breaks at most three lines (itself, a merged/split neighbour, a later TYPE).
        prop_assert!(e.errors.len() <= 25);
        prop_assert!(e.sample_count() + e.errors.len() <= full_lines);
        let _ = extract_from_bytes(&page, &EngineMapping::vllm(), &EndpointMetrics::default(), Instant::ZERO);
    }

    #[test]
    fn spec_parser_never_panics(s in ".{0,40}") {
        if let Ok(spec) = s.parse::<MetricSpec>() {
            prop_assert_eq!(spec.to_string().parse::<MetricSpec>().unwrap(), spec);
        }
        let _ = igw_metrics::spec::parse_spec_list(&s);
    }
}
