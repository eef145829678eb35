//! Replay: every format parsed from fixtures made here (DBN with the `dbn`
//! crate's encoder), the real LOBSTER sample when `../shared/data` is present,
//! capture round trips, pacing arithmetic, and the demo end to end.
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use tickinfer::replay::report::test_period_start;
use tickinfer::replay::source::{self, Format, SymbolTable};
use tickinfer::replay::{schedule, Speed};
use util::repo_root;

fn table() -> SymbolTable {
    SymbolTable::new(&[]).unwrap()
}

#[test]
fn lobster_pair_with_halt_and_dummy_rows() {
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("TEST_2012-06-21_34200000_57600000_message_2.csv");
    let book = dir.path().join("TEST_2012-06-21_34200000_57600000_orderbook_2.csv");
    std::fs::write(
        &msg,
        "34200.000000001,1,1,100,1000100,-1\n34200.5,7,0,0,-1,-1\n34201.25,3,1,100,1000100,-1\n34202,1,2,5,999900,1\n",
    )
    .unwrap();
    // Two levels: ask, ask size, bid, bid size per level. Row 3 has an empty best bid (dummy).
    std::fs::write(
        &book,
        "1000100,100,1000000,300,1000200,50,999900,10\n1000100,100,1000000,300,1000200,50,999900,10\n\
         1000200,50,-9999999999,0,9999999999,0,-9999999999,0\n1000200,50,999900,5,9999999999,0,-9999999999,0\n",
    )
    .unwrap();
    let s = source::load(&msg, Format::Lobster, &mut table()).unwrap();
    assert_eq!(s.price_scale, 10_000);
    assert_eq!(s.events.len(), 2, "halt and dummy rows skipped");
    assert_eq!(s.skipped.len(), 2, "{:?}", s.skipped);
    let e = &s.events[0];
    assert_eq!(
        ({ e.req.bid_price }, { e.req.ask_price }, { e.req.bid_size }, { e.req.ask_size }),
        (1_000_000, 1_000_100, 300, 100)
    );
    assert_eq!({ e.req.book_imbalance }, 500_000);
    assert_eq!(e.ts_ns, 1_340_236_800_000_000_000 + 34_200_000_000_001);
    assert_eq!(s.symbols, vec![("TEST".to_string(), 0)]);
    // Level 2 fills the depth block (ml_wire.h: distances from level 1 in price units);
    // the last row's level 2 is empty (dummy prices): size 0, the level above's price.
    assert_eq!(s.depth_levels, 2);
    let depth = |i: usize| {
        (s.events[i].req.n_features, (0..4).map(|f| s.events[i].req.feature(f)).collect::<Vec<_>>())
    };
    assert_eq!(depth(0), (4, vec![0.01, 10.0, 0.01, 50.0]));
    assert_eq!(depth(1), (4, vec![0.0, 0.0, 0.0, 0.0]));
    // Explicit mapping; an unmapped ticker is an error naming it.
    let mut mapped = SymbolTable::new(&["TEST=9".into()]).unwrap();
    assert_eq!({ source::load(&msg, Format::Lobster, &mut mapped).unwrap().events[1].req.symbol_id }, 9);
    let mut other = SymbolTable::new(&["AMZN=1".into()]).unwrap();
    assert!(source::load(&msg, Format::Lobster, &mut other).unwrap_err().to_string().contains("TEST"));
    // Missing orderbook file: named.
    std::fs::remove_file(&book).unwrap();
    let e = source::load(&msg, Format::Lobster, &mut table()).unwrap_err().to_string();
    assert!(e.contains("orderbook"), "{e}");
}

/// Any level count reads the same way: a 3-level pair fills levels 2 and 3, and the
/// served depth model gets exactly the block its manifest reads.
#[test]
fn lobster_level_n_fills_the_depth_block() {
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("TEST_2012-06-21_34200000_57600000_message_3.csv");
    std::fs::write(&msg, "34200.1,1,1,100,1000100,-1\n").unwrap();
    std::fs::write(
        dir.path().join("TEST_2012-06-21_34200000_57600000_orderbook_3.csv"),
        "1000100,100,1000000,300,1000300,70,999800,20,9999999999,0,999700,40\n",
    )
    .unwrap();
    let s = source::load(&msg, Format::Lobster, &mut table()).unwrap();
    assert_eq!(s.depth_levels, 3);
    let r = s.events[0].req;
    assert_eq!({ r.n_features }, 8);
    let f: Vec<f32> = (0..8).map(|i| r.feature(i)).collect();
    // Level 3's ask is empty: size 0 at level 2's distance.
    assert_eq!(f, vec![0.02, 20.0, 0.02, 70.0, 0.03, 40.0, 0.02, 0.0]);
    let m = tickinfer::features::FeatureMap::new(
        &["bid_px(3)".into(), "ask_px(2)".into(), "ask_sz(3)".into(), "depth_imbalance(3)".into()],
        None,
        None,
        10_000,
    )
    .unwrap();
    let mut row = [0f32; 4];
    m.fill(&r, &mut row);
    let imb = (360.0 - 170.0) / 530.0;
    assert_eq!(row, [99.97, 100.03, 0.0, imb as f32]);
}

