//! The Prometheus endpoint: scraped over HTTP and parsed.
mod util;

use std::collections::HashMap;
use std::io::{Read, Write};

use tickinfer::wire::MlRequest;
use util::server::{request, Client, Server};

fn scrape(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// `name{labels}` → value, for every sample line.
fn parse(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line `{l}`"));
            (k.to_string(), v.parse::<f64>().unwrap_or_else(|_| panic!("bad value in `{l}`")))
        })
        .collect()
}

#[test]
fn metrics_endpoint_is_scraped_and_parsed_inline() {
    metrics_endpoint_is_scraped_and_parsed("inline");
}

/// The pipeline's worker records queue, inference and batch histograms on its own
/// thread: they must reach the endpoint as in inline mode (they once stayed zero).
#[test]
fn metrics_endpoint_is_scraped_and_parsed_pipeline() {
    metrics_endpoint_is_scraped_and_parsed("pipeline");
}

fn metrics_endpoint_is_scraped_and_parsed(mode: &str) {
    let server = Server::start(&["--metrics", "127.0.0.1:0", "--mode", mode]);
    let addr = server.metrics_address();
    let mut c = Client::connect(&server.socket).unwrap();
    let mut bad = request(0);
    bad.bid_price = 0;
    let mut reqs: Vec<MlRequest> = (1..=8).map(request).collect();
    reqs.push(bad);
    for _ in 0..50 {
        c.send(&reqs).unwrap();
        for _ in 0..reqs.len() {
            c.recv().unwrap();
        }
    }
    // Published every 200 ms (later on a loaded machine): scrape until everything is in.
    let t0 = std::time::Instant::now();
    let (head, body) = loop {
        let (head, body) = scrape(&addr, "/metrics");
        let m = parse(&body);
        let all_in = m.get("tickinfer_total_seconds_count") == Some(&450.0)
            && m.get("tickinfer_queue_seconds_count") == Some(&450.0)
            && m.get("tickinfer_batch_size_sum") == Some(&400.0);
        if all_in || t0.elapsed() > std::time::Duration::from_secs(20) {
            break (head, body);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/plain"), "{head}");
    let m = parse(&body);
    assert_eq!(m["tickinfer_responses_total{status=\"ok\",code=\"0\"}"], 400.0, "{body}");
    assert_eq!(m["tickinfer_responses_total{status=\"badprice\",code=\"6\"}"], 50.0);
    assert_eq!(m["tickinfer_errors_total"], 50.0);
    assert_eq!(m["tickinfer_connections"], 1.0);
    assert_eq!(m["tickinfer_model_version"], 1.0);
    // The backend is `auto`'s choice at load (native for the bundled model unless ORT timed faster).
    let info: Vec<_> = m.keys().filter(|k| k.starts_with("tickinfer_model_info{")).collect();
    assert!(
        info.len() == 1
            && ["native", "ort"].iter().any(|b| {
                *info[0]
                    == format!(
                        "tickinfer_model_info{{name=\"lobster_direction\",provider=\"cpu\",backend=\"{b}\"}}"
                    )
            }),
        "{info:?}"
    );
    assert_eq!(m[info[0]], 1.0);
    assert_eq!(m["tickinfer_reloads_total{result=\"ok\"}"], 0.0);
    // Histograms: cumulative buckets, +Inf equals the count, microsecond resolution.
    for h in ["total_seconds", "inference_seconds", "queue_seconds"] {
        let mut buckets: Vec<(f64, f64)> = m
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&format!("tickinfer_{h}_bucket{{le=\""))?.strip_suffix("\"}")?;
                Some((if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() > 20 && buckets[0].0 <= 1e-6, "{h}: {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{h} buckets not cumulative");
        assert_eq!(buckets.last().unwrap().1, m[&format!("tickinfer_{h}_count")]);
        assert!(m[&format!("tickinfer_{h}_count")] > 0.0, "{mode}: {h} is empty:\n{body}");
        assert!(m[&format!("tickinfer_{h}_sum")] > 0.0, "{mode}: {h} sums to zero:\n{body}");
    }
    assert_eq!(m["tickinfer_total_seconds_count"], 450.0);
    // One queue sample per request; at least one model run per round of 8 runnable requests.
    assert_eq!(m["tickinfer_queue_seconds_count"], 450.0, "{mode}");
    assert!((50.0..=400.0).contains(&m["tickinfer_inference_seconds_count"]), "{mode}");
    assert_eq!(m["tickinfer_batch_size_count"], m["tickinfer_inference_seconds_count"], "{mode}");
    assert_eq!(m["tickinfer_batch_size_sum"], 400.0, "{mode}: every runnable request is in one batch");
    let (head, _) = scrape(&addr, "/other");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
