//! The SPSC hand-off: push+pop on one thread, and one-way latency across two
//! pinned threads (HdrHistogram for the tail, criterion for the mean).
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tickinfer::clock::now_ns;
use tickinfer::ring::ring;
use tickinfer::server::stage::Job;
use tickinfer::wire::{MlRequest, Status};

fn job(i: u64) -> Job {
    Job {
        slot: 1,
        generation: 1,
        recv_ns: i,
        status: Status::Ok,
        req: MlRequest { request_id: i, ..MlRequest::new() },
    }
}

fn bench(c: &mut Criterion) {
    let (mut tx, mut rx) = ring::<Job>(1024);
    tx.push(job(7)).unwrap();
    assert_eq!({ rx.pop().unwrap().req.request_id }, 7, "works before it is timed");
    c.bench_function("ring/push_pop_same_thread", |b| {
        b.iter(|| {
            tx.push(black_box(job(1))).unwrap();
            black_box(rx.pop().unwrap());
        })
    });

    // One-way: the consumer stamps arrival against the producer's send stamp.
    let cores = tickinfer::server::usable_cores();
    let (mut tx, mut rx) = ring::<Job>(1024);
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let consumer_core = cores.first().copied();
    let consumer = std::thread::spawn(move || {
        if let Some(id) = consumer_core {
            core_affinity::set_for_current(core_affinity::CoreId { id });
        }
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).unwrap();
        while !st.load(Ordering::Relaxed) {
            if let Ok(j) = rx.pop() {
                h.saturating_record(now_ns().saturating_sub(j.recv_ns));
            }
        }
        h
    });
    c.bench_function("ring/one_way_cross_thread_push", |b| {
        b.iter(|| {
            while tx.push(job(now_ns())).is_err() {
                std::hint::spin_loop();
            }
        })
    });
    // Let the consumer take everything pushed before stopping it.
    while tx.slots() < tx.buffer().capacity() {
        std::hint::spin_loop();
    }
    stop.store(true, Ordering::Relaxed);
    let h = consumer.join().unwrap();
    assert!(!h.is_empty());
    eprintln!(
        "ring one-way latency (HdrHistogram, {} samples, consumer core {consumer_core:?}): p50 {} ns p99 {} ns p99.9 {} ns",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