/// Databento MBP-10: levels 2..5 fill the depth block (an undefined deeper price is an
/// empty level), levels 6..10 are not carried.
#[test]
fn dbn_mbp10_fills_the_depth_block() {
    use dbn::encode::{dbn::Encoder, EncodeRecord};
    use dbn::{BidAskPair, Mbp10Msg, MetadataBuilder, RecordHeader, SType, Schema};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mbp10.dbn.zst");
    let meta = MetadataBuilder::new()
        .dataset("XNAS.ITCH".to_string())
        .schema(Some(Schema::Mbp10))
        .start(0)
        .stype_in(Some(SType::InstrumentId))
        .stype_out(SType::InstrumentId)
        .build();
    let mut enc = Encoder::with_zstd(std::fs::File::create(&path).unwrap(), &meta).unwrap();
    let mut levels: [BidAskPair; 10] = std::array::from_fn(|k| {
        let k = k as i64;
        BidAskPair {
            bid_px: 100_000_000_000 - k * 10_000_000, // $100.00, 99.99, ...
            ask_px: 100_010_000_000 + k * 10_000_000,
            bid_sz: 100 + k as u32,
            ask_sz: 200 + k as u32,
            bid_ct: 1,
            ask_ct: 1,
        }
    });
    levels[3].bid_px = dbn::UNDEF_PRICE; // level 4's bid side is empty
    let hd = RecordHeader::new::<Mbp10Msg>(dbn::rtype::MBP_10, 1, 7, 1_000);
    enc.encode_record(&Mbp10Msg { hd, levels, ..Default::default() }).unwrap();
    drop(enc);
    let s = source::load(&path, Format::Dbn, &mut table()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((s.events.len(), s.depth_levels), (1, 5));
    let r = s.events[0].req;
    assert_eq!(({ r.bid_price }, { r.ask_size }, { r.n_features }), (100_000_000_000, 200, 16));
    let f: Vec<f32> = (0..16).map(|i| r.feature(i)).collect();
    #[rustfmt::skip]
    assert_eq!(f, vec![
        0.01, 101.0, 0.01, 201.0,
        0.02, 102.0, 0.02, 202.0,
        0.02, 0.0, 0.03, 203.0, // level 4: empty bid, level 3's distance
        0.04, 104.0, 0.04, 204.0,
    ]);
}

/// The served depth model over the bundled 5-level sample answers every request (the
/// replay sends the depth block the model reads), and so does the stateless default
/// over the same file (it reads no extras: the replay sends none).
#[test]
fn depth_models_replay_a_level_5_file() {
    let sample = repo_root().join("data/sample/SYNTH_2026-01-05_sample_5.zip");
    for (model, extras) in
        [("tests/fixtures/models/depth_linear.toml", 16), ("models/lobster_direction.toml", 0)]
    {
        let dir = tempfile::tempdir().unwrap();
        #[rustfmt::skip]
        let text = tickinfer(&[
            "replay", "--input", sample.to_str().unwrap(), "--format", "lobster",
            "--model", repo_root().join(model).to_str().unwrap(), "--server-poll", "block",
            "--window", "16", "--limit", "2000", "--out", dir.path().to_str().unwrap(), "--json",
        ]);
        let s: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!((s["events"].as_u64(), s["lost"].as_u64()), (Some(2000), Some(0)), "{model}");
        assert_eq!(s["by_status"][0][1], 2000, "{model}: every answer OK: {}", s["by_status"]);
        let m = tickinfer::manifest::Manifest::load(&repo_root().join(model)).unwrap();
        assert_eq!(m.features.extras(), extras, "{model}");
    }
}

fn shared_lobster() -> Option<PathBuf> {
    let p = repo_root().join("../shared/data/lobster/LOBSTER_SampleFile_AMZN_2012-06-21_1.zip");
    if p.exists() {
        Some(p)
    } else {
        util::skip("real LOBSTER sample", "../shared/data/lobster is not present");
        None
    }
}

#[test]
fn real_lobster_sample_when_present() {
    let Some(zip) = shared_lobster() else { return };
    let s = source::load(&zip, Format::Lobster, &mut table()).unwrap();
    // 57,515 rows; a handful with an empty best level or a halt are skipped.
    let skipped: u64 = s.skipped.iter().map(|(_, n)| n).sum();
    assert_eq!(s.events.len() as u64 + skipped, 57_515);
    assert!(s.events.len() > 57_000);
    assert!(s.events.iter().all(|e| e.req.bid_price > 0 && e.req.bid_price < e.req.ask_price));
    assert_eq!(s.symbols, vec![("AMZN".to_string(), 0)]);
}

fn write_dbn(path: &Path, zstd: bool, bbo: bool) {
    use dbn::encode::{dbn::Encoder, EncodeRecord};
    use dbn::{BboMsg, BidAskPair, Mbp1Msg, MetadataBuilder, RecordHeader, SType, Schema};
    let schema = if bbo { Schema::Bbo1S } else { Schema::Mbp1 };
    let meta = MetadataBuilder::new()
        .dataset("XNAS.ITCH".to_string())
        .schema(Some(schema))
        .start(0)
        .stype_in(Some(SType::InstrumentId))
        .stype_out(SType::InstrumentId)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let levels = |i: i64| {
        [BidAskPair {
            bid_px: 100_000_000_000 + i * 10_000_000,
            ask_px: if i == 2 { dbn::UNDEF_PRICE } else { 100_010_000_000 + i * 10_000_000 },
            bid_sz: 300,
            ask_sz: 100,
            bid_ct: 1,
            ask_ct: 1,
        }]
    };
    let rtype = if bbo { dbn::rtype::BBO_1S } else { dbn::rtype::MBP_1 };
    let hd = |i: i64| RecordHeader::new::<Mbp1Msg>(rtype, 1, 1000 + (i % 2) as u32, 1_000 + i as u64);
    macro_rules! encode {
        ($enc:expr) => {{
            let mut enc = $enc;
            for i in 0..5i64 {
                if bbo {
                    let rec = BboMsg {
                        hd: hd(i),
                        ts_recv: 2_000 + i as u64,
                        levels: levels(i),
                        ..BboMsg::default_for_schema(Schema::Bbo1S)
                    };
                    enc.encode_record(&rec).unwrap();
                } else {
                    let rec = Mbp1Msg { hd: hd(i), levels: levels(i), ..Default::default() };
                    enc.encode_record(&rec).unwrap();
                }
            }
        }};
    }
    if zstd {
        encode!(Encoder::with_zstd(file, &meta).unwrap());
    } else {
        encode!(Encoder::new(file, &meta).unwrap());
    }
}

#[test]
fn dbn_mbp1_and_bbo_plain_and_zstd() {
    let dir = tempfile::tempdir().unwrap();
    for (zstd, bbo) in [(false, false), (true, false), (false, true), (true, true)] {
        let path = dir.path().join(format!("t-{zstd}-{bbo}.dbn{}", if zstd { ".zst" } else { "" }));
        write_dbn(&path, zstd, bbo);
        let s = source::load(&path, Format::Dbn, &mut table()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.price_scale, 1_000_000_000);
        assert_eq!(s.events.len(), 4, "zstd {zstd} bbo {bbo}: the undefined ask is skipped");
        let e = &s.events[0];
        assert_eq!(({ e.req.bid_price }, { e.req.ask_price }), (100_000_000_000, 100_010_000_000));
        assert_eq!(e.ts_ns, if bbo { 2_000 } else { 1_000 });
        // Instruments 1000, 1001 -> symbol ids 0, 1 by first appearance.
        assert_eq!(({ s.events[0].req.symbol_id }, { s.events[1].req.symbol_id }), (0, 1));
        let mut ev = s.events.clone();
        source::rescale(&mut ev, s.price_scale, 10_000).unwrap();
        assert_eq!({ ev[0].req.bid_price }, 1_000_000, "DBN 1e-9 → the server's scale");
    }
}

#[test]
fn csv_with_header_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.csv");
    std::fs::write(
        &path,
        "timestamp_ns,symbol,bid_price,ask_price,bid_size,ask_size,f0,f1\n\
         1000,AAPL,189.50,189.52,300,100,0.5,-1\n2000,MSFT,410.00,410.05,10,10,0,0\n3000,AAPL,189.51,189.52,200,200,1,2\n",
    )
    .unwrap();
    let s = source::load(&path, Format::Csv, &mut table()).unwrap();
    assert_eq!(s.events.len(), 3);
    let e = &s.events[0];
    assert_eq!(({ e.req.bid_price }, { e.req.ask_price }), (189_500_000_000, 189_520_000_000));
    assert_eq!(({ e.req.n_features }, e.req.features[1]), (2, -1.0));
    assert_eq!({ e.req.book_imbalance }, 500_000);
    assert_eq!(({ s.events[1].req.symbol_id }, { s.events[2].req.symbol_id }), (1, 0));
    std::fs::write(&path, "time,bid,ask\n1,2,3\n").unwrap();
    let e = source::load(&path, Format::Csv, &mut table()).unwrap_err().to_string();
    assert!(e.contains("missing column `bid_price`"), "{e}");
}

