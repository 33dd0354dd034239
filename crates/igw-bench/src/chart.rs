//! Benchmark charts in the blog's three-panel form: grouped bars over offered QPS for output
//! tokens per minute, p90 per-output-token latency and p90 end-to-end latency, one bar colour per
//! policy, a legend in each panel.
//!
//! [`Chart`] is a plain value (sans-IO). [`Chart::svg`] writes a self-contained SVG;
//! [`Chart::png`] rasterises the same layout with this crate's own rectangle filler and bitmap
//! font (`chart/font.rs`) and encodes it with the `png` crate. Missing values, NaN, infinities and
//! negative values draw no bar.

mod font;
mod layout;
mod raster;
mod svg;
mod ticks;

use std::path::{Path, PathBuf};

use crate::BenchError;

/// One policy's values, one per x category (`None`: no bar).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend name (a policy).
    pub name: String,
    /// Value per category; entries past the end of this vector are missing too.
    pub values: Vec<Option<f64>>,
}

/// One grouped-bar panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Title above the plot.
    pub title: String,
    /// Y axis label (drawn vertically).
    pub y_label: String,
    /// Series; series `i` gets colour `i` of the palette in every panel.
    pub series: Vec<Series>,
}

/// A row of panels sharing the x categories.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Title above all panels.
    pub title: String,
    /// X axis label under each panel.
    pub x_label: String,
    /// X category labels (offered QPS).
    pub categories: Vec<String>,
    /// Panels, left to right.
    pub panels: Vec<Panel>,
}

/// One row for [`Chart::three_panel`]: policy, offered QPS, output tokens per minute, p90
/// per-output-token latency (ms), p90 end-to-end latency (ms). Use NaN for a value that is not
/// known (e.g. latencies of a step where nothing completed).
pub type ThreePanelRow<'a> = (&'a str, f64, f64, f64, f64);

/// The series palette (RGB); series `i` gets entry `i % 10`.
pub const PALETTE: [[u8; 3]; 10] = [
    [0x3b, 0x75, 0xaf],
    [0xef, 0x86, 0x36],
    [0x51, 0x9e, 0x3e],
    [0xc5, 0x3a, 0x32],
    [0x8d, 0x6a, 0xba],
    [0x84, 0x58, 0x4e],
    [0xd5, 0x7d, 0xbe],
    [0x7f, 0x7f, 0x7f],
    [0xa8, 0xa8, 0x2a],
    [0x2f, 0xb2, 0xc4],
];

impl Chart {
    /// The three-panel chart of a `igw bench sim` report: x = the rows' offered QPS (sorted,
    /// deduplicated), one series per policy in first-seen order. Latencies of a row where nothing
    /// completed are missing, not 0.
    pub fn from_report(r: &crate::report::Report) -> Chart {
        let rows: Vec<ThreePanelRow<'_>> = r
            .rows
            .iter()
            .map(|row| {
                let lat = |v: f64| if row.completed == 0 { f64::NAN } else { v };
                (row.policy.as_str(), row.qps, row.output_tokens_per_min, lat(row.p90_tpot_ms), lat(row.p90_e2e_ms))
            })
            .collect();
        let mut title = format!("igw bench sim · {}", r.scenario);
        if r.capacity_qps.is_finite() && r.capacity_qps > 0.0 {
            title.push_str(&format!(" · capacity {:.0} QPS", r.capacity_qps));
        }
        Chart::three_panel(&title, &rows)
    }

    /// The three-panel chart of an `igw bench run` report: its steps as one series named `label`
    /// (the policy or gateway measured); latencies of a step where nothing completed are left out.
    pub fn from_run(r: &crate::load::run::RunReport, label: &str) -> Chart {
        let rows: Vec<ThreePanelRow<'_>> = r
            .steps
            .iter()
            .map(|t| {
                let lat = |v: f64| if t.completed == 0 { f64::NAN } else { v };
                (label, t.qps, t.output_tokens_per_min, lat(t.p90_tpot_ms), lat(t.p90_e2e_ms))
            })
            .collect();
        Chart::three_panel(&format!("igw bench run · {}", r.url), &rows)
    }

    /// The three-panel chart of an `igw bench compare` report, one bar colour per contender
    /// (latencies in model time; those of a step where nothing completed are left out).
    pub fn from_compare(r: &crate::compare::CompareReport) -> Chart {
        let rows: Vec<ThreePanelRow<'_>> = r
            .rows
            .iter()
            .map(|row| {
                let t = &row.step;
                let lat = |v: f64| if t.completed == 0 { f64::NAN } else { v };
                (row.contender.as_str(), t.qps, t.output_tokens_per_min, lat(t.p90_tpot_ms), lat(t.p90_e2e_ms))
            })
            .collect();
        let title = format!("igw bench compare · {} · {} replicas · model time", r.scenario, r.replicas);
        Chart::three_panel(&title, &rows)
    }

