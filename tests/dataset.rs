//! `tickinfer features` (`src/dataset`): the Parquet it writes read back with the parquet
//! crate's reader and held to independent computations — the Python twin's bits, the live
//! signal-quality module's labels — plus its memory bound, its parallel files, its refusals
//! of bad input, and the Dask recipe (`scripts/features_dask.py`) on a local cluster.
mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tickinfer::manifest::Manifest;
use tickinfer::replay::source::{self, Format, SymbolTable};
use util::parquet::File;
use util::repo_root;

fn tickinfer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tickinfer"))
}

/// `tickinfer features ARGS`; its output (not checked).
fn features(args: &[&str]) -> Output {
    tickinfer().arg("features").args(args).output().expect("run tickinfer")
}

/// `tickinfer features ARGS --json`, which must succeed; the JSON summary.
fn features_ok(args: &[&str]) -> serde_json::Value {
    let out = tickinfer().arg("features").args(args).arg("--json").output().expect("run tickinfer");
    assert!(
        out.status.success(),
        "tickinfer features {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the JSON summary")
}

fn sample(name: &str) -> String {
    repo_root().join("data/sample").join(name).display().to_string()
}

fn tmp(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("tickinfer-features-{what}-")).tempdir().unwrap()
}

/// The files under `dir` (names, sorted), hidden ones included.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    };
    v.sort();
    v
}

