#!/usr/bin/env python3
"""Writes deploy/grafana/tickinfer.json, the Grafana dashboard (edit here, then run:
`python3 scripts/make_dashboard.py`). tests/ops_dashboard.rs checks that every metric it
names is exported by a live server and that every query carries the $job/$instance filter."""
import json
import pathlib

SEL = 'job=~"$job", instance=~"$instance"'
DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []


def nid():
    return len(panels) + 1


def row(title, y):
    panels.append({"type": "row", "title": title, "id": nid(), "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})


def ts(title, desc, targets, unit, x, y, w=8, h=8):
    panels.append({
        "type": "timeseries", "title": title, "description": desc, "id": nid(), "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 0, "showPoints": "never"}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
                    for i, (e, l) in enumerate(targets)]})


def stat(title, desc, targets, unit, x, y, w=4, h=4, thresholds=None):
    panels.append({
        "type": "stat", "title": title, "description": desc, "id": nid(), "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": thresholds or {
            "mode": "absolute", "steps": [{"color": "green", "value": None}]}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "none", "textMode": "auto"},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i), "instant": True}
                    for i, (e, l) in enumerate(targets)]})


def table(title, desc, expr, x, y, w, h):
    panels.append({
        "type": "table", "title": title, "description": desc, "id": nid(), "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y}, "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True},
        "targets": [{"datasource": DS, "expr": expr, "format": "table", "instant": True, "refId": "A"}],
        "transformations": [{"id": "organize", "options": {"excludeByName": {
            k: True for k in ["Time", "Value", "__name__", "job"]}}}]})


def q(metric, quant):
    return f'histogram_quantile({quant}, sum by (le) (rate(tickinfer_{metric}_bucket{{{SEL}}}[$__rate_interval])))'


def lat(metric):
    return [(q(metric, 0.5), "p50"), (q(metric, 0.99), "p99"), (q(metric, 0.999), "p99.9")]


def rate(metric):
    return f'sum(rate(tickinfer_{metric}{{{SEL}}}[$__rate_interval]))'


def increase(metric):
    return f'sum(increase(tickinfer_{metric}{{{SEL}}}[$__rate_interval]))'


def steps(*pairs):
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in pairs]}


y = 0
row("Overview", y); y += 1
stat("Up", "Prometheus reached the metrics endpoint (the `up` series of the scrape job).",
     [(f'up{{{SEL}}}', "{{instance}}")], "none", 0, y, thresholds=steps(("red", None), ("green", 1)))
stat("Answers / s", "All answers, every status.", [(rate("responses_total"), "")], "reqps", 4, y)
stat("Server p99", "Read -> answer queued, p99 over the range's rate interval.", [(q("total_seconds", 0.99), "")], "s", 8, y,
     thresholds=steps(("green", None), ("orange", 5e-5), ("red", 1e-4)))
stat("Error ratio", "Non-ok answers / all answers.", [(f'{rate("errors_total")} / {rate("responses_total")}', "")],
     "percentunit", 12, y, thresholds=steps(("green", None), ("red", 0.01)))
stat("Model version", "The serving model's manifest version (changes on a reload).",
     [(f'max(tickinfer_model_version{{{SEL}}})', "")], "none", 16, y)
stat("Uptime", "Since the server started.", [(f'time() - max(tickinfer_start_time_seconds{{{SEL}}})', "")], "s", 20, y)
y += 4
row("Latency (server side: a client's round trip adds its transport, ~4 µs socket, ~0.4 µs shared memory)", y); y += 1
ts("Server time: read -> answer queued",
   "tickinfer_total_seconds: from the request's read (socket or ring) to its answer queued for the client. "
   "p50 / p99 / p99.9 from the histogram buckets.", lat("total_seconds"), "s", 0, y)
ts("Queue: read -> model run starts",
   "tickinfer_queue_seconds: time waiting for the model (batching, the worker ring in pipeline mode).",
   lat("queue_seconds"), "s", 8, y)
ts("Inference: one model run", "tickinfer_inference_seconds: one model run, per batch (not per request).",
   lat("inference_seconds"), "s", 16, y)
y += 8
row("Traffic", y); y += 1
ts("Answers per second by status", "tickinfer_responses_total by wire status (ok, badprice, overloaded, ...); "
   "keep-warm runs per second while idle (--keep-warm-us; 0 when off or busy).",
   [(f'sum by (status) (rate(tickinfer_responses_total{{{SEL}}}[$__rate_interval]))', "{{status}}"),
    (rate("keep_warm_runs_total"), "keep-warm model runs"),
    (rate("keep_warm_socket_trips_total"), "keep-warm socket round trips")], "reqps", 0, y)