/// Crypto sizes: decimal sizes fit a model's `size_scale`, told to clients in the hello
/// ack; more decimals than it allows is an error naming the manifest line.
#[test]
fn fractional_sizes_through_size_scale() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("btc.csv");
    let mut rows = String::from("timestamp_ns,symbol,bid_price,ask_price,bid_size,ask_size\n");
    for i in 0..200u64 {
        rows += &format!(
            "{},BTC-USD,{}.10,{}.20,2.507,0.{}\n",
            1_000_000 + i * 1000,
            60_000 + i % 7,
            60_000 + i % 7,
            1 + i % 9
        );
    }
    std::fs::write(&csv, rows).unwrap();
    // Parsed directly at a scale: exact fixed point, and errors name the line, column and value.
    let s = source::load_with(
        &csv,
        Format::Csv,
        &mut table(),
        &source::LoadOptions { size_scale: 1000, ..Default::default() },
    )
    .unwrap();
    assert_eq!(({ s.events[0].req.bid_size }, { s.events[0].req.ask_size }), (2507, 100));
    let e = source::load(&csv, Format::Csv, &mut table()).unwrap_err().to_string();
    assert!(e.contains("line 2: bid_size = 2.507: 3 decimals") && e.contains("size_scale = 1000"), "{e}");
    assert_eq!(source::decimal_fixed("12", 3), Ok(12_000));
    assert_eq!(source::decimal_fixed("0.50", 1), Ok(5));
    assert!(source::decimal_fixed("1e3", 3).is_err() && source::decimal_fixed("", 3).is_err());

    // A model with size_scale = 1000: the ack says 3 digits and the replay runs.
    let model = dir.path().join("btc.toml");
    let text = std::fs::read_to_string(repo_root().join("models/lobster_direction.toml")).unwrap();
    let onnx = repo_root().join("models/lobster_direction.onnx");
    let text = text.replace(
        "onnx = \"lobster_direction.onnx\"",
        &format!("onnx = {:?}\nsize_scale = 1000", onnx.display().to_string()),
    );
    std::fs::write(&model, text).unwrap();
    let server = util::server::Server::start(&["--model", model.to_str().unwrap()]);
    let c = util::server::Client::connect(&server.socket).unwrap();
    assert_eq!(({ c.ack.size_scale_digits }, c.ack.size_scale()), (3, 1000));
    let out = dir.path().join("out");
    let json = tickinfer(&[
        "replay",
        "--socket",
        server.socket.to_str().unwrap(),
        "--input",
        csv.to_str().unwrap(),
        "--format",
        "csv",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    let summary: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(summary["by_status"][0], serde_json::json!(["0 ok", 200]), "{summary}");
    // A reload may not change the size scale clients were told.
    let reload = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["reload", "--socket", server.socket.to_str().unwrap(), "--model"])
        .arg(repo_root().join("models/lobster_direction.toml"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&reload.stderr);
    assert!(
        !reload.status.success() && said.contains("size_scale 1 differs from the serving model's 1000"),
        "{said}"
    );
    // The default model (size_scale 1) refuses the same file with the fix named.
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["replay", "--model"])
        .arg(repo_root().join("models/lobster_direction.toml"))
        .args([
            "--input",
            csv.to_str().unwrap(),
            "--format",
            "csv",
            "--out",
            dir.path().join("o2").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("size_scale = 1000 under [model]"), "{err}");
}

/// A CSV from anywhere: its own column names (`--columns`), ISO-8601 or ms timestamps
/// (`--time-unit`), string symbols; errors name the line, the column and the value.
#[test]
fn csv_with_its_own_columns_and_time_unit() {
    use source::{LoadOptions, TimeUnit};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("venue.csv");
    std::fs::write(
        &path,
        "ts_event,ticker,bid_px,ask_px,bid_qty,ask_qty\n\
         2026-01-05T14:30:00.000000001Z,ETH-USD,3100.5,3100.75,3,4\n\
         2026-01-05T15:30:00.5+01:00,SOL/USDT perp,150.01,150.02,10,20\n\
         2026-01-05 14:30:01.25,ETH-USD,3100.25,3100.5,1,1\n",
    )
    .unwrap();
    let columns = LoadOptions::parse_columns(&[
        "timestamp=ts_event,symbol=ticker".into(),
        "bid_price=bid_px,ask_price=ask_px,bid_size=bid_qty,ask_size=ask_qty".into(),
    ])
    .unwrap();
    let opts = LoadOptions { columns: columns.clone(), time_unit: Some(TimeUnit::Iso), ..Default::default() };
    let s = source::load_with(&path, Format::Csv, &mut table(), &opts).unwrap();
    let day = 1_767_571_200_000_000_000u64; // 2026-01-05T00:00:00Z
    let t = |h: u64, m: u64, s: u64, ns: u64| day + ((h * 60 + m) * 60 + s) * 1_000_000_000 + ns;
    let ts: Vec<u64> = s.events.iter().map(|e| e.ts_ns).collect();
    assert_eq!(ts, vec![t(14, 30, 0, 1), t(14, 30, 0, 500_000_000), t(14, 30, 1, 250_000_000)]);
    let ids: Vec<u16> = s.events.iter().map(|e| e.req.symbol_id).collect();
    assert_eq!(ids, vec![0, 1, 0], "any string is a symbol");
    assert_eq!(s.symbols[1].0, "SOL/USDT perp");
    assert_eq!({ s.events[0].req.bid_price }, 3_100_500_000_000);

    // Milliseconds, decimal.
    std::fs::write(&path, "t_ms,bid,ask,bq,aq\n1767623400000.5,1,2,3,4\n").unwrap();
    let opts = LoadOptions {
        columns: LoadOptions::parse_columns(&[
            "timestamp=t_ms,bid_price=bid,ask_price=ask,bid_size=bq,ask_size=aq".into(),
        ])
        .unwrap(),
        time_unit: Some(TimeUnit::Ms),
        ..Default::default()
    };
    assert_eq!(
        source::load_with(&path, Format::Csv, &mut table(), &opts).unwrap().events[0].ts_ns,
        1_767_623_400_000_500_000
    );

    // Errors: the line, the column and the value; a mapping to a missing column; a bad name.
    std::fs::write(&path, "t_ms,bid,ask,bq,aq\n1,1,2,3,4\nyesterday,1,2,3,4\n").unwrap();
    let e = source::load_with(&path, Format::Csv, &mut table(), &opts).unwrap_err().to_string();
    assert!(e.contains("line 3: timestamp = yesterday: not a number (--time-unit Ms)"), "{e}");
    let iso = LoadOptions { time_unit: Some(TimeUnit::Iso), ..opts.clone() };
    let e = source::load_with(&path, Format::Csv, &mut table(), &iso).unwrap_err().to_string();
    assert!(e.contains("line 2: timestamp = 1: not an ISO-8601 time"), "{e}");
    let wrong =
        LoadOptions { columns: LoadOptions::parse_columns(&["bid_price=bidz".into()]).unwrap(), ..opts };
    let e = source::load_with(&path, Format::Csv, &mut table(), &wrong).unwrap_err().to_string();
    assert!(e.contains("--columns bid_price=bidz: no column `bidz`"), "{e}");
    // Hostile text never panics: every unit gives an error.
    for text in
        ["1.é5", "é", "2026-01-05Té", "2026-01-05T14:30:00.ééé", "٣", "-1", "1e9", "2026-13-01T00:00:00Z", ""]
    {
        for unit in [TimeUnit::S, TimeUnit::Ms, TimeUnit::Us, TimeUnit::Ns, TimeUnit::Iso] {
            assert!(source::parse_time(text, unit).is_err(), "{text:?} as {unit:?}");
        }
        assert!(source::decimal_fixed(text, 3).is_err(), "{text:?}");
    }
    assert!(LoadOptions::parse_columns(&["price=x".into()]).unwrap_err().contains("not one of"));
    assert!(LoadOptions::parse_columns(&["timestamp".into()]).unwrap_err().contains("NAME=COLUMN"));
    // The CLI takes them too.
    std::fs::write(
        &path,
        "ts_event,ticker,bid_px,ask_px,bid_qty,ask_qty\n2026-01-05T14:30:00Z,X,1.5,1.6,1,1\n2026-01-05T14:30:01Z,X,1.5,1.6,1,2\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let json = tickinfer(&[
        "replay",
        "--model",
        repo_root().join("models/lobster_direction.toml").to_str().unwrap(),
        "--input",
        path.to_str().unwrap(),
        "--format",
        "csv",
        "--time-unit",
        "iso",
        "--json",
        "--columns",
        "timestamp=ts_event,symbol=ticker,bid_price=bid_px,ask_price=ask_px",
        "--columns",
        "bid_size=bid_qty,ask_size=ask_qty",
        "--out",
        out.to_str().unwrap(),
    ]);
    let summary: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(summary["events"], 2, "{summary}");
}

