//! GPU execution providers on a machine without a GPU: asking for CUDA or
//! TensorRT must still serve, on CPU, after a loud log line. Runs in the default
//! build (providers not compiled in) and, in CI, with `--features tensorrt`
//! (providers compiled in, but the runtime has no CUDA: registration fails).
mod util;

use std::sync::Mutex;

use tickinfer::engine::{runtime, Engine, EngineOptions, ExecutionProvider};

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        LINES.lock().unwrap().push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

#[test]
fn gpu_providers_fall_back_to_cpu_loudly() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    // The CPU runtime: it has no CUDA/TensorRT provider, exactly like a GPU build on a host without a GPU.
    let cpu_lib = runtime::locate(None, runtime::Flavor::Cpu).unwrap();
    let trt_cache = tempfile::tempdir().unwrap();
    for provider in [
        ExecutionProvider::Cuda { device_id: 0 },
        ExecutionProvider::TensorRt { device_id: 0, engine_cache: Some(trt_cache.path().into()), fp16: true },
    ] {
        LINES.lock().unwrap().clear();
        let opts = EngineOptions {
            provider: provider.clone(),
            ort_lib: Some(cpu_lib.clone()),
            ..util::test_engine_options()
        };
        let mut engine = Engine::load(&util::repo_root().join("models/lobster_direction.toml"), &opts)
            .unwrap_or_else(|e| panic!("{provider:?} did not fall back: {e}"));
        assert_eq!(engine.info().provider, "cpu", "{provider:?}");
        let lines = LINES.lock().unwrap().clone();
        let warn = lines.iter().find(|l| l.contains("FALLING BACK TO CPU"));
        let warn = warn.unwrap_or_else(|| panic!("no fallback warning for {provider:?}: {lines:#?}"));
        assert!(warn.starts_with("WARN") && warn.contains(provider.name()), "{warn}");
        eprintln!("{warn}");
        // And it serves.
        let cases = util::parity_cases("lobster_direction");
        let mut state = engine.new_state(1);
        let out = engine.run_rows(&[cases[0].request], &mut state).unwrap();
        assert!((out[0] - cases[0].output[0]).abs() < 1e-5);
    }
}
