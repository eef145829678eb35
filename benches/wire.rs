//! Wire encode/decode cost: the decoder's per-frame work and response encoding.
//! Asserts the thing works before timing it.
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tickinfer::wire::{self, Decoder, Frame, Limits, MlHello, MlRequest, MlResponse, Status};

fn stream(n: usize) -> Vec<u8> {
    let mut s = bytemuck::bytes_of(&MlHello::current()).to_vec();
    for id in 0..n as u64 {
        let r = MlRequest {
            bid_price: 1_000_000,
            ask_price: 1_000_100,
            bid_size: 300,
            ask_size: 100,
            book_imbalance: 500_000,
            request_id: id,
            n_features: 4,
            ..MlRequest::new()
        };
        s.extend_from_slice(bytemuck::bytes_of(&r));
    }
    s
}

/// Decode + validate every request in `buf`; returns the count (checked below).
fn decode_all(buf: &[u8], limits: &Limits) -> usize {
    let mut d = Decoder::new();
    let mut pos = 0;
    let mut ok = 0;
    while let Some((f, n)) = d.next(&buf[pos..]).expect("valid stream") {
        if let Frame::Request(r) = f {
            ok += (wire::validate(r, limits) == Status::Ok) as usize;
        }
        pos += n;
    }
    ok
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let buf = stream(64);
    assert_eq!(decode_all(&buf, &limits), 64, "every request decodes and validates");

    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(64));
    g.bench_function("decode_validate_64", |b| b.iter(|| decode_all(black_box(&buf), &limits)));
    g.throughput(Throughput::Elements(1));
    let mut out = vec![0u8; wire::RESPONSE_SIZE];
    g.bench_function("encode_response", |b| {
        b.iter(|| {
            let resp = MlResponse::error(black_box(7), 3, Status::Ok, 1);
            out.copy_from_slice(bytemuck::bytes_of(&resp));
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
