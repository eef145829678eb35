//! The Grafana dashboard and the Prometheus rules against a live server: every
//! `tickinfer_*` metric they name is exported, every dashboard query is filtered by the
//! `$job`/`$instance` variables, latency panels are in seconds, recording rules used
//! are defined; `promtool` checks the exposition and the rules and runs the rules' unit
//! tests (skipped with a message where `promtool` is absent; CI installs it).
mod util;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

use util::server::{request, Client, Server};
use util::{repo_root, skip};

/// Every `tickinfer_name` in `text` (names end at the first character not in [a-z0-9_]).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find("tickinfer_").map(|i| i + from) {
        let before = if i == 0 { b' ' } else { bytes[i - 1] };
        let end = text[i..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |e| e + i);
        let name = &text[i..end];
        let inside_a_word = before.is_ascii_alphanumeric() || before == b'_' || before == b':';
        if !inside_a_word && !name.ends_with('_') {
            names.insert(name.to_string());
        }
        from = end;
    }
    names
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_root().join("deploy/grafana/tickinfer.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

fn rules_text() -> String {
    std::fs::read_to_string(repo_root().join("deploy/prometheus/rules.yml")).unwrap()
}

/// Every PromQL expression of the dashboard: panel targets, annotations, variable queries.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    let mut exprs = vec![];
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for a in d["annotations"]["list"].as_array().unwrap() {
        exprs.push(a["expr"].as_str().unwrap().to_string());
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    exprs
}

/// A live server's `/metrics` after some traffic and a reload, with a shadow candidate
/// attached (the bundled model under another name).
fn live_metrics() -> String {
    let dir = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(util::repo_root().join("models/lobster_direction.toml")).unwrap();
    let onnx = util::repo_root().join("models/lobster_direction.onnx");
    let candidate = dir.path().join("candidate.toml");
    let text = manifest
        .replacen("name = \"lobster_direction\"", "name = \"candidate\"", 1)
        .replace("onnx = \"lobster_direction.onnx\"", &format!("onnx = \"{}\"", onnx.display()));
    assert!(text.contains("name = \"candidate\""));
    std::fs::write(&candidate, text).unwrap();
    let server = Server::start(&["--metrics", "127.0.0.1:0", "--shadow", candidate.to_str().unwrap()]);
    server.stats_when(|r| r["shadows"].as_array().is_some_and(|l| l.len() == 1));
    let addr = server.metrics_address();
    let mut c = Client::connect(&server.socket).unwrap();
    c.send(&(1..=8).map(request).collect::<Vec<_>>()).unwrap();
    for _ in 0..8 {
        c.recv().unwrap();
    }
    // Published (every 200 ms): the live signal quality names the model's label rule and reference.
    server.stats_when(|r| r["signal_quality"]["answers"] == 8 && r["shadows"][0]["quality"]["answers"] == 8);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

fn promtool() -> Option<Command> {
    Command::new("promtool").arg("--version").output().ok().filter(|o| o.status.success())?;
    Some(Command::new("promtool"))
}

#[test]
fn every_metric_the_dashboard_and_rules_name_is_exported_and_promtool_agrees() {
    let body = live_metrics();
    let exported: BTreeSet<String> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let d = dashboard();
    let mut named = metric_names(&dashboard_exprs(&d).join("\n"));
    let dashboard_count = named.len();
    named.extend(metric_names(&rules_text()));
    let missing: Vec<_> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "named but not exported: {missing:?}\nexported: {exported:?}");
    eprintln!("{} metrics named ({dashboard_count} by the dashboard), all exported", named.len());
    // The labels the shadow panels and alert select on, each role side by side.
    for series in [
        r#"tickinfer_signal_answers_total{model="lobster_direction",role="primary"} 8"#,
        r#"tickinfer_signal_answers_total{model="candidate",role="shadow"} 8"#,
        r#"tickinfer_model_run_seconds{model="lobster_direction",role="primary",quantile="0.5"} "#,
        r#"tickinfer_model_run_seconds{model="candidate",role="shadow",quantile="0.99"} "#,
        r#"tickinfer_shadow_dropped_total{model="candidate",role="shadow"} 0"#,
        r#"tickinfer_shadow_scored_total{model="candidate",role="shadow"} 8"#,
    ] {
        assert!(body.contains(series), "no `{series}` in\n{body}");
    }
    let agreement: u64 = body
        .lines()
        .filter(|l| {
            l.starts_with(r#"tickinfer_shadow_agreement_total{model="candidate",role="shadow",primary=""#)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(agreement, 8, "both answered the 8 requests:\n{body}");

    let Some(mut check) = promtool() else {
        return skip(
            "every_metric_the_dashboard_and_rules_name_is_exported_and_promtool_agrees",
            "promtool not installed (Debian: apt-get install prometheus): exposition and rules not linted",
        );
    };
    let mut child = check
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n{body}");
    let dir = repo_root().join("deploy/prometheus");
    let rules =
        util::run_ok(Command::new("promtool").args(["check", "rules", "rules.yml"]).current_dir(&dir));
    assert!(rules.contains("SUCCESS"), "{rules}");
    let tests =
        util::run_ok(Command::new("promtool").args(["test", "rules", "rules.test.yml"]).current_dir(&dir));
    assert!(tests.contains("SUCCESS"), "{tests}");
    // The dashboard's PromQL parses: each query (Grafana's variables filled in) as a
    // recording rule for `promtool check rules`.
    let scratch = tempfile::tempdir().unwrap();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_exprs(&d).iter().filter(|e| !e.starts_with("label_values(")).enumerate() {
        let filled = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        file += &format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&filled).unwrap()
        );
    }
    std::fs::write(scratch.path().join("dashboard.yml"), file).unwrap();
    let parsed = util::run_ok(
        Command::new("promtool").args(["check", "rules", "dashboard.yml"]).current_dir(scratch.path()),
    );
    assert!(parsed.contains("SUCCESS"), "{parsed}");
}

#[test]
fn dashboard_queries_are_filtered_and_latency_is_in_seconds() {
    let d = dashboard();
    let vars: Vec<&str> =
        d["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(vars, ["datasource", "job", "instance"]);
    let mut ids = BTreeSet::new();
    let mut latency_panels = 0;
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id {} twice", p["id"]);
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            // Every selector of a tickinfer metric (or `up`) carries both variables.
            for (i, _) in expr.match_indices('{') {
                assert!(
                    expr[i..].starts_with("{job=~\"$job\", instance=~\"$instance\""),
                    "panel `{}`: selector without $job/$instance: {expr}",
                    p["title"]
                );
            }
            if expr.contains("_seconds_bucket") {
                latency_panels += 1;
                assert_eq!(p["fieldConfig"]["defaults"]["unit"], "s", "panel `{}` shows seconds", p["title"]);
            }
        }
    }
    // p50/p99/p99.9 of total, queue and inference (9 queries), and the p99 stat.
    assert_eq!(latency_panels, 10, "latency queries");
    // The panels a desk looks for.
    let titles: Vec<&str> =
        d["panels"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap()).collect();
    for want in [
        "Server time",
        "Inference",
        "Answers per second by status",
        "Batch size",
        "Connections",
        "Cut-offs",
        "Macro-F1, live vs reference",
        "Hit rate and IC",
        "Coverage",
    ] {
        assert!(titles.iter().any(|t| t.starts_with(want)), "no `{want}` panel in {titles:?}");
    }
}

#[test]
fn recording_rules_used_are_defined() {
    let rules = rules_text();
    let defined: BTreeSet<&str> =
        rules.lines().filter_map(|l| l.trim().strip_prefix("- record: ")).map(str::trim).collect();
    let used: BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("tickinfer:"))
        .collect();
    assert!(!defined.is_empty());
    let undefined: Vec<_> = used.difference(&defined).collect();
    assert!(undefined.is_empty(), "recording rules used but not defined: {undefined:?}");
    let alerts = rules.lines().filter(|l| l.trim().starts_with("- alert: ")).count();
    assert!(alerts >= 5, "scrape down, p99 budget, error ratio, no answers, reload failed at least");
    for want in ["TickinferSignalBelowReference", "TickinferSignalCoverageLow"] {
        assert!(rules.contains(&format!("- alert: {want}")), "no {want} alert");
    }
}