#[test]
fn pacing_schedules() {
    let mut ev = Vec::new();
    for (i, ts) in [1_000_000_000u64, 1_000_500_000, 1_002_000_000].iter().enumerate() {
        let mut e = source::Event { ts_ns: *ts, req: tickinfer::wire::MlRequest::new() };
        e.req.request_id = i as u64;
        ev.push(e);
    }
    assert_eq!(schedule(&ev, Speed::Max, None), vec![None, None, None]);
    assert_eq!(schedule(&ev, Speed::Times(1.0), None), vec![Some(0), Some(500_000), Some(2_000_000)]);
    assert_eq!(schedule(&ev, Speed::Times(10.0), None), vec![Some(0), Some(50_000), Some(200_000)]);
    assert_eq!(schedule(&ev, Speed::Max, Some(1000.0)), vec![Some(0), Some(1_000_000), Some(2_000_000)]);
    assert_eq!("realtime".parse::<Speed>().unwrap(), Speed::Times(1.0));
    assert_eq!("25x".parse::<Speed>().unwrap(), Speed::Times(25.0));
    assert!("fast".parse::<Speed>().is_err());
}

fn tickinfer(args: &[&str]) -> String {
    util::run_ok(Command::new(env!("CARGO_BIN_EXE_tickinfer")).args(args))
}

