//! `tickinfer features` throughput, events per second on one core: the 5-level AMZN LOBSTER
//! day when `../shared/data` is here (155 935 events), else the bundled 5-level synthetic
//! sample; the default stateless + stateful features (`models/lobster_stateful.toml`).
//!
//! - `file`: the command's path for one input — the zip read and inflated (its own thread),
//!   parsed, rows, labels, Parquet into memory;
//! - `read`: the reader alone (what `file` spends before the rows);
//! - `rows`: the events already in memory → rows, labels, Parquet (the part that is ours
//!   alone: no reader, no inflating).
//!
//! Before timing, the output is checked: every feature column read back from the Parquet is
//! bit-equal to the rows the engine's own filling gives (`bench::ready_rows`), and the labels
//! are there. `cargo test --benches` runs the check and each bench once.
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tickinfer::dataset::{self, Options, Plan, Rows};
use tickinfer::manifest::Manifest;
use tickinfer::replay::source::{self, Format, SymbolTable};

#[path = "../tests/util/parquet.rs"]
mod parquet_file;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn input() -> (PathBuf, &'static str) {
    let real = root().join("../shared/data/lobster/LOBSTER_SampleFile_AMZN_2012-06-21_5.zip");
    if real.exists() {
        (real, "AMZN 5-level day")
    } else {
        (root().join("data/sample/SYNTH_2026-01-05_sample_5.zip"), "bundled 5-level sample")
    }
}

fn options(input: &Path) -> Options {
    let model = root().join("models/lobster_stateful.toml");
    let label = Manifest::load(&model).unwrap().label.expect("a [label]").rule;
    Options {
        model,
        inputs: vec![input.to_path_buf()],
        format: Format::Lobster,
        out: std::env::temp_dir(),
        jobs: 1,
        symbols: vec![],
        columns: vec![],
        time_unit: None,
        label,
        skip: 0,
        limit: None,
        row_group_rows: dataset::ROW_GROUP_ROWS,
        lookahead_rows: dataset::LOOKAHEAD_ROWS,
        max_symbols: 1024,
        progress: false,
    }
}

/// The output is right: feature columns bit-equal to the engine's rows, labels present.
fn check(plan: &Plan<'_>, input: &Path) -> u64 {
    let bars = indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());
    let (report, bytes) = dataset::rows_into(plan, input, Vec::new(), &bars).unwrap();
    let path = std::env::temp_dir().join(format!("tickinfer-bench-features-{}.parquet", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let file = parquet_file::File::read(&path);
    let _ = std::fs::remove_file(&path);
    let m = &plan.manifest;
    let stream = source::load(input, Format::Lobster, &mut SymbolTable::new(&[]).unwrap()).unwrap();
    let reqs: Vec<_> = stream.events.iter().map(|e| e.req).collect();
    let rows = tickinfer::bench::ready_rows(m, &reqs);
    assert_eq!(file.rows(), reqs.len(), "one row per event");
    for (k, name) in m.feature_names.iter().enumerate() {
        let want: Vec<u32> = rows.iter().skip(k).step_by(m.features.len()).map(|v| v.to_bits()).collect();
        assert!(
            file.f32_bits(name) == want,
            "feature {name}: the Parquet column differs from the engine's rows"
        );
    }
    let labelled = file.i32s("label").iter().filter(|l| l.is_some()).count();
    assert_eq!(labelled as u64, report.counts.labelled);
    assert_eq!(labelled, reqs.len() - 10, "all but the last 10 events (horizon 10) labelled");
    report.events
}

fn bench(c: &mut Criterion) {
    let (input, what) = input();
    let opts = options(&input);
    let plan = Plan { manifest: Manifest::load(&opts.model).unwrap(), label: opts.label, opts: &opts };
    let events = check(&plan, &input);
    let bars = indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());
    let mut g = c.benchmark_group(format!("features ({what}, {events} events, lobster_stateful)"));
    g.sample_size(10).throughput(Throughput::Elements(events));
    g.bench_function("file", |b| {
        b.iter(|| dataset::rows_into(&plan, &input, Vec::with_capacity(16 << 20), &bars).unwrap().0.events)
    });
    g.bench_function("read", |b| {
        b.iter(|| {
            let mut src = source::open(&input, Format::Lobster, &Default::default()).unwrap();
            let mut symbols = SymbolTable::new(&[]).unwrap();
            let mut n = 0u64;
            let mut e = source::Event { ts_ns: 0, req: tickinfer::wire::MlRequest::new() };
            while src.next_into(&mut symbols, &mut e).unwrap() {
                n += 1;
            }
            n
        })
    });
    let mut symbols = SymbolTable::new(&[]).unwrap();
    let stream = source::load(&input, Format::Lobster, &mut symbols).unwrap();
    g.bench_function("rows", |b| {
        b.iter(|| {
            let mut rows = Rows::new(&plan, Vec::with_capacity(16 << 20), &input).unwrap();
            for e in &stream.events {
                rows.event(&mut e.clone(), stream.price_scale, stream.depth_levels, &symbols).unwrap();
            }
            rows.finish().unwrap().0.events
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
