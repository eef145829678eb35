//! The headers are the source of truth: compile a C program against
//! `proto/ml_wire.h` and `proto/ml_shm.h`, print every size and offset, and
//! compare with the Rust mirrors' tables. Also checks the header builds as C11 and C++20 with warnings
//! as errors, and that both sides name the same status codes.
mod util;

use std::collections::BTreeMap;
use std::process::Command;
use tickinfer::wire::{layout_table, Status};

/// Both mirrors' tables: the wire frames and the shared-memory region.
fn rust_table() -> Vec<(&'static str, usize)> {
    let mut t = layout_table();
    t.extend(tickinfer::shm::layout_table());
    t
}

fn c_program() -> String {
    let mut rows = String::new();
    for (name, _) in rust_table() {
        if let Some(ty) = name.strip_prefix("sizeof ") {
            rows += &format!("    printf(\"{name} %zu\\n\", sizeof({ty}));\n");
        } else {
            let (ty, field) = name.split_once('.').unwrap();
            rows += &format!("    printf(\"{name} %zu\\n\", offsetof({ty}, {field}));\n");
        }
    }
    let mut statuses = String::new();
    for s in Status::ALL {
        statuses +=
            &format!("    printf(\"status %d %s\\n\", {code}, ml_status_str({code}));\n", code = s.code());
    }
    // Book depth: the offsets, and ml_request_set_level's floats for one level.
    let depth = "    printf(\"depth_levels %u\\n\", ML_DEPTH_LEVELS);\n    \
        for (unsigned k = 2; k <= ML_DEPTH_LEVELS; k++) \
        printf(\"depth_index %u %u %u\\n\", k, ML_DEPTH_INDEX(k), ML_DEPTH_FEATURES_FOR(k));\n    \
        ml_request_t r; ml_request_init(&r); r.bid_price = 1000000; r.ask_price = 1000100;\n    \
        if (ml_request_set_level(&r, 6, 0, 0, 0, 0, 10000) != -1) return 1;\n    \
        ml_request_set_level(&r, 3, 999700, 40, 1000400, 70, 10000);\n    \
        printf(\"set_level %u\", r.n_features);\n    \
        for (unsigned i = 0; i < 8; i++) { uint32_t b; memcpy(&b, &r.features[i], 4); printf(\" %u\", b); }\n    \
        printf(\"\\n\");\n";
    format!(
        "#include <stdio.h>\n#include <string.h>\n#include \"ml_wire.h\"\n#include \"ml_shm.h\"\nint main(void) {{\n{rows}{statuses}    \
         printf(\"status_count %u\\n\", ML_STATUS_COUNT);\n    \
         printf(\"response_warming %u\\n\", ML_RESPONSE_WARMING);\n    \
         printf(\"auth_constants %u %u %u\\n\", ML_HELLO_FLAG_AUTH, ML_AUTH_MAGIC, ML_AUTH_TOKEN_MAX);\n    \
         printf(\"shm_constants %u %u %u %u %u %u %u %u %u %u %u %u\\n\", ML_SHM_MAGIC, ML_SHM_VERSION, \
         ML_SHM_LINE, ML_SHM_REQUEST_SLOT, ML_SHM_RESPONSE_SLOT, ML_SHM_SERVER_COUNTERS_OFFSET, \
         ML_SHM_CLIENT_COUNTERS_OFFSET, ML_SHM_SLOTS_OFFSET, ML_SHM_MAX_CAPACITY, ML_SHM_FDS, ML_SHM_MAPPED, \
         ML_HELLO_FLAG_SHM);\n    \
         printf(\"shm_region_sizes %llu %llu\\n\", (unsigned long long)ml_shm_server_region_size(512), \
         (unsigned long long)ml_shm_client_region_size(1024));\n{depth}    return 0;\n}}\n"
    )
}

/// `ML_STATIC_ASSERT(sizeof(T) == N` and `ML_STATIC_ASSERT(offsetof(T, f) == N` lines of the headers.
fn header_pins() -> BTreeMap<String, usize> {
    let mut header = std::fs::read_to_string(util::repo_root().join("proto/ml_wire.h")).unwrap();
    header += &std::fs::read_to_string(util::repo_root().join("proto/ml_shm.h")).unwrap();
    let mut pins = BTreeMap::new();
    let pin_lines = header
        .lines()
        .filter_map(|l| l.strip_prefix("ML_STATIC_ASSERT("))
        .filter(|l| (l.starts_with("sizeof(") || l.starts_with("offsetof(")) && l.contains(" == "));
    for line in pin_lines {
        let (lhs, n) = line.split_once(" == ").unwrap();
        let n: usize = n.split(',').next().unwrap().trim().parse().unwrap();
        let key = if let Some(ty) = lhs.strip_prefix("sizeof(").and_then(|r| r.strip_suffix(')')) {
            format!("sizeof {ty}")
        } else {
            let inner = lhs.strip_prefix("offsetof(").and_then(|r| r.strip_suffix(')')).unwrap();
            let (ty, f) = inner.split_once(", ").unwrap();
            format!("{ty}.{f}")
        };
        pins.insert(key, n);
    }
    pins
}