#[test]
fn record_while_replaying_then_replay_the_capture() {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("session.tkcap");
    let sample = repo_root().join("data/sample/SYNTH_2026-01-05_sample.zip");
    let mut server = util::server::Server::start(&["--record", cap.to_str().unwrap()]);
    let out1 = dir.path().join("r1");
    tickinfer(&[
        "replay",
        "--input",
        sample.to_str().unwrap(),
        "--format",
        "lobster",
        "--limit",
        "3000",
        "--socket",
        server.socket.to_str().unwrap(),
        "--connections",
        "2",
        "--window",
        "16",
        "--out",
        out1.to_str().unwrap(),
    ]);
    assert!(server.terminate().success());
    assert!(server.log().contains("recorder: 3000 requests written"), "{}", server.log());
    // The capture holds exactly what was sent (request ids are the replay's event indices).
    let c = tickinfer::record::read_capture(&cap).unwrap();
    assert_eq!(c.records.len(), 3000);
    let mut ids: Vec<u64> = c.records.iter().map(|r| r.request.request_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..3000).collect::<Vec<_>>());
    let stream = source::load(&sample, Format::Lobster, &mut table()).unwrap();
    for r in &c.records {
        let mut want = stream.events[r.request.request_id as usize].req;
        want.request_id = r.request.request_id;
        assert_eq!(bytemuck::bytes_of(&r.request), bytemuck::bytes_of(&want), "recorded request differs");
    }
    // Byte-for-byte round trip of the file.
    let again = dir.path().join("again.tkcap");
    tickinfer::record::write_capture(&again, &c.header, &c.records).unwrap();
    assert_eq!(std::fs::read(&cap).unwrap(), std::fs::read(&again).unwrap());
    // Replaying the capture (spawning a server from --model) answers every request.
    let out2 = dir.path().join("r2");
    let text = tickinfer(&[
        "replay",
        "--input",
        cap.to_str().unwrap(),
        "--format",
        "capture",
        "--model",
        repo_root().join("models/lobster_direction.toml").to_str().unwrap(),
        "--server-poll",
        "block",
        "--rate",
        "20000",
        "--out",
        out2.to_str().unwrap(),
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(summary["events"], 3000);
    assert_eq!(summary["by_status"][0][1], 3000, "{summary}");
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["mismatched_ids"], 0);
}

