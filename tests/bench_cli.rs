//! `tickinfer bench --short` (CI's short mode): every row runs and the outputs
//! are written. No timing assertions — only that each measurement happened.
mod util;

use std::process::Command;

#[test]
fn every_row_runs_in_short_mode() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["bench", "--short", "--out", dir.path().to_str().unwrap()])
        .current_dir(util::repo_root())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("bench.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    for want in [
        "floor: busy-poll ping-pong",
        "bare ORT session.run",
        "tickinfer engine (features+run+decode)",
        "tickinfer e2e --poll spin",
        "tickinfer e2e --poll adaptive",
        "tickinfer e2e --poll block",
        "tickinfer e2e sparse",
        "tickinfer e2e sparse, kept warm",
        "tickinfer throughput (pipelined)",
        "python sidecar (socket + onnxruntime)",
        "floor: TCP ping-pong, loopback",
        "tickinfer e2e TCP, loopback",
        "floor: TCP ping-pong, veth",
        "tickinfer e2e TCP, veth",
    ] {
        let row = rows
            .iter()
            .find(|r| r["name"] == want)
            .unwrap_or_else(|| panic!("row {want} missing: {names:?}"));
        let ran = row["count"].as_u64().unwrap() > 0 && row["p50"].as_u64().unwrap() > 0;
        let skipped = row["note"].as_str().unwrap().starts_with("skipped: ");
        // Only the Python row (when onnxruntime is not importable) and the veth rows (not
        // root, or no iproute2) may be skipped, and they say why.
        let no_netns = !util::is_root() || row["note"].as_str().unwrap().contains("iproute2");
        let may_skip = want.starts_with("python") || (want.ends_with("veth") && no_netns);
        assert!(ran || (skipped && may_skip), "{want} did not run: {row}");
    }
    let throughput = rows.iter().find(|r| r["name"] == "tickinfer throughput (pipelined)").unwrap();
    assert!(throughput["throughput_per_s"].as_f64().unwrap() > 0.0);
    // The stateful and sequence models, engine beside bare ORT, every one run.
    for model in tickinfer::bench::MORE_MODELS {
        let stem = std::path::Path::new(model).file_stem().unwrap().to_str().unwrap();
        for side in ["bare ORT", "engine"] {
            let want = format!("{side}: {stem}");
            let row = rows
                .iter()
                .find(|r| r["name"] == want.as_str())
                .unwrap_or_else(|| panic!("{want}: {names:?}"));
            assert!(row["count"].as_u64().unwrap() > 0 && row["p50"].as_u64().unwrap() > 0, "{row}");
        }
    }
    assert!(report["ratios"]["p50"].as_f64().unwrap() > 0.0);
    assert!(report["host"]["cpu"].as_str().is_some());
    for f in ["bench.md", "bench.svg", "bench.png"] {
        assert!(dir.path().join(f).exists(), "{f} not written");
    }
    assert!(text.contains("E2E / (floor + bare ORT)"), "{text}");
    assert!(text.contains("E2E over TCP − (TCP floor + engine)"), "{text}");
}