    /// The three-panel chart from generic rows (the real-time runner's steps, say): x = the
    /// rows' QPS (sorted, deduplicated, non-finite ones dropped), one series per policy in
    /// first-seen order; a later row for the same (policy, QPS) replaces an earlier one.
    pub fn three_panel(title: &str, rows: &[ThreePanelRow<'_>]) -> Chart {
        let mut qps: Vec<f64> = rows.iter().map(|r| r.1).filter(|q| q.is_finite()).collect();
        qps.sort_by(f64::total_cmp);
        qps.dedup();
        let mut policies: Vec<&str> = Vec::new();
        for r in rows {
            if !policies.contains(&r.0) {
                policies.push(r.0);
            }
        }
        let metric = |pick: fn(&ThreePanelRow<'_>) -> f64| -> Vec<Series> {
            policies
                .iter()
                .map(|p| {
                    let mut values = vec![None; qps.len()];
                    for r in rows.iter().filter(|r| r.0 == *p) {
                        if let Ok(i) = qps.binary_search_by(|q| q.total_cmp(&r.1)) {
                            values[i] = Some(pick(r));
                        }
                    }
                    Series { name: (*p).to_string(), values }
                })
                .collect()
        };
        Chart {
            title: title.to_string(),
            x_label: "QPS".into(),
            categories: qps.iter().map(|&q| ticks::format_category(q)).collect(),
            panels: vec![
                Panel {
                    title: "Throughput (completed)".into(),
                    y_label: "output tokens / min".into(),
                    series: metric(|r| r.2),
                },
                Panel {
                    title: "p90 per-output-token latency".into(),
                    y_label: "p90 TPOT (ms)".into(),
                    series: metric(|r| r.3),
                },
                Panel {
                    title: "p90 end-to-end latency".into(),
                    y_label: "p90 e2e (ms)".into(),
                    series: metric(|r| r.4),
                },
            ],
        }
    }

    /// Width of the rendered chart in pixels (SVG user units and PNG pixels alike).
    pub fn width(&self) -> u32 {
        layout::canvas_size(self).0
    }

    /// Height of the rendered chart in pixels.
    pub fn height(&self) -> u32 {
        layout::canvas_size(self).1
    }

    /// A self-contained SVG document (no external fonts or stylesheets).
    pub fn svg(&self) -> String {
        svg::render(&layout::layout(self))
    }

    /// The same layout as an 8-bit RGB PNG, drawn by this crate's rasteriser and bitmap font.
    pub fn png(&self) -> Result<Vec<u8>, BenchError> {
        raster::png(&layout::layout(self))
    }

    /// Writes the chart to `PREFIX.svg` and `PREFIX.png` (the extensions appended to `prefix`)
    /// and returns the two paths.
    pub fn write(&self, prefix: &Path) -> Result<[PathBuf; 2], BenchError> {
        let with_ext = |ext: &str| {
            let mut p = prefix.as_os_str().to_owned();
            p.push(ext);
            PathBuf::from(p)
        };
        let (svg, png) = (with_ext(".svg"), with_ext(".png"));
        let write = |path: &Path, bytes: &[u8]| {
            std::fs::write(path, bytes).map_err(|e| BenchError::io(format!("writing {}", path.display()), e))
        };
        write(&svg, self.svg().as_bytes())?;
        write(&png, &self.png()?)?;
        Ok([svg, png])
    }
}

/// The value a bar is drawn for: finite and not negative.
fn drawable(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite() && *v >= 0.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::report::{Report, Row};
    use proptest::prelude::*;

    fn row(policy: &str, qps: f64, tokens: f64, tpot: f64, e2e: f64) -> Row {
        Row {
            policy: policy.into(),
            qps,
            completed: 10,
            output_tokens_per_min: tokens,
            p90_tpot_ms: tpot,
            p90_e2e_ms: e2e,
            ..Default::default()
        }
    }

    fn report() -> Report {
        Report {
            scenario: "blog".into(),
            capacity_qps: 550.0,
            workload: "sharegpt".into(),
            rows: vec![
                row("random", 300.0, 2.9e6, 30.0, 11_000.0),
                row("random", 100.0, 1.2e6, 10.0, 5_000.0),
                row("igw", 100.0, 1.17e6, 9.0, 4_900.0),
                row("igw", 300.0, 2.91e6, 25.0, 10_500.0),
                row("random", 500.0, 3.4e6, 260.0, 27_000.0),
            ],
        }
    }

    /// Heights of `<rect class="bar">` elements in document order.
    fn bar_heights(svg: &str) -> Vec<f64> {
        svg.split("<rect class=\"bar\"")
            .skip(1)
            .map(|s| {
                let h = s.split("height=\"").nth(1).unwrap();
                h[..h.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn from_report_sorts_qps_and_keeps_policy_order() {
        let c = Chart::from_report(&report());
        assert_eq!(c.categories, ["100", "300", "500"]);
        assert_eq!(c.panels.len(), 3);
        let names: Vec<&str> = c.panels[0].series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["random", "igw"]);
        assert_eq!(c.panels[0].series[0].values, [Some(1.2e6), Some(2.9e6), Some(3.4e6)]);
        assert_eq!(c.panels[1].series[1].values, [Some(9.0), Some(25.0), None]);
        assert_eq!(c.panels[2].series[1].values, [Some(4_900.0), Some(10_500.0), None]);
        assert!(c.title.contains("blog") && c.title.contains("550"));
    }

    #[test]
    fn latencies_of_rows_where_nothing_completed_are_missing() {
        let mut r = report();
        r.rows[0].completed = 0;
        let c = Chart::from_report(&r);
        assert_eq!(c.panels[0].series[0].values[1], Some(2.9e6));
        assert!(c.panels[1].series[0].values[1].unwrap().is_nan());
        assert_eq!(bar_heights(&c.svg()).len(), 5 * 3 - 2);
    }

    #[test]
    fn svg_names_every_series_and_draws_one_rect_per_value() {
        let svg = Chart::from_report(&report()).svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for name in ["random", "igw"] {
            assert!(svg.contains(&format!(">{name}<")), "{name} missing");
        }
        assert_eq!(svg.matches("<rect").count(), 5 * 3);
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 5 * 3);
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        for t in ["Throughput", "p90 per-output-token latency", "QPS", "1M"] {
            assert!(svg.contains(t), "{t}");
        }
    }

    #[test]
    fn a_taller_value_gives_a_taller_bar() {
        let rows = [("a", 1.0, 10.0, 1.0, 1.0), ("a", 2.0, 40.0, 1.0, 1.0), ("b", 1.0, 20.0, 1.0, 1.0)];
        let h = bar_heights(&Chart::three_panel("t", &rows).svg());
        // Panel 0, category-major: a@1 (10), b@1 (20), a@2 (40); heights proportional to values.
        assert!(h[2] > h[1] && h[1] > h[0] && h[0] > 0.0, "{h:?}");
        assert!((h[1] - 2.0 * h[0]).abs() <= 1.0 && (h[2] - 4.0 * h[0]).abs() <= 2.0, "{h:?}");
    }

    #[test]
    fn xml_in_names_is_escaped() {
        let rows = [("<a & \"b\">", 1.0, 1.0, 1.0, 1.0)];
        let svg = Chart::three_panel("x<y", &rows).svg();
        assert!(svg.contains("&lt;a &amp; &quot;b&quot;&gt;") && svg.contains("x&lt;y"));
        assert!(!svg.contains("<a "));
    }

    #[test]
    fn png_has_the_stated_size_and_every_series_colour() {
        let names = ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10"];
        let rows: Vec<ThreePanelRow<'_>> = names
            .iter()
            .enumerate()
            .flat_map(|(i, n)| [100.0, 200.0].map(|q| (*n, q, q * (i + 1) as f64, 5.0, 7.0)))
            .collect();
        let c = Chart::three_panel("colours", &rows);
        let (w, h, px) = decode(&c.png().unwrap());
        assert_eq!((w, h), (c.width(), c.height()));
        assert_eq!(px.len(), (w * h * 3) as usize);
        for colour in PALETTE {
            assert!(px.chunks(3).any(|p| p == colour), "no pixel of {colour:?}");
        }
        // The background is white and the text is drawn.
        assert_eq!(&px[..3], [255, 255, 255]);
        assert!(px.chunks(3).any(|p| p == layout::TEXT));
    }

    #[test]
    fn write_puts_an_svg_and_a_png_beside_the_prefix() {
        let dir = std::env::temp_dir().join(format!("igw-bench-chart-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let [svg, png] = Chart::from_report(&report()).write(&dir.join("c.v1")).unwrap();
        let names = (svg.file_name().unwrap().to_str().unwrap(), png.file_name().unwrap().to_str().unwrap());
        assert_eq!(names, ("c.v1.svg", "c.v1.png"), "the extensions are appended, not replaced");
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
        let e = Chart::from_report(&report()).write(&dir.join("missing/c")).unwrap_err();
        assert_eq!(e.to_string(), format!("writing {}", dir.join("missing/c.svg").display()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn run_and_compare_reports_chart_one_series_per_label_or_contender() {
        use crate::load::http::StepReport;
        let step = |qps: f64, completed: u64| StepReport {
            qps,
            completed,
            output_tokens_per_min: 100.0 * qps,
            p90_tpot_ms: 5.0,
            p90_e2e_ms: 500.0,
            ..Default::default()
        };
        let run = crate::load::run::RunReport {
            url: "http://gw".into(),
            workload: "w".into(),
            steps: vec![step(2.0, 10), step(1.0, 0)],
        };
        let c = Chart::from_run(&run, "igw");
        assert_eq!(c.title, "igw bench run · http://gw");
        assert_eq!(c.categories, ["1", "2"]);
        assert_eq!(c.panels[0].series[0].values, [Some(100.0), Some(200.0)]);
        assert!(c.panels[1].series[0].values[0].unwrap().is_nan(), "nothing completed at 1 QPS");
        let row = |contender: &str, qps: f64| crate::compare::CompareRow {
            contender: contender.into(),
            step: step(qps, 5),
            des: None,
        };
        let compare = crate::compare::CompareReport {
            scenario: "shared-prefix".into(),
            workload: "w".into(),
            replicas: 2,
            time_scale: 0.2,
            capacity_qps: 20.0,
            rows: vec![row("igw", 10.0), row("envoy-round-robin", 10.0)],
            skipped: Vec::new(),
            validation: Vec::new(),
            tolerance: 0.25,
        };
        let c = Chart::from_compare(&compare);
        assert_eq!(c.title, "igw bench compare · shared-prefix · 2 replicas · model time");
        let names: Vec<&str> = c.panels[2].series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["igw", "envoy-round-robin"]);
    }

    #[test]
    fn edge_cases_render() {
        let empty = Chart::from_report(&Report::default());
        assert!(empty.categories.is_empty());
        let weird = [
            ("nan", 1.0, f64::NAN, f64::INFINITY, -3.0),
            ("zero", 1.0, 0.0, 0.0, 0.0),
            ("x".repeat(300).leak() as &str, f64::NAN, 1.0, 1.0, 1.0),
            ("x".repeat(300).leak() as &str, 2.0, 1e300, f64::MAX, 5e-324),
        ];
        let no_panels = Chart { title: String::new(), x_label: String::new(), categories: vec![], panels: vec![] };
        for c in [empty, Chart::three_panel("weird", &weird), Chart::three_panel("one", &weird[1..2]), no_panels] {
            let svg = c.svg();
            assert_eq!(svg.matches("<svg").count(), 1);
            let (w, h, _) = decode(&c.png().unwrap());
            assert_eq!((w, h), (c.width(), c.height()));
        }
        // NaN, inf and negative values draw nothing; zeros draw zero-height bars.
        let c = Chart::three_panel("weird", &weird[..2]);
        let h = bar_heights(&c.svg());
        assert_eq!(h, [0.0, 0.0, 0.0]);
    }

    fn arb_value() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            Just(None),
            any::<f64>().prop_map(Some),
            (0.0..1e7f64).prop_map(Some),
            Just(Some(f64::NAN)),
            Just(Some(0.0)),
        ]
    }

    fn arb_chart() -> impl Strategy<Value = Chart> {
        let series = ("\\PC{0,40}|[\\x00-\\x1f<>&\"']{0,5}", prop::collection::vec(arb_value(), 0..8))
            .prop_map(|(name, values)| Series { name, values });
        let panel = ("\\PC{0,50}", "\\PC{0,50}", prop::collection::vec(series, 0..12))
            .prop_map(|(title, y_label, series)| Panel { title, y_label, series });
        ("\\PC{0,120}", "\\PC{0,10}", prop::collection::vec("\\PC{0,12}", 0..8), prop::collection::vec(panel, 0..4))
            .prop_map(|(title, x_label, categories, panels)| Chart { title, x_label, categories, panels })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn arbitrary_charts_render_without_panicking(c in arb_chart()) {
            let svg = c.svg();
            prop_assert_eq!(svg.matches("<svg").count(), 1);
            prop_assert_eq!(svg.matches("</svg>").count(), 1);
            prop_assert!(svg.trim_end().ends_with("</svg>"));
            prop_assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
            prop_assert!(!svg.chars().any(|ch| ch.is_control() && ch != '\n'));
            let drawn: usize = c
                .panels
                .iter()
                .flat_map(|p| &p.series)
                .map(|s| s.values.iter().take(c.categories.len()).filter(|v| drawable(**v).is_some()).count())
                .sum();
            prop_assert_eq!(svg.matches("<rect").count(), drawn);
            let (w, h, _) = decode(&c.png().map_err(|e| TestCaseError::fail(e.to_string()))?);
            prop_assert_eq!((w, h), (c.width(), c.height()));
        }
    }
}