#[test]
fn demo_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let text = tickinfer(&["demo", "--out", out.to_str().unwrap()]);
    for needle in ["latency µs", "p99.9", "throughput", "status       0 ok: 20000", "always-", "macro-F1"] {
        assert!(text.contains(needle), "`{needle}` not in:\n{text}");
    }
    // The second part: the stateless default beside the stateful models, each a table row of
    // real numbers (accuracy and macro-F1 in [0, 1], latencies > 0).
    assert!(text.contains("signal quality, stateless beside stateful"), "{text}");
    for model in ["lobster_direction", "lobster_stateful", "lobster_lstm_step"] {
        let row =
            text.lines().find(|l| l.starts_with(&format!("| {model} |"))).unwrap_or_else(|| panic!("{text}"));
        let cells: Vec<f64> = row.split('|').filter_map(|c| c.trim().parse().ok()).collect();
        assert_eq!(cells.len(), 5, "{row}");
        assert!(cells[..3].iter().all(|v| (0.0..=1.0).contains(v)) && cells[3] > 0.0, "{row}");
        assert!(out.join("compare").join(model).join("signals.csv").exists());
    }
    // Which backend served each model, and why: the LSTM step's evaluator was checked against ORT.
    let lstm = text
        .lines()
        .find(|l| l.trim_start().starts_with("lobster_lstm_step: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        text.contains("backends:") && lstm.contains("gate:") && lstm.contains("agrees on every row"),
        "{lstm}"
    );
    for f in ["signals.csv", "summary.json", "latency.svg", "latency.png"] {
        assert!(out.join(f).metadata().map(|m| m.len() > 0).unwrap_or(false), "{f} missing");
    }
    let signals = std::fs::read_to_string(out.join("signals.csv")).unwrap();
    assert_eq!(signals.lines().count(), 20_001, "header + one line per event");
}

/// End to end against the model report: replaying the report's test period through the
/// server reproduces the report's out-of-sample accuracy and macro-F1 (Rust features +
/// ONNX Runtime in the server == the Python pipeline that trained and evaluated the model).
#[test]
fn replay_lobster_sample_reproduces_the_model_report_when_present() {
    let Some(zip) = shared_lobster() else { return };
    let report = std::fs::read_to_string(repo_root().join("models/lobster_direction.report.md")).unwrap();
    let skip = test_period_start(&report).expect("a `train N events, validation M` line in the report");
    let row = report.lines().find(|l| l.starts_with("| logistic |") || l.starts_with("| mlp16 |")).unwrap();
    let cells: Vec<f64> = row.split('|').filter_map(|c| c.trim().parse().ok()).collect();
    let (want_acc, want_f1) = (cells[0], cells[1]);

    let dir = tempfile::tempdir().unwrap();
    let text = tickinfer(&[
        "replay",
        "--input",
        zip.to_str().unwrap(),
        "--format",
        "lobster",
        "--model",
        repo_root().join("models/lobster_direction.toml").to_str().unwrap(),
        "--server-poll",
        "block",
        "--window",
        "32",
        "--skip",
        &skip.to_string(),
        "--out",
        dir.path().to_str().unwrap(),
        "--json",
    ]);
    let s: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(s["lost"], 0);
    let q = &s["quality"];
    assert_eq!(q["horizon_events"], 10);
    let (acc, f1) = (q["accuracy"].as_f64().unwrap(), q["macro_f1"].as_f64().unwrap());
    // The report prints three decimals.
    assert!(
        (acc - want_acc).abs() <= 0.0005 && (f1 - want_f1).abs() <= 0.0005,
        "replay {acc:.4}/{f1:.4} vs report {want_acc}/{want_f1}"
    );
    assert!(acc > q["majority_accuracy"].as_f64().unwrap());
}

