//! Fuzz the native model loader: any bytes, read as an ONNX model for each of the native
//! families' manifest shapes (a 4-feature ensemble or linear/dense model with its output
//! named `out`, `scores` or `probabilities`; a recurrent LSTM step with h and c of 8), give
//! an evaluator or the reason there is none — never a panic, never an endless graph walk
//! (libFuzzer's timeout catches those). An evaluator that builds runs rows of zeros, NaN,
//! huge values and infinities without a panic. Seeded with the committed fixture models
//! (`fuzz/seeds/model_loader/`).
#![no_main]
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tickinfer::engine::native::NativeModel;
use tickinfer::manifest::Manifest;

/// (manifest, state widths) for each shape tried.
fn manifests() -> &'static [(Manifest, Vec<usize>)] {
    static M: OnceLock<Vec<(Manifest, Vec<usize>)>> = OnceLock::new();
    M.get_or_init(|| {
        let plain = |output: &str, kind: &str| {
            format!(
                "[model]\nname = \"f\"\nversion = 1\nonnx = \"f.onnx\"\nprice_scale = 10000\n[input]\nname = \"x\"\n\
                 features = [\"extra:0\", \"extra:1\", \"extra:2\", \"extra:3\"]\n[output]\nname = \"{output}\"\n{kind}\n"
            )
        };
        let classes = "kind = \"classes\"\nclasses = [\"sell\", \"flat\", \"buy\"]";
        let regression =
            "kind = \"regression\"\ntarget = \"mid_return_bps\"\nflat_threshold = 0.5\nfull_confidence = 3.0";
        let recurrent = "[model]\nname = \"f\"\nversion = 1\nonnx = \"f.onnx\"\nprice_scale = 10000\n[input]\n\
             name = \"x\"\nfeatures = [\"spread_bps\", \"size_imbalance\", \"microprice_offset_bps\", \"log_bid_size\", \
             \"log_ask_size\"]\n[output]\nkind = \"classes\"\nname = \"probabilities\"\nclasses = [\"sell\", \"flat\", \
             \"buy\"]\n[sequence]\nkind = \"recurrent\"\nstate = [{ input = \"h_in\", output = \"h_out\" }, \
             { input = \"c_in\", output = \"c_out\" }]\n";
        let texts = [
            (plain("out", classes), vec![]),
            (plain("out", regression), vec![]),
            (plain("scores", classes), vec![]),
            (plain("scores", regression), vec![]),
            (plain("probabilities", classes), vec![]),
            (recurrent.to_string(), vec![8, 8]),
        ];
        texts
            .into_iter()
            .map(|(t, w)| (Manifest::parse(&t, Path::new("fuzz.toml")).expect("a valid manifest"), w))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    for (manifest, widths) in manifests() {
        let Ok(mut model) = NativeModel::from_bytes(data, manifest, widths) else { continue };
        let _ = model.describe();
        let width = manifest.features.len();
        let mut memory = vec![0f32; widths.iter().sum()];
        let mut out = vec![0f32; manifest.output.width()];
        for v in [0.0f32, -0.0, 1.5, -2.5, f32::NAN, 1e30, f32::INFINITY, f32::NEG_INFINITY] {
            let x = vec![v; width];
            if model.accepts(&x, &memory) {
                model.run(&x, &mut memory, &mut out);
            }
        }
    }
});