ts("Batch size", "Requests per model run: p50 / p99 from tickinfer_batch_size buckets, and the mean.",
   [(q("batch_size", 0.5).replace("tickinfer_batch_size_bucket", "tickinfer_batch_size_bucket"), "p50"),
    (q("batch_size", 0.99), "p99"),
    (f'{rate("batch_size_sum")} / {rate("batch_size_count")}', "mean")], "none", 8, y)
ts("Connections", "Open client connections, of them shared-memory sessions, and the --max-connections limit; "
   "requests waiting in the worker ring (pipeline mode).",
   [(f'sum(tickinfer_connections{{{SEL}}})', "connections"), (f'sum(tickinfer_shm_sessions{{{SEL}}})', "shm sessions"),
    (f'sum(tickinfer_max_connections{{{SEL}}})', "limit"), (f'sum(tickinfer_queue_depth{{{SEL}}})', "queue depth")],
   "none", 16, y)
y += 8
row("Faults and changes", y); y += 1
ts("Cut-offs and refusals",
   "Per interval: slow readers disconnected (unsent answers past --write-buffer-limit), hellos refused (full, "
   "permissions), shared-memory sessions cut for breaking the ring protocol, NaN/inf model outputs.",
   [(increase("slow_reader_disconnects_total"), "slow-reader cuts"),
    (increase("connections_refused_total"), "refused"),
    (increase("shm_faults_total"), "shm faults"),
    (increase("nonfinite_outputs_total"), "non-finite outputs")], "none", 0, y)
ts("Reloads and model version",
   "Reloads per interval by result (a refused reload leaves the old model serving), and the serving model's version.",
   [(f'sum by (result) (increase(tickinfer_reloads_total{{{SEL}}}[$__rate_interval]))', "reloads {{result}}"),
    (f'max(tickinfer_model_version{{{SEL}}})', "model version")], "none", 8, y)
table("Serving model", "tickinfer_model_info: name, execution provider and backend of the serving model, per instance.",
      f'tickinfer_model_info{{{SEL}}}', 16, y, 8, 8)
y += 8
row("Native backend: the live verifier (docs/models-and-backends.md, \"Backends\")", y); y += 1
ts("Native answers re-run on ONNX Runtime",
   "Per interval: native answers the live verifier re-ran on ONNX Runtime (1 in verify_every), those ONNX Runtime "
   "answered differently (alert TickinferBackendDisagreement), those within tolerance but across a rounding edge, "
   "and samples dropped because the verifier was behind.",
   [(increase("backend_verified_total"), "verified"),
    (increase("backend_disagreements_total"), "disagreements"),
    (increase("backend_boundary_total"), "at a rounding edge"),
    (increase("backend_verify_dropped_total"), "dropped")], "none", 0, y)
stat("Disagreements", "Native answers ONNX Runtime gave differently, over the dashboard's range.",
     [(f'sum(increase(tickinfer_backend_disagreements_total{{{SEL}}}[$__range])) or vector(0)', "")], "none", 8, y,
     thresholds=steps(("green", None), ("red", 1)))
stat("Fallbacks to ONNX Runtime", "Models switched from native to ONNX Runtime after a disagreement, over the range.",
     [(f'sum(increase(tickinfer_backend_fallbacks_total{{{SEL}}}[$__range])) or vector(0)', "")], "none", 12, y,
     thresholds=steps(("green", None), ("orange", 1)))
stat("Verifying 1 answer in", "verify_every of the serving model (0: not verified: it runs on ONNX Runtime).",
     [(f'max(tickinfer_backend_verify_every{{{SEL}}})', "")], "none", 16, y)
y += 8
row("Signal quality (answers scored against the realised move at the model's label horizon; docs/signal-quality.md)", y)
y += 1
QW = "10m"  # the window of the quality panels (the alert's)


def outcomes(labels=""):
    return f'tickinfer_signal_outcomes_total{{{SEL}{labels}}}'


def per_class(by):
    """Scored answers in the window by predicted or realised direction, as a `class` label."""
    return (f'sum by (model, class) (label_replace(increase({outcomes()}[{QW}]), "class", "$1", "{by}", "(.*)"))')


def hits(c):
    """Scored answers in the window that called `c` and saw it."""
    return f'increase({outcomes(", predicted=" + chr(34) + c + chr(34) + ", realised=" + chr(34) + c + chr(34))}[{QW}])'


TP = " or ".join(hits(c) for c in ("sell", "flat", "buy"))
F1_BY_CLASS = (f'2 * sum by (model, class) (label_replace({TP}, "class", "$1", "predicted", "(.*)")) '
               f'/ (({per_class("predicted")} + {per_class("realised")}) > 0)')