/// Input that lies gets a clear error naming the file, the line or record and the
/// field — never a panic, never a silent wrap.
#[test]
fn lying_inputs_are_refused_with_the_place_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let load = |name: &str, text: &str, format: Format| -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let e =
            source::load(&path, format, &mut table()).err().unwrap_or_else(|| panic!("{name} was accepted"));
        let msg = e.to_string();
        assert!(msg.contains(name), "the error names the file: {msg}");
        msg
    };
    let head = "timestamp_ns,symbol_id,bid_price,ask_price,bid_size,ask_size\n";
    let e = load("sym.csv", &format!("{head}1,65536,1.0,1.1,5,5\n"), Format::Csv);
    assert!(e.contains("line 2: symbol_id = 65536") && e.contains("0..65535"), "{e}");
    let e = load("neg.csv", &format!("{head}1,1,1.0,1.1,-5,5\n"), Format::Csv);
    assert!(e.contains("line 2: bid_size = -5"), "{e}");
    let e = load("px.csv", &format!("{head}1,1,1e300,1.1,5,5\n"), Format::Csv);
    assert!(e.contains("line 2: bid_price = 1e300"), "{e}");
    let secs =
        "timestamp,symbol_id,bid_price,ask_price,bid_size,ask_size\n1,1,1.0,1.1,5,5\n1e30,1,1.0,1.1,5,5\n";
    let e = load("ts.csv", secs, Format::Csv);
    assert!(e.contains("line 3: timestamp = 1e30"), "{e}");
    let imb =
        "timestamp_ns,symbol_id,bid_price,ask_price,bid_size,ask_size,book_imbalance\n1,1,1.0,1.1,5,5,7\n";
    let e = load("imb.csv", imb, Format::Csv);
    assert!(e.contains("line 2: book_imbalance = 7"), "{e}");
    // Sizes whose sum overflows i64 are fine (the imbalance is computed in i128).
    let big = format!("{head}1,1,1.0,1.1,{m},{m}\n", m = i64::MAX);
    let path = dir.path().join("big.csv");
    std::fs::write(&path, big).unwrap();
    assert_eq!(source::load(&path, Format::Csv, &mut table()).unwrap().events.len(), 1);

    // LOBSTER: a time past the nanosecond clock, a negative size.
    let lobster = |name: &str, msg: &str, book: &str| {
        let m = dir.path().join(format!("{name}_2012-06-21_34200000_57600000_message_1.csv"));
        std::fs::write(&m, msg).unwrap();
        std::fs::write(dir.path().join(format!("{name}_2012-06-21_34200000_57600000_orderbook_1.csv")), book)
            .unwrap();
        source::load(&m, Format::Lobster, &mut table()).unwrap_err().to_string()
    };
    let e = lobster(
        "T1",
        "34200.1,1,1,100,2230000,1\n1e12,1,1,100,2230000,1\n",
        "2230100,100,2230000,200\n2230100,100,2230000,200\n",
    );
    assert!(e.contains("row 2: bad time 1000000000000"), "{e}");
    let e = lobster("T2", "34200.1,1,1,100,2230000,1\n", "2230100,-100,2230000,200\n");
    assert!(e.contains("row 1: bad ask size -100 (negative)"), "{e}");

    // A capture whose header has a zero or negative price scale.
    for scale in [0i64, -10_000] {
        let path = dir.path().join(format!("scale{scale}.tkcap"));
        let header = tickinfer::record::CaptureHeader::new(scale, 0);
        let rec = tickinfer::record::CaptureRecord { recv_ns: 1, request: tickinfer::wire::MlRequest::new() };
        tickinfer::record::write_capture(&path, &header, &[rec]).unwrap();
        let e = source::load(&path, Format::Capture, &mut table()).unwrap_err().to_string();
        assert!(e.contains(&format!("price_scale = {scale}: must be positive")), "{e}");
        assert!(e.contains(&format!("scale{scale}.tkcap")), "{e}");
    }
}

/// The stateful default through the real server over the whole real day (its state needs
/// the history before the test period), scored on the report's test period only
/// (`--score-from`): the report's out-of-sample numbers come back exactly (the
/// server's stateful features are the twin's bits, and ONNX Runtime runs the same trees).
#[test]
fn the_stateful_model_served_reproduces_its_report_when_present() {
    let Some(zip) = shared_lobster() else { return };
    let report = std::fs::read_to_string(repo_root().join("models/lobster_stateful.report.md")).unwrap();
    let test_from = test_period_start(&report).expect("a `train N events, validation M` line in the report");
    let row = report.lines().find(|l| l.contains("(shipped) |")).expect("the shipped model's row");
    let cells: Vec<f64> = row.split('|').filter_map(|c| c.trim().parse().ok()).collect();
    let (want_acc, want_f1) = (cells[1], cells[2]);

    let dir = tempfile::tempdir().unwrap();
    let model = repo_root().join("models/lobster_stateful.toml");
    #[rustfmt::skip]
    let text = tickinfer(&[
        "replay", "--input", zip.to_str().unwrap(), "--format", "lobster", "--model", model.to_str().unwrap(),
        "--server-poll", "block", "--window", "32", "--score-from", &test_from.to_string(),
        "--out", dir.path().to_str().unwrap(), "--json",
    ]);
    let s: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(s["lost"], 0);
    assert_eq!(s["by_status"][0][1], s["events"], "every answer OK: {}", s["by_status"]);
    let q = &s["quality"];
    assert_eq!(q["horizon_events"], 10);
    assert!(test_from < s["events"].as_u64().unwrap() as usize, "the report's split is inside the day");
    // Every event was sent (the state warms on the training period); only the test period is scored.
    assert_eq!(
        q["evaluated"].as_u64().unwrap() as usize,
        s["events"].as_u64().unwrap() as usize - test_from - 10
    );
    let (acc, f1) = (q["accuracy"].as_f64().unwrap(), q["macro_f1"].as_f64().unwrap());
    eprintln!("served test period: accuracy {acc:.4}, macro-F1 {f1:.4} (report: {want_acc}, {want_f1})");
    // The report prints three decimals.
    assert!(
        (acc - want_acc).abs() <= 0.0005 && (f1 - want_f1).abs() <= 0.0005,
        "served {acc:.4}/{f1:.4} vs report {want_acc}/{want_f1}"
    );
}

