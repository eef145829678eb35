//! Cost of recording one request's stats on the hot path (three HdrHistogram
//! records and a status count), and of folding a thread's stats into the shared copy.
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tickinfer::stats::Stats;

fn bench(c: &mut Criterion) {
    let mut s = Stats::default();
    s.total.saturating_record(1234);
    assert_eq!(s.total.len(), 1, "works before it is timed");
    let mut v = 1000u64;
    c.bench_function("stats/record_request", |b| {
        b.iter(|| {
            v = v.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) % 50_000 + 500;
            s.queue.saturating_record(black_box(v / 8));
            s.inference.saturating_record(black_box(v / 2));
            s.total.saturating_record(black_box(v));
            s.status[0] += 1;
        })
    });
    let mut shared = Stats::default();
    c.bench_function("stats/fold_into_shared", |b| {
        b.iter(|| {
            shared.merge(black_box(&s));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
