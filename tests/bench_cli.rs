//! `tickinfer bench --short` (CI's short mode): every row runs and the outputs
//! are written; `--markdown`'s tables are well formed. No timing assertions — only
//! that each measurement happened.
mod util;

use std::process::Command;

#[test]
fn every_row_runs_in_short_mode() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["bench", "--short", "--markdown", "--out", dir.path().to_str().unwrap()])
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
        "tickinfer e2e --poll spin, one shadow",
        "tickinfer throughput (pipelined), one shadow",
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
    assert!(text.contains("E2E with one shadow / without"), "{text}");

    // `--markdown` (what scripts/update_perf_docs.sh puts in docs/performance.md): the run's
    // date, machine and configuration, then two well-formed tables; bench.md keeps its own.
    let first = text.lines().next().unwrap_or("");
    assert!(
        first.starts_with("Run of ") && first.contains(" UTC, `tickinfer bench --requests 2000"),
        "{text}"
    );
    for want in ["Machine: ", "cores online", "kernel ", "Pinning: echo/server core "] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    assert!(!text.contains("written: "), "stdout is the markdown alone:\n{text}");
    let found = tables(&text);
    assert_eq!(found.len(), 2, "the request path and the models:\n{text}");
    assert!(found[0].len() > 10 && found[1].len() == 2 + tickinfer::bench::MORE_MODELS.len(), "{text}");
    assert!(found[1].iter().any(|l| l.contains("| lstm_2x128_step (")), "{text}");
    let md = std::fs::read_to_string(dir.path().join("bench.md")).unwrap();
    assert_eq!(tables(&md).len(), 1, "{md}");
}

/// Every markdown table in `text` (runs of lines starting with `|`), each checked: a header,
/// a separator of `---` cells, and every row with the header's number of columns.
fn tables(text: &str) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    let mut prev_table = false;
    for line in text.lines() {
        let is_table = line.starts_with('|');
        if is_table && !prev_table {
            out.push(Vec::new());
        }
        if is_table {
            out.last_mut().unwrap().push(line);
        }
        prev_table = is_table;
    }
    let cells = |l: &str| -> usize {
        assert!(l.starts_with('|') && l.ends_with('|'), "row not closed: {l}");
        l.matches('|').count() - 1
    };
    for t in &out {
        assert!(t.len() >= 3, "a table needs a header, a separator and a row: {t:?}");
        let n = cells(t[0]);
        let sep: Vec<&str> = t[1].trim_matches('|').split('|').collect();
        assert!(
            sep.len() == n
                && sep.iter().all(|c| {
                    let c = c.trim().trim_matches(':');
                    c.len() >= 3 && c.chars().all(|ch| ch == '-')
                }),
            "bad separator under {}: {}",
            t[0],
            t[1]
        );
        for row in &t[2..] {
            assert_eq!(cells(row), n, "{row} under {}", t[0]);
        }
    }
    out
}

#[test]
fn the_markdown_table_check_catches_a_ragged_table() {
    assert_eq!(tables("| a | b |\n|---|---:|\n| 1 | 2 |\n\ntext\n").len(), 1);
    for bad in
        ["| a | b |\n|---|---|\n| 1 | 2 | 3 |\n", "| a | b |\n|---|\n| 1 | 2 |\n", "| a | b |\n| 1 | 2 |\n"]
    {
        assert!(std::panic::catch_unwind(|| tables(bad)).is_err(), "{bad}");
    }
}

#[test]
fn utc_dates() {
    use tickinfer::bench::utc_minute;
    assert_eq!(utc_minute(0), "1970-01-01 00:00");
    assert_eq!(utc_minute(951_868_740), "2000-02-29 23:59");
    assert_eq!(utc_minute(1_709_210_040), "2024-02-29 12:34");
    assert_eq!(utc_minute(1_767_225_599), "2025-12-31 23:59");
}