/// `--transport shm` gets the same answers as the socket, closed loop and open loop.
#[test]
fn replay_over_shared_memory_matches_the_socket() {
    let sample = repo_root().join("data/sample/SYNTH_2026-01-05_sample.zip");
    let server = util::server::Server::start(&[]);
    let run = |transport: &str, extra: &[&str]| -> serde_json::Value {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "replay",
            "--input",
            sample.to_str().unwrap(),
            "--format",
            "lobster",
            "--limit",
            "3000",
            "--socket",
            server.socket.to_str().unwrap(),
            "--connections",
            "2",
            "--transport",
            transport,
            "--out",
            dir.path().to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&tickinfer(&args)).unwrap()
    };
    let socket = run("socket", &["--window", "16"]);
    for shm in [run("shm", &["--window", "16"]), run("shm", &["--rate", "20000", "--window", "64"])] {
        assert_eq!(shm["transport"], "shm");
        assert_eq!((shm["events"].as_u64(), shm["lost"].as_u64()), (Some(3000), Some(0)), "{shm}");
        assert_eq!(shm["mismatched_ids"], 0);
        assert_eq!(shm["by_status"], socket["by_status"]);
        assert_eq!(shm["quality"], socket["quality"], "same answers, same signal quality");
    }
}

/// `--connect tcp://host:port` gets the same answers as the Unix socket, with the token.
#[test]
fn replay_over_tcp_matches_the_socket() {
    use std::os::unix::fs::PermissionsExt;
    let sample = repo_root().join("data/sample/SYNTH_2026-01-05_sample.zip");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "replay-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = util::server::Server::start(&[
        "--listen-tcp",
        "127.0.0.1:0",
        "--tcp-token-file",
        token.to_str().unwrap(),
    ]);
    let url = format!("tcp://{}", server.tcp_addr());
    let run = |target: &[&str]| -> serde_json::Value {
        let out = tempfile::tempdir().unwrap();
        let mut args =
            vec!["replay", "--input", sample.to_str().unwrap(), "--format", "lobster", "--limit", "3000"];
        args.extend_from_slice(target);
        args.extend_from_slice(&[
            "--connections",
            "2",
            "--window",
            "16",
            "--out",
            out.path().to_str().unwrap(),
            "--json",
        ]);
        serde_json::from_str(&tickinfer(&args)).unwrap()
    };
    let socket = run(&["--socket", server.socket.to_str().unwrap()]);
    let tcp = run(&["--connect", &url, "--tcp-token-file", token.to_str().unwrap()]);
    assert_eq!(tcp["transport"], "tcp");
    assert_eq!((tcp["events"].as_u64(), tcp["lost"].as_u64()), (Some(3000), Some(0)), "{tcp}");
    assert_eq!(tcp["mismatched_ids"], 0);
    assert_eq!(tcp["by_status"], socket["by_status"]);
    assert_eq!(tcp["quality"], socket["quality"], "same answers, same signal quality");
    // Without the token: refused, and said so.
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["replay", "--input", sample.to_str().unwrap(), "--format", "lobster", "--limit", "10"])
        .args(["--connect", &url, "--out", dir.path().join("x").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TCP token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pacing options that cannot work are refused before anything is sent (a huge window
/// once aborted on allocation; a zero rate never sent).
#[test]
fn impossible_pacing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["--window", "100000000"], "at most 65536"),
        (&["--rate", "0"], "must be a positive number"),
        (&["--rate=-5"], "must be a positive number"),
        (&["--keep-warm-us", "0"], "--keep-warm-us must be at least 1"),
        (&["--keep-warm-us", "50", "--client-poll", "block"], "--keep-warm-us needs --client-poll spin"),
        (&["--server-keep-warm-us", "50", "--server-poll", "block"], "--server-keep-warm-us needs"),
        (&["--server-keep-warm-us", "0"], "--server-keep-warm-us must be at least 1"),
    ];
    for (args, said) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
            .args(["replay", "--format", "lobster", "--model"])
            .arg(repo_root().join("models/lobster_direction.toml"))
            .arg("--input")
            .arg(repo_root().join("data/sample/SYNTH_2026-01-05_sample.zip"))
            .args(args)
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(said), "{args:?}: {err}");
    }
}