REALISED = per_class("realised")
N = f'sum by (model) (increase({outcomes()}[{QW}]))'
ts("Macro-F1, live vs reference",
   f"Macro-F1 of the answers scored in the last {QW} (per class 2·tp / (predicted + realised), averaged over the classes "
   "present); the model's test-set figure from its manifest ([label] reference_macro_f1); always calling the window's "
   "most frequent realised direction. TickinferSignalBelowReference fires after 30 m below the reference.",
   [(f'avg by (model) ({F1_BY_CLASS})', "{{model}} live"),
    (f'max by (model) (tickinfer_signal_reference_macro_f1{{{SEL}}})', "{{model}} reference"),
    # Always calling the majority m: F1_m = 2·r_m / (n + r_m) = 2x / (1 + x), x = r_m / n (the largest x
    # gives the largest F1), the other classes present 0.
    (f'max by (model) (2 * ({REALISED} / ignoring (class) group_left {N}) / (1 + {REALISED} / ignoring (class) '
     f'group_left {N})) / count by (model) ({REALISED} > 0)', "{{model}} always-majority")], "none", 0, y)
NOT_FLAT = ', predicted!="flat"'
HITS = " + ".join(f"sum by (model) ({hits(c)})" for c in ("sell", "buy"))
ts("Hit rate and IC",
   f"Hit rate: of the non-flat calls scored in the last {QW}, the share whose direction came true. IC: Pearson "
   "correlation of direction x confidence with the realised return (bps), from the deltas of tickinfer_signal_ic_state "
   f"over {QW}.",
   [(f'({HITS}) / sum by (model) (increase({outcomes(NOT_FLAT)}[{QW}]))', "{{model}} hit rate"),
    (f'(sum by (model) (delta(tickinfer_signal_ic_state{{{SEL}, sum="xy"}}[{QW}])) - '
     f'sum by (model) (delta(tickinfer_signal_ic_state{{{SEL}, sum="x"}}[{QW}])) * '
     f'sum by (model) (delta(tickinfer_signal_ic_state{{{SEL}, sum="y"}}[{QW}])) / '
     f'sum by (model) (delta(tickinfer_signal_ic_state{{{SEL}, sum="n"}}[{QW}]))) / sqrt('
     f'(sum by (model) (delta(tickinfer_signal_ic_state{{{SEL}, sum="xx"}}[{QW}])) - '
     f'sum by (model) (delta(tickinfer_signal_ic_state{{{SEL}, sum="x"}}[{QW}])) ^ 2 / '
     f'sum by (model) (delta(tickinfer_signal_ic_state{{{SEL}, sum="n"}}[{QW}]))) * '
     f'(sum by (model) (delta(tickinfer_signal_ic_state{{{SEL}, sum="yy"}}[{QW}])) - '
     f'sum by (model) (delta(tickinfer_signal_ic_state{{{SEL}, sum="y"}}[{QW}])) ^ 2 / '
     f'sum by (model) (delta(tickinfer_signal_ic_state{{{SEL}, sum="n"}}[{QW}]))))', "{{model}} IC"),
    (f'max by (model) (tickinfer_signal_ic{{{SEL}}})', "{{model}} IC since load")], "none", 8, y)
ts("Coverage and unscored",
   f"Coverage: answers scored / answers with status ok in the last {QW} (falls when symbols are not seen again within "
   "the horizon; TickinferSignalCoverageLow). Unscored answers per second by reason: no_label_rule (the manifest has "
   "no [label]), not_seen, no_slot (--max-symbols), pending_full.",
   [(f'sum by (model) (increase(tickinfer_signal_scored_total{{{SEL}}}[{QW}])) / '
     f'sum by (model) (increase(tickinfer_signal_answers_total{{{SEL}}}[{QW}]))', "{{model}} coverage"),
    (f'sum by (model, reason) (rate(tickinfer_signal_unscored_total{{{SEL}}}[$__rate_interval]))',
     "{{model}} unscored {{reason}} /s")], "none", 16, y)
y += 8
table("Predicted x realised (the dashboard's range)",
      "tickinfer_signal_outcomes_total increased over the dashboard's time range, by predicted and realised direction.",
      f'sum by (model, predicted, realised) (increase({outcomes()}[$__range]))', 0, y, 8, 8)
ts("Target error (regression models)",
   "Mean absolute error of the target's return against the realised return, bps per scored answer, beside the "
   "no-change baseline (target = mid). A classifier's target is the mid: the two coincide.",
   [(f'sum by (model, of) (rate(tickinfer_signal_target_abs_error_bps_total{{{SEL}}}[$__rate_interval])) / ignoring (of) '
     f'group_left sum by (model) (rate(tickinfer_signal_scored_total{{{SEL}}}[$__rate_interval]))', "{{model}} {{of}}")],
   "none", 8, y)
