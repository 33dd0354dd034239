//! `igw bench extproc` end to end: it starts a real `igw epp`, drives it over gRPC and reports.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn drives_a_real_epp_and_reports_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_igw"))
        .args(["bench", "extproc", "--endpoints", "4", "--rps", "100", "--duration", "500ms", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["completed"], 50, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["p50_us"].as_f64().unwrap() > 0.0 && v["p99_us"].as_f64() >= v["p50_us"].as_f64());
    assert!(v["prefix_index_entries"].as_u64().unwrap() > 0, "prefix scoring ran: {v}");
    assert!(v["rss_mib"].as_f64().unwrap() > 0.0);
    assert!(v["epp_cpu_us_per_request"].as_f64().unwrap() > 0.0, "{v}");
}