/// A manifest for `features` without mean/std (raw values), label at 10 events, `size_scale`.
fn raw_manifest(dir: &Path, features: &[String], size_scale: i64) -> PathBuf {
    let list: Vec<String> = features.iter().map(|f| format!("\"{f}\"")).collect();
    let text = format!(
        "[model]\nname = \"raw\"\nversion = 1\nonnx = \"raw.onnx\"\nprice_scale = 10000\nsize_scale = {size_scale}\n\n\
         [input]\nname = \"x\"\nfeatures = [{}]\n\n[output]\nkind = \"classes\"\nname = \"p\"\n\
         classes = [\"sell\", \"flat\", \"buy\"]\n\n[label]\nhorizon_events = 10\nflat_bps = 0.0\n",
        list.join(", ")
    );
    let path = dir.join("raw.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The label rule's realised direction 10 events later, from (bid, ask) pairs of one
/// symbol, computed here from the twin's requests: the sign of the mid's change.
fn labels_10(quotes: &[(i64, i64)]) -> Vec<Option<i32>> {
    (0..quotes.len())
        .map(|i| {
            quotes.get(i + 10).map(|&(b, a)| {
                let (now, then) = (b as i128 + a as i128, quotes[i].0 as i128 + quotes[i].1 as i128);
                (now - then).signum() as i32
            })
        })
        .collect()
}

/// Every column the twin gives (features' bits, warming, timestamps, mids, labels) against
/// the Parquet file's.
fn assert_twin_equal(file: &File, names: &[String], twin: &serde_json::Value, what: &str) {
    let reqs = twin["requests"].as_array().unwrap();
    let rows = twin["rows"].as_array().unwrap();
    assert_eq!(file.rows(), rows.len(), "{what}: one row per event");
    for (k, name) in names.iter().enumerate() {
        let want: Vec<u32> = rows.iter().map(|r| r[k].as_u64().unwrap() as u32).collect();
        let got = file.f32_bits(name);
        if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
            panic!(
                "{what}: feature {name}, event {i}: {} vs the twin's {}",
                f32::from_bits(got[i]),
                f32::from_bits(want[i])
            );
        }
    }
    let warming: Vec<bool> =
        twin["warming"].as_array().unwrap().iter().map(|w| w.as_bool().unwrap()).collect();
    assert!(file.bools("warming") == warming, "{what}: warming flags differ");
    let field = |r: &serde_json::Value, i: usize| r[i].as_i64().unwrap();
    let ts: Vec<i64> = reqs.iter().map(|r| field(r, 0)).collect();
    assert!(file.i64s("timestamp_ns") == ts, "{what}: timestamps differ");
    // mid as the features compute it: each price × 1/price_scale, summed, halved.
    let inv = 1.0 / 10_000.0;
    let mids: Vec<Option<f64>> =
        reqs.iter().map(|r| Some((field(r, 1) as f64 * inv + field(r, 2) as f64 * inv) * 0.5)).collect();
    assert!(file.f64s("mid_price") == mids, "{what}: mids differ");
    let quotes: Vec<(i64, i64)> = reqs.iter().map(|r| (field(r, 1), field(r, 2))).collect();
    assert!(
        file.i32s("label") == labels_10(&quotes),
        "{what}: labels differ from the twin's quotes 10 events on"
    );
}

/// The bundled samples (always here, no Python needed): the command's Parquet columns
/// against the twin's bits in the parity fixtures (`scripts/make_fixtures.py`: 3000 events
/// of each sample through `tickfeatures.stateful_rows`, with the fixture models' mean/std).
#[test]
fn features_match_the_twin_bit_for_bit_on_the_bundled_samples() {
    for (fixture, model, data) in [
        ("stateful_features.json", "stateful_linear.toml", "SYNTH_2026-01-05_sample.zip"),
        ("depth_features.json", "depth_linear.toml", "SYNTH_2026-01-05_sample_5.zip"),
    ] {
        let dir = tmp("sample");
        let model = repo_root().join("tests/fixtures/models").join(model);
        let text = std::fs::read_to_string(repo_root().join("tests/fixtures/parity").join(fixture)).unwrap();
        let twin: serde_json::Value = serde_json::from_str(&text).unwrap();
        let out = dir.path().display().to_string();
        let summary = features_ok(&[
            "--model",
            &model.display().to_string(),
            "--input",
            &sample(data),
            "--format",
            "lobster",
            "--out",
            &out,
            "--limit",
            "3000",
        ]);
        assert_eq!(summary["files"][0]["rows"], 3000);
        let file = File::read(&dir.path().join(data.replace(".zip", ".parquet")));
        let names = Manifest::load(&model).unwrap().feature_names;
        assert_twin_equal(&file, &names, &twin, fixture);
    }
}

/// The real LOBSTER days in `../shared` (57 515 events at level 1; 155 935 at level 5, its
/// sizes at size_scale 1000): every stateful and depth feature of the command's Parquet
/// against the twin run live (`python3 scripts/tickfeatures.py`, standard library only),
/// bit for bit. Skips, saying so, without the data or `python3`.
#[test]
fn features_match_the_twin_bit_for_bit_over_the_real_lobster_days_when_present() {
    // The level-1 day: the stateful fixture's features; the level-5 day: the depth fixture's too.
    let names_of = |fixtures: &[&str]| {
        let mut names: Vec<String> = Vec::new();
        for fixture in fixtures {
            let path = repo_root().join(format!("tests/fixtures/models/{fixture}.toml"));
            for name in Manifest::load(&path).unwrap().feature_names {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    };
    for (file, size_scale, names) in [
        ("LOBSTER_SampleFile_AMZN_2012-06-21_1.zip", 1, names_of(&["stateful_linear"])),
        ("LOBSTER_SampleFile_AMZN_2012-06-21_5.zip", 1000, names_of(&["stateful_linear", "depth_linear"])),
    ] {
        let what = format!("features over the real LOBSTER file {file} at size_scale {size_scale}");
        let data = repo_root().join("../shared/data/lobster").join(file);
        if !data.exists() {
            util::skip(&what, "../shared/data/lobster is not present");
            return;
        }
        let twin = match Command::new("python3")
            .arg(repo_root().join("scripts/tickfeatures.py"))
            .arg(&data)
            .args(["10000", "1000000000", "--size-scale", &size_scale.to_string()])
            .args(&names)
            .output()
        {
            Ok(o) if o.status.success() => serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
            Ok(o) => panic!("the twin failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => {
                util::skip(&what, &format!("cannot run python3: {e}"));
                return;
            }
        };
        let dir = tmp("real");
        let model = raw_manifest(dir.path(), &names, size_scale);
        let out = dir.path().join("out");
        features_ok(&[
            "--model",
            &model.display().to_string(),
            "--input",
            &data.display().to_string(),
            "--format",
            "lobster",
            "--out",
            &out.display().to_string(),
        ]);
        let file = File::read(&out.join(file.replace(".zip", ".parquet")));
        assert_twin_equal(&file, &names, &twin, &what);
    }
}

/// The label columns are the rule signal quality scores with: the command's labels fed back
/// as each event's answer to the live quality module (`quality::Quality`, its own pending
/// rings and resolution, not replay's look-ahead) over the same stream, every scored answer
/// comes out right, as many are scored as the file labels, the unscored and pending match
/// the summary, and the realised returns sum to the same fixed-point total. For a horizon in
/// events (the manifest's) and one in events within ms.
#[test]
fn labels_are_what_the_quality_module_scores_over_the_same_stream() {
    use tickinfer::quality::{Quality, Tally, Unscored, RET_SCALE};
    use tickinfer::wire::{MlResponse, Status};
    let data = sample("SYNTH_2026-01-05_sample.zip");
    let dir = tmp("labels");
    // Ten events later is about 19 ms on median in the sample: within 25 ms, some are not seen.
    for (k, ms) in [(10u32, None), (10, Some(25.0f64))] {
        let base = std::fs::read_to_string(repo_root().join("models/lobster_stateful.toml")).unwrap();
        let label = match ms {
            None => format!("horizon_events = {k}\n"),
            Some(ms) => format!("horizon_events = {k}\nhorizon_ms = {ms}\n"),
        };
        let text =
            base.split("[label]").next().unwrap().to_string() + "[label]\n" + &label + "flat_bps = 0.0\n";
        let model = dir.path().join(format!("m{}.toml", ms.is_some()));
        std::fs::write(&model, text).unwrap();
        let out = dir.path().join(format!("out{}", ms.is_some()));
        let summary = features_ok(&[
            "--model",
            &model.display().to_string(),
            "--input",
            &data,
            "--format",
            "lobster",
            "--out",
            &out.display().to_string(),
        ]);
        let report = &summary["files"][0];
        let file = File::read(&out.join("SYNTH_2026-01-05_sample.parquet"));
        let labels = file.i32s("label");
        let returns = file.f64s("label_return_bps");
        let stream =
            source::load(data.as_ref(), Format::Lobster, &mut SymbolTable::new(&[]).unwrap()).unwrap();
        assert_eq!(stream.events.len(), file.rows(), "every sample event has a row");
        let manifest = Manifest::load(&model).unwrap();
        let mut quality = Quality::new(&manifest, 16);
        let mut tally = Tally::default();
        for (e, label) in stream.events.iter().zip(&labels) {
            let mid2 = e.req.bid_price as i128 + e.req.ask_price as i128;
            let mut resp = MlResponse::error(0, e.req.symbol_id, Status::Ok, 0);
            resp.direction = label.unwrap_or(0) as i8;
            resp.confidence = 100;
            resp.target_price = (mid2 / 2) as i64;
            quality.observe(&e.req, &resp, &mut tally);
        }
        let c = tally.total.outcomes.0;
        let what = format!("horizon {k} events, {ms:?} ms");
        let off_diagonal: u64 = (0..3)
            .flat_map(|t| (0..3).map(move |p| (t, p)))
            .filter(|(t, p)| t != p)
            .map(|(t, p)| c[t][p])
            .sum();
        assert_eq!(off_diagonal, 0, "{what}: an answer of the file's label was scored wrong: {c:?}");
        let labelled = labels.iter().filter(|l| l.is_some()).count() as u64;
        assert_eq!(tally.total.scored(), labelled, "{what}: scored answers = labelled rows");
        assert_eq!(report["labelled"], labelled, "{what}");
        assert_eq!(
            tally.total.unscored[Unscored::NotSeen as usize],
            report["not_seen"].as_u64().unwrap(),
            "{what}"
        );
        assert_eq!(tally.pending, report["pending"].as_u64().unwrap(), "{what}: pending at the end");
        let sum: i128 = returns.iter().flatten().map(|r| (r * RET_SCALE).round() as i128).sum();
        assert_eq!(tally.total.moments.sy, sum, "{what}: realised returns");
        let not_seen = report["not_seen"].as_u64().unwrap();
        match ms {
            None => assert!(
                labelled > 19_000 && not_seen == 0,
                "{what}: {labelled} labelled, {not_seen} not seen"
            ),
            Some(_) => assert!(
                labelled > 5_000 && not_seen > 1_000,
                "{what}: {labelled} labelled, {not_seen} not seen"
            ),
        }
    }
}

/// Streaming: a stream longer than a row group is written as several, each flushed as soon
/// as its rows' labels are known (the buffer never holds more than a group and the labels'
/// horizon), with the same rows as one big group. And the look-ahead's bound holds when a
/// label never comes: a symbol seen once, then 5000 events of another; with a bound of 300
/// rows its row is written unlabelled (`cut`) and at most 100 + 300 rows wait, where without
/// the bound every row would.
#[test]
fn rows_stream_out_in_row_groups_within_the_look_ahead_bound() {
    let dir = tmp("stream");
    let model = repo_root().join("models/lobster_stateful.toml").display().to_string();
    let data = sample("SYNTH_2026-01-05_sample.zip");
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name).display().to_string();
        let mut args = vec!["--model", &model, "--input", &data, "--format", "lobster", "--out", &out];
        args.extend_from_slice(extra);
        let s = features_ok(&args);
        (s["files"][0].clone(), File::read(&dir.path().join(name).join("SYNTH_2026-01-05_sample.parquet")))
    };
    let (small, grouped) = run("small", &["--row-group-rows", "1000"]);
    let (_, whole) = run("whole", &["--row-group-rows", "1000000"]);
    assert_eq!(grouped.row_groups, vec![1000; 20], "20 000 events in groups of 1000");
    assert_eq!(whole.row_groups, vec![20_000]);
    assert_eq!(small["row_groups"], 20);
    let peak = small["peak_buffered_rows"].as_u64().unwrap();
    assert!(peak <= 1000 + 10, "at most a group and the 10-event horizon buffered, was {peak}");
    assert_eq!(grouped.names, whole.names);
    assert!(grouped.columns == whole.columns, "row groups change no value");

    // The bound: symbol A once, then B 5000 times (CSV, 1 ms apart).
    let mut csv = String::from("timestamp_ns,symbol,bid_price,ask_price,bid_size,ask_size\n");
    csv.push_str("1000000,A,10.00,10.02,5,5\n");
    for i in 0..5000u64 {
        csv.push_str(&format!("{},B,{}.00,{}.01,3,4\n", 2_000_000 + i * 1_000_000, 20 + i % 7, 20 + i % 7));
    }
    let input = dir.path().join("quiet.csv");
    std::fs::write(&input, csv).unwrap();
    let input = input.display().to_string();
    let bounded = |lookahead: &str, out: &str| {
        let out = dir.path().join(out).display().to_string();
        features_ok(&[
            "--model",
            &model,
            "--input",
            &input,
            "--format",
            "csv",
            "--out",
            &out,
            "--row-group-rows",
            "100",
            "--lookahead-rows",
            lookahead,
        ])["files"][0]
            .clone()
    };
    let b = bounded("300", "bounded");
    assert!(b["peak_buffered_rows"].as_u64().unwrap() <= 400, "{b}");
    assert_eq!((b["rows"].as_u64(), b["cut"].as_u64()), (Some(5001), Some(1)), "A's row cut: {b}");
    let file = File::read(&dir.path().join("bounded/quiet.parquet"));
    assert_eq!(file.i32s("label")[0], None, "A's row has no label");
    assert_eq!(
        file.i32s("label").iter().filter(|l| l.is_some()).count(),
        5000 - 10,
        "every B row but the last 10"
    );
    let unbounded = bounded("1000000", "unbounded");
    assert_eq!(unbounded["peak_buffered_rows"], 5001, "without the bound, every row waits for A's label");
    assert_eq!(unbounded["cut"], 0);
}

/// `--jobs 2` writes the same files, byte for byte, as `--jobs 1`, and the input order does
/// not matter.
#[test]
fn several_files_in_parallel_are_the_files_written_one_at_a_time() {
    let dir = tmp("jobs");
    let copy = dir.path().join("SYNTH_copy_sample.zip");
    std::fs::copy(sample("SYNTH_2026-01-05_sample.zip"), &copy).unwrap();
    let inputs = [
        sample("SYNTH_2026-01-05_sample.zip"),
        sample("SYNTH_2026-01-05_sample_5.zip"),
        copy.display().to_string(),
    ];
    let model = repo_root().join("models/lobster_stateful.toml").display().to_string();
    let run = |name: &str, jobs: &str, inputs: &[String]| {
        let out = dir.path().join(name);
        let mut args = vec!["--model", &model, "--format", "lobster", "--out"];
        let out_s = out.display().to_string();
        args.push(&out_s);
        args.extend(["--jobs", jobs, "--row-group-rows", "4096", "--input"]);
        args.extend(inputs.iter().map(String::as_str));
        let s = features_ok(&args);
        assert_eq!(s["files"].as_array().unwrap().len(), 3);
        out
    };
    let one = run("one", "1", &inputs);
    let reversed: Vec<String> = inputs.iter().rev().cloned().collect();
    let two = run("two", "2", &reversed);
    let names = listing(&one);
    assert_eq!(
        names,
        ["SYNTH_2026-01-05_sample.parquet", "SYNTH_2026-01-05_sample_5.parquet", "SYNTH_copy_sample.parquet"]
    );
    assert_eq!(listing(&two), names);
    for n in &names {
        assert!(std::fs::read(one.join(n)).unwrap() == std::fs::read(two.join(n)).unwrap(), "{n} differs");
    }
}

/// Bad input: a clear error naming it, exit status 2, and nothing under a final name (nor a
/// temporary file) for a file that failed — even one that failed after row groups were
/// written; a good file beside a bad one is written whole.
#[test]
fn bad_input_exits_2_and_leaves_no_partial_file() {
    let dir = tmp("bad");
    let model = repo_root().join("models/lobster_stateful.toml").display().to_string();
    let check = |out: &Output, what: &str, wanted: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: exit status; stderr {err}");
        assert!(err.contains(wanted), "{what}: stderr should say {wanted:?}: {err}");
    };
    // A missing file: nothing written at all.
    let out_dir = dir.path().join("missing");
    let o = dir.path().join("missing").display().to_string();
    let out = features(&[
        "--model",
        &model,
        "--input",
        &sample("SYNTH_2026-01-05_sample.zip"),
        "/no/such.zip",
        "--format",
        "lobster",
        "--out",
        &o,
    ]);
    check(&out, "missing file", "/no/such.zip: no such file");
    assert!(listing(&out_dir).is_empty());
    // The wrong format.
    let o = dir.path().join("format").display().to_string();
    let out = features(&[
        "--model",
        &model,
        "--input",
        &sample("SYNTH_2026-01-05_sample.zip"),
        "--format",
        "dbn",
        "--out",
        &o,
    ]);
    check(&out, "wrong format", "SYNTH_2026-01-05_sample.zip");
    assert!(listing(&dir.path().join("format")).is_empty(), "{:?}", listing(&dir.path().join("format")));
    // An output directory that cannot be one (a file is there).
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "x").unwrap();
    let out = features(&[
        "--model",
        &model,
        "--input",
        &sample("SYNTH_2026-01-05_sample.zip"),
        "--format",
        "lobster",
        "--out",
        &blocker.display().to_string(),
    ]);
    check(&out, "output not a directory", "--out");
    // A CSV that goes bad at line 3002, after row groups of 1000 were written, beside a good file.
    let mut csv = String::from("timestamp_ns,symbol,bid_price,ask_price,bid_size,ask_size\n");
    for i in 0..3000u64 {
        csv.push_str(&format!("{},X,{}.00,{}.01,3,4\n", 1_000_000 + i * 1_000_000, 20 + i % 5, 20 + i % 5));
    }
    csv.push_str("3001000000,X,oops,20.01,3,4\n");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, &csv).unwrap();
    let good = dir.path().join("good.csv");
    std::fs::write(&good, csv.lines().take(2000).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let out_dir = dir.path().join("midway");
    let o = out_dir.display().to_string();
    let out = features(&[
        "--model",
        &model,
        "--format",
        "csv",
        "--out",
        &o,
        "--row-group-rows",
        "1000",
        "--jobs",
        "2",
        "--input",
        &bad.display().to_string(),
        &good.display().to_string(),
    ]);
    check(&out, "a bad row mid-file", "line 3002");
    assert_eq!(listing(&out_dir), ["good.parquet"], "the bad file left nothing; the good one is whole");
    assert_eq!(File::read(&out_dir.join("good.parquet")).rows(), 1999);
}