ts("Pending answers", "Answers waiting for their symbol's mid at the model's horizon (bounded: horizon_events per symbol).",
   [(f'sum by (model) (tickinfer_signal_pending{{{SEL}}})', "{{model}}")], "none", 16, y)
y += 8
row("Shadow candidates beside the primary (docs/shadow-candidates.md)", y); y += 1
ts("Agreement with the primary",
   "Share of requests both answered ok on which a shadow gave the primary's direction, per interval, by shadow.",
   [(f'sum by (model) (increase(tickinfer_shadow_agreement_total{{{SEL}, primary="-1", shadow="-1"}}[$__rate_interval]) '
     f'or ignoring (primary, shadow) increase(tickinfer_shadow_agreement_total{{{SEL}, primary="0", shadow="0"}}[$__rate_interval]) '
     f'or ignoring (primary, shadow) increase(tickinfer_shadow_agreement_total{{{SEL}, primary="1", shadow="1"}}[$__rate_interval])) '
     f'/ sum by (model) (increase(tickinfer_shadow_agreement_total{{{SEL}}}[$__rate_interval]))', "{{model}}")],
   "percentunit", 0, y)
ts("Model run time, primary and shadows",
   "p50 and p99 of each model's run (per run), by model and role: a candidate's cost before it serves.",
   [(f'max by (model, role) (tickinfer_model_run_seconds{{{SEL}, quantile="0.5"}})', "{{model}} ({{role}}) p50"),
    (f'max by (model, role) (tickinfer_model_run_seconds{{{SEL}, quantile="0.99"}})', "{{model}} ({{role}}) p99")],
   "s", 8, y)
ts("Shadow drops and staleness",
   "Requests dropped per interval because a shadow was behind (alert TickinferShadowDropping), requests queued for "
   "it, and whether it is stale (re-warming after a hole; promote refuses it without --force).",
   [(f'sum by (model) (increase(tickinfer_shadow_dropped_total{{{SEL}}}[$__rate_interval]))', "{{model}} dropped"),
    (f'max by (model) (tickinfer_shadow_queued{{{SEL}}})', "{{model}} queued"),
    (f'max by (model) (tickinfer_shadow_stale{{{SEL}}})', "{{model}} stale")], "none", 16, y)
y += 8
row("Host readiness (tickinfer doctor, as the server's process sees it)", y); y += 1
stat("Doctor warnings", "Findings of level warn: each costs latency; `tickinfer doctor` on the host prints the fix.",
     [(f'count(tickinfer_doctor_finding{{{SEL}, level="warn"}}) or vector(0)', "")], "none", 0, y, w=4, h=8,
     thresholds=steps(("green", None), ("orange", 1)))
table("Doctor findings", "Every finding by area and level (ok, info, warn), re-checked at most once a minute.",
      f'tickinfer_doctor_finding{{{SEL}}}', 4, y, 10, 8)
table("Build", "tickinfer_build_info: crate version, wire and shared-memory protocol versions, GPU features.",
      f'tickinfer_build_info{{{SEL}}}', 14, y, 10, 8)

variable = lambda name, query: {  # noqa: E731
    "name": name, "label": name, "type": "query", "datasource": DS, "query": {"query": query, "refId": name},
    "definition": query, "refresh": 2, "includeAll": True, "multi": True, "current": {}, "hide": 0}
dashboard = {
    "title": "tickinfer", "uid": "tickinfer", "tags": ["tickinfer", "trading", "latency"], "timezone": "utc",
    "editable": True, "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
    "description": "tickinfer inference servers: server-side latency p50/p99/p99.9, answers by status, batching, "
                   "connections, cut-offs, reloads, host tuning. Metrics from `tickinfer serve --metrics`; alerts in "
                   "deploy/prometheus/rules.yml.",
    "templating": {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {},
         "hide": 0},
        variable("job", "label_values(tickinfer_build_info, job)"),
        variable("instance", 'label_values(tickinfer_build_info{job=~"$job"}, instance)')]},
    "annotations": {"list": [{"name": "Reloads", "datasource": DS, "enable": True, "iconColor": "blue",
                              "expr": f'changes(tickinfer_model_version{{{SEL}}}[1m]) > 0',
                              "titleFormat": "model reloaded"}]},
    "panels": panels,
}
out = pathlib.Path(__file__).resolve().parent.parent / "deploy/grafana/tickinfer.json"
out.write_text(json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n")
print(f"wrote {out} ({len(panels)} panels)")