#[test]
fn c_and_rust_agree_on_every_size_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("layout.c");
    std::fs::write(&src, c_program()).unwrap();
    let exe = dir.path().join("layout");
    util::compile("c", &[&src], &exe);
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();

    let mut c_layout = BTreeMap::new();
    let mut c_status = BTreeMap::new();
    let mut checked_lines = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("status ") {
            let (code, msg) = rest.split_once(' ').unwrap();
            c_status.insert(code.parse::<u16>().unwrap(), msg.to_string());
        } else if let Some(n) = line.strip_prefix("status_count ") {
            assert_eq!(n.parse::<usize>().unwrap(), Status::COUNT, "ML_STATUS_COUNT");
        } else if let Some(n) = line.strip_prefix("response_warming ") {
            assert_eq!(n.parse::<u16>().unwrap(), tickinfer::wire::RESPONSE_WARMING, "ML_RESPONSE_WARMING");
        } else if let Some(rest) = line.strip_prefix("auth_constants ") {
            use tickinfer::wire::{AUTH_MAGIC, AUTH_TOKEN_MAX, HELLO_FLAG_AUTH};
            let v: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
            assert_eq!(
                v,
                [HELLO_FLAG_AUTH as u64, AUTH_MAGIC as u64, AUTH_TOKEN_MAX as u64],
                "auth constants"
            );
            checked_lines += 1;
        } else if let Some(rest) = line.strip_prefix("shm_constants ") {
            use tickinfer::shm::*;
            let v: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
            let rust = [
                SHM_MAGIC as u64,
                SHM_VERSION as u64,
                LINE as u64,
                REQUEST_SLOT as u64,
                RESPONSE_SLOT as u64,
                SERVER_COUNTERS_OFFSET as u64,
                CLIENT_COUNTERS_OFFSET as u64,
                SLOTS_OFFSET as u64,
                MAX_CAPACITY as u64,
                FDS as u64,
                MAPPED as u64,
                tickinfer::wire::HELLO_FLAG_SHM as u64,
            ];
            assert_eq!(v, rust, "ml_shm.h constants (left) vs src/shm.rs (right)");
            checked_lines += 1;
        } else if let Some(rest) = line.strip_prefix("shm_region_sizes ") {
            let v: Vec<usize> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
            let rust = [tickinfer::shm::server_region_size(512), tickinfer::shm::client_region_size(1024)];
            assert_eq!(v, rust, "ml_shm_server_region_size, ml_shm_client_region_size");
            checked_lines += 1;
        } else if let Some(n) = line.strip_prefix("depth_levels ") {
            assert_eq!(n.parse::<usize>().unwrap(), tickinfer::wire::DEPTH_LEVELS, "ML_DEPTH_LEVELS");
            checked_lines += 1;
        } else if let Some(rest) = line.strip_prefix("depth_index ") {
            let v: Vec<usize> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
            assert_eq!(v[1], tickinfer::wire::depth_index(v[0]), "ML_DEPTH_INDEX({})", v[0]);
            assert_eq!(v[2], tickinfer::wire::depth_features_for(v[0]), "ML_DEPTH_FEATURES_FOR({})", v[0]);
            checked_lines += 1;
        } else if let Some(rest) = line.strip_prefix("set_level ") {
            // The C helper and MlRequest::set_level write the same bits.
            let mut want = tickinfer::wire::MlRequest {
                bid_price: 1_000_000,
                ask_price: 1_000_100,
                ..Default::default()
            };
            want.set_level(3, 999_700, 40, 1_000_400, 70, 10_000);
            let mut v = rest.split(' ').map(|x| x.parse::<u32>().unwrap());
            assert_eq!(v.next().unwrap(), { want.n_features } as u32, "set_level n_features");
            let got: Vec<u32> = v.collect();
            let want: Vec<u32> = (0..8).map(|i| want.feature(i).to_bits()).collect();
            assert_eq!(got, want, "ml_request_set_level vs MlRequest::set_level");
            checked_lines += 1;
        } else {
            let (name, v) = line.rsplit_once(' ').unwrap();
            c_layout.insert(name.to_string(), v.parse::<usize>().unwrap());
        }
    }
    assert_eq!(
        checked_lines,
        1 + (tickinfer::wire::DEPTH_LEVELS - 1) + 1 + 2 + 1,
        "every depth, shm and auth line printed"
    );
    let rust: BTreeMap<String, usize> = rust_table().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(c_layout, rust, "C (left) and Rust (right) layouts differ");
    // The header's own _Static_assert pins name the same fields with the same numbers,
    // so a field added to the header without a pin, or to Rust only, is caught.
    assert_eq!(header_pins(), rust, "header pins (left) and Rust table (right) differ");
    for s in Status::ALL {
        assert_eq!(c_status[&s.code()], s.as_str(), "status {} text", s.code());
    }
}

#[test]
fn header_is_clean_c11_and_cxx20() {
    let dir = tempfile::tempdir().unwrap();
    let body = "#include \"ml_client.h\"\n#include \"ml_capture.h\"\nint main(void) { ml_request_t r; ml_request_init(&r); \
                return (int)(r.frame_end != ML_REQUEST_END) + (ml_status_str(ML_ERR_LAYOUT)[0] == 0); }\n";
    let c = dir.path().join("h.c");
    let cpp = dir.path().join("h.cpp");
    std::fs::write(&c, body).unwrap();
    std::fs::write(&cpp, body).unwrap();
    for (lang, src) in [("c", &c), ("c++", &cpp)] {
        let exe = dir.path().join(format!("h-{lang}"));
        util::compile(lang, &[src], &exe);
        assert!(Command::new(&exe).status().unwrap().success(), "{lang} program failed");
    }
    // The wire header alone needs nothing but <stddef.h>/<stdint.h>.
    let w = dir.path().join("w.c");
    std::fs::write(&w, "#include \"ml_wire.h\"\nint main(void) { return ML_OK; }\n").unwrap();
    util::compile("c", &[&w], &dir.path().join("w"));
}
