//! Merging Prometheus text expositions from several sources into one valid page.
//!
//! Each pool has its own request metrics; the admin listener serves them as one page. A family
//! must appear once (one `# HELP`, one `# TYPE`, its samples together), and a series that several
//! sources share (same name and labels) must appear once: its values are summed, which is right
//! for counters, histogram buckets, sums and counts, and for additive gauges.

use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    series: Vec<(String, f64)>,
    index: BTreeMap<String, usize>,
}

/// The base family of a sample name (`x_bucket`, `x_sum`, `x_count` belong to `x`) when `x` has
/// been declared.
fn family_of<'a>(sample: &'a str, declared: &BTreeMap<String, usize>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count", "_total", "_created"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && declared.contains_key(base)
        {
            return base;
        }
    }
    sample
}

/// Merges `pages` (each a valid exposition) into one: families in order of first appearance,
/// shared series summed. Lines that are not comments or `name{labels} value` are dropped.
pub fn merge(pages: &[String]) -> String {
    let mut order: BTreeMap<String, usize> = BTreeMap::new();
    let mut families: Vec<Family> = Vec::new();
    let slot = |name: &str, order: &mut BTreeMap<String, usize>, families: &mut Vec<Family>| -> usize {
        *order.entry(name.to_string()).or_insert_with(|| {
            families.push(Family::default());
            families.len() - 1
        })
    };
    for page in pages {
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').unwrap_or((rest, ""));
                let i = slot(name, &mut order, &mut families);
                families[i].help.get_or_insert_with(|| line.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, _) = rest.split_once(' ').unwrap_or((rest, ""));
                let i = slot(name, &mut order, &mut families);
                families[i].kind.get_or_insert_with(|| line.to_string());
            } else if line.starts_with('#') || line.trim().is_empty() {
                continue;
            } else if let Some((key, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.parse::<f64>()
            {
                let name = key.split_once('{').map_or(key, |(n, _)| n);
                let fam = family_of(name, &order).to_string();
                let i = slot(&fam, &mut order, &mut families);
                let f = &mut families[i];
                match f.index.get(key) {
                    Some(&j) => f.series[j].1 += v,
                    None => {
                        f.index.insert(key.to_string(), f.series.len());
                        f.series.push((key.to_string(), v));
                    }
                }
            }
        }
    }
    let mut out = String::new();
    for f in &families {
        for l in [&f.help, &f.kind].into_iter().flatten() {
            out.push_str(l);
            out.push('\n');
        }
        for (k, v) in &f.series {
            let _ = writeln!(out, "{k} {v}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_series_are_summed_and_families_appear_once() {
        let a = "# HELP req_total [ALPHA] Requests.\n# TYPE req_total counter\nreq_total{model_name=\"a\"} 2\nreq_total{model_name=\"x\"} 1\n\
# HELP lat [ALPHA] Latency.\n# TYPE lat histogram\nlat_bucket{le=\"1\"} 1\nlat_sum 0.5\nlat_count 1\n"
            .to_string();
        let b = "# HELP req_total [ALPHA] Requests.\n# TYPE req_total counter\nreq_total{model_name=\"b\"} 5\nreq_total{model_name=\"x\"} 3\n\
# HELP lat [ALPHA] Latency.\n# TYPE lat histogram\nlat_bucket{le=\"1\"} 2\nlat_sum 1.5\nlat_count 2\n"
            .to_string();
        let m = merge(&[a, b]);
        assert_eq!(m.matches("# HELP req_total").count(), 1);
        assert_eq!(m.matches("# TYPE lat histogram").count(), 1);
        assert!(m.contains("req_total{model_name=\"x\"} 4\n"), "{m}");
        assert!(m.contains("req_total{model_name=\"b\"} 5\n"));
        assert!(m.contains("lat_bucket{le=\"1\"} 3\nlat_sum 2\nlat_count 3\n"), "{m}");
        let req = m.find("req_total{model_name=\"b\"}").unwrap_or(usize::MAX);
        let lat = m.find("# HELP lat").unwrap_or(0);
        assert!(req < lat, "a family's samples stay together:\n{m}");
    }
}