/// The Dask recipe: `scripts/features_dask.py` runs `tickinfer features` once per input file
/// as tasks on a `distributed.LocalCluster` of two workers and gathers the files as one
/// dataset (`dask.dataframe.read_parquet`), which must equal the per-file outputs row for
/// row, in input order; the workers' files must be the command's own, byte for byte. Uses
/// `$TICKINFER_PYTHON` or `target/pyenv` (`.ci/run` installs `scripts/requirements-dask.txt`
/// there); skips, saying so, when dask, distributed, pandas or pyarrow cannot be imported.
#[test]
fn dask_runs_one_task_per_file_and_gathers_one_dataset() {
    let what = "the Dask recipe on a local cluster of two workers";
    let python = std::env::var("TICKINFER_PYTHON")
        .unwrap_or_else(|_| repo_root().join("target/pyenv/bin/python").display().to_string());
    match Command::new(&python).args(["-c", "import dask, distributed, pandas, pyarrow"]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            util::skip(
                what,
                &format!(
                    "{python} cannot import dask, distributed, pandas, pyarrow: {}",
                    String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
                ),
            );
            return;
        }
        Err(e) => {
            util::skip(
                what,
                &format!("no {python} ({e}): .ci/run makes it from scripts/requirements-dask.txt"),
            );
            return;
        }
    }
    let dir = tmp("dask");
    let inputs = [sample("SYNTH_2026-01-05_sample.zip"), sample("SYNTH_2026-01-05_sample_5.zip")];
    let model = repo_root().join("models/lobster_stateful.toml").display().to_string();
    let out = dir.path().join("dask");
    let script = format!(
        r#"
import json, sys
sys.path.insert(0, {scripts:?})
import pandas as pd
import features_dask
from distributed import Client, LocalCluster
inputs = {inputs:?}
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
    paths, ddf = features_dask.features(client, {bin:?}, {model:?}, inputs, "lobster", {out:?})
    assert len(paths) == 2 and ddf.npartitions >= 2, (paths, ddf.npartitions)
    gathered = ddf.compute().reset_index(drop=True)
    workers = sorted({{w for w in client.run(lambda: 1)}})
per_file = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
# Dask reads strings as pyarrow strings; pandas as objects: the same values.
per_file["symbol"] = per_file["symbol"].astype(gathered["symbol"].dtype)
assert list(gathered.columns) == list(per_file.columns), (gathered.columns, per_file.columns)
pd.testing.assert_frame_equal(gathered, per_file, check_exact=True)
print(json.dumps({{"rows": len(gathered), "paths": paths, "workers": len(workers)}}))
"#,
        scripts = repo_root().join("scripts").display().to_string(),
        bin = env!("CARGO_BIN_EXE_tickinfer"),
        out = out.display().to_string(),
    );
    let o = Command::new(&python).args(["-c", &script]).output().unwrap();
    assert!(
        o.status.success(),
        "the Dask run failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["rows"], 25_000, "both samples' rows gathered: {v}");
    assert_eq!(v["workers"], 2);
    // The workers ran the command itself: their files are the ones it writes here.
    let direct = dir.path().join("direct");
    let d = direct.display().to_string();
    features_ok(&["--model", &model, "--format", "lobster", "--out", &d, "--input", &inputs[0], &inputs[1]]);
    for name in ["SYNTH_2026-01-05_sample.parquet", "SYNTH_2026-01-05_sample_5.parquet"] {
        assert!(
            std::fs::read(out.join(name)).unwrap() == std::fs::read(direct.join(name)).unwrap(),
            "{name}"
        );
    }
}
