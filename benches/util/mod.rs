//! What the study benches share (`#[path = "util/mod.rs"] mod util;`): whether criterion
//! runs them in full, and pinning to one core.

/// `cargo bench` passes `--bench`; `cargo test --benches` does not: a short pass then.
pub fn full() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Pin the calling thread to the last core found; "core N of M", for the table's title.
pub fn pin_to_last_core() -> String {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if let Some(last) = cores.last() {
        core_affinity::set_for_current(*last);
    }
    format!("core {} of {}", cores.last().map_or(0, |c| c.id), cores.len())
}
