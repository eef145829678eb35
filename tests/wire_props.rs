//! Hostile bytes: any byte sequence fed to the decoder, in any split, yields
//! frames or a typed error — never a panic — and validation of any decoded
//! request returns a status.
use proptest::prelude::*;
use tickinfer::wire::{self, Decoder, Frame, Limits, MlHello, MlRequest, Status, WireError, REQUEST_END};

/// Drive a decoder over `chunks` as a server would; return (requests, error).
fn drive(chunks: &[Vec<u8>]) -> (Vec<MlRequest>, Option<WireError>) {
    let mut d = Decoder::new();
    let mut buf = Vec::new();
    let mut reqs = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            match d.next(&buf[pos..]) {
                Ok(None) => break,
                Ok(Some((Frame::Hello(h, _), n))) => {
                    assert_eq!(h.check(), Ok(()));
                    pos += n;
                }
                Ok(Some((Frame::Request(r), n))) => {
                    let _status: Status = wire::validate(r, &Limits::default());
                    reqs.push(*r);
                    pos += n;
                }
                Err(e) => return (reqs, Some(e)),
            }
        }
        buf.drain(..pos);
    }
    (reqs, None)
}

fn hello_bytes() -> Vec<u8> {
    bytemuck::bytes_of(&MlHello::current()).to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 0..6)) {
        let (reqs, err) = drive(&chunks);
        // Random bytes almost never form a hello; when they do, every request is framed.
        for r in &reqs {
            prop_assert_eq!({ r.frame_end }, REQUEST_END);
        }
        if let Some(e) = err {
            prop_assert!(e.status().closes_connection());
        }
    }

    #[test]
    fn valid_hello_then_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..2000), cut in 0usize..2016) {
        let mut all = hello_bytes();
        all.extend_from_slice(&body);
        let cut = cut.min(all.len());
        let (reqs, err) = drive(&[all[..cut].to_vec(), all[cut..].to_vec()]);
        // Frames are consumed whole and in order: the k-th request is bytes [16+194k, 16+194(k+1)).
        for (k, r) in reqs.iter().enumerate() {
            let start = 16 + 194 * k;
            prop_assert_eq!(bytemuck::bytes_of(r), &all[start..start + 194]);
        }
        if let Some(e) = err {
            prop_assert_eq!(e.status(), Status::BadFrame);
        }
    }

    #[test]
    fn any_request_fields_validate_to_a_status(
        prices in any::<(i64, i64, i64, i64, i64)>(),
        n in any::<u16>(),
        reserved in any::<u16>(),
        feats in prop::collection::vec(any::<f32>(), 32),
        sym in any::<u16>(),
    ) {
        let mut r = MlRequest::new();
        (r.bid_price, r.ask_price, r.bid_size, r.ask_size, r.book_imbalance) = prices;
        r.n_features = n;
        r.reserved = reserved;
        r.symbol_id = sym;
        r.features = feats.clone().try_into().unwrap();
        let limits = Limits { model_features: Some(3), symbols: Some(vec![true; 100]) };
        let s = wire::validate(&r, &limits);
        if s == Status::Ok {
            let (bid, ask) = (r.bid_price, r.ask_price);
            prop_assert!(bid > 0 && bid < ask, "bid {} ask {}", bid, ask);
            prop_assert_eq!({ r.n_features }, 3);
            prop_assert!(feats[..3].iter().all(|f| f.is_finite()));
            prop_assert!((sym as usize) < 100);
        }
    }
}

/// The fuzzers' seed corpora (`fuzz/seeds/`) are valid frames of this build, so the
/// fuzzers start past the magic and the layout checks. Rewritten with
/// `TICKINFER_BLESS=1 cargo test --test wire_props fuzz_seeds` when the layout changes.
#[test]
fn fuzz_seeds_are_this_builds_frames() {
    use tickinfer::wire::{MlHello, MlRequest};
    let hello = bytemuck::bytes_of(&MlHello::current()).to_vec();
    let req = |id: u64, n: u16| {
        let mut r = MlRequest {
            timestamp_ns: id,
            symbol_id: 3,
            bid_price: 2_230_000,
            ask_price: 2_230_100,
            bid_size: 100,
            ask_size: 300,
            book_imbalance: -500_000,
            request_id: id,
            n_features: n,
            ..MlRequest::new()
        };
        r.features[0] = 0.5;
        bytemuck::bytes_of(&r).to_vec()
    };
    let cat = |parts: &[&[u8]]| parts.concat();
    // decode_request: 2 bytes of cuts (bit 0 of the first: prepend a hello), then the stream.
    let decode: Vec<(&str, Vec<u8>)> = vec![
        ("hello_one_request", cat(&[&[0, 128], &hello, &req(1, 0)])),
        ("auto_hello_two_requests", cat(&[&[1, 64], &req(1, 4), &req(2, 0)])),
        ("request_with_features", cat(&[&[1, 200], &req(7, 4)])),
        ("broken_trailer", cat(&[&[1, 0], &req(1, 0)[..190], &[0xde, 0xad, 0xbe, 0xef]])),
        ("hello_only", cat(&[&[0, 0], &hello])),
    ];
    let hello_seeds: Vec<(&str, Vec<u8>)> = vec![
        ("valid", hello.clone()),
        ("valid_then_ack_bytes", cat(&[&hello, &[0u8; 48]])),
        ("wrong_version", {
            let mut h = hello.clone();
            h[0] = 9;
            h
        }),
        ("model_name", b"lobster_direction_v2_with_a_long_name".to_vec()),
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let bless = std::env::var_os("TICKINFER_BLESS").is_some();
    for (target, seeds) in [("decode_request", decode), ("hello", hello_seeds)] {
        for (name, bytes) in seeds {
            let path = root.join(target).join(name);
            if bless {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(committed, bytes, "{} is stale: rerun with TICKINFER_BLESS=1", path.display());
        }
    }
}
