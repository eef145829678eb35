//! `tickinfer install-client --prefix DIR`: the header-only C/C++ client as a
//! CMake package and a pkg-config file, without CMake — the same files, from
//! the same templates (`cmake/`), as `cmake --install` of the repository:
//!
//! ```text
//! DIR/include/tickinfer/{ml_wire.h, ml_shm.h, ml_client.h, ml_capture.h}
//! DIR/lib/cmake/tickinfer/{tickinferConfig.cmake, tickinferConfigVersion.cmake}
//! DIR/lib/pkgconfig/tickinfer-client.pc
//! ```

use std::path::{Path, PathBuf};

/// The headers, as compiled into this binary (the wire contract it speaks).
const HEADERS: [(&str, &str); 4] = [
    ("ml_wire.h", include_str!("../proto/ml_wire.h")),
    ("ml_shm.h", include_str!("../proto/ml_shm.h")),
    ("ml_client.h", include_str!("../proto/ml_client.h")),
    ("ml_capture.h", include_str!("../proto/ml_capture.h")),
];

/// `(path under the prefix, template)`: `@PREFIX@`, `@PACKAGE_VERSION@`, `@WIRE_VERSION@`
/// and `@SHM_VERSION@` are filled in, as CMake's `configure_file(@ONLY)` does.
const TEMPLATES: [(&str, &str); 3] = [
    ("lib/cmake/tickinfer/tickinferConfig.cmake", include_str!("../cmake/tickinferConfig.cmake.in")),
    (
        "lib/cmake/tickinfer/tickinferConfigVersion.cmake",
        include_str!("../cmake/tickinferConfigVersion.cmake.in"),
    ),
    ("lib/pkgconfig/tickinfer-client.pc", include_str!("../cmake/tickinfer-client.pc.in")),
];

/// Write the package under `prefix` (created if missing; existing files replaced).
/// Returns the files written.
pub fn install(prefix: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(prefix).map_err(|e| format!("{}: {e}", prefix.display()))?;
    let prefix = prefix.canonicalize().map_err(|e| format!("{}: {e}", prefix.display()))?;
    let prefix_text = prefix.to_str().ok_or_else(|| format!("{}: not UTF-8", prefix.display()))?;
    let mut written = Vec::new();
    let mut write = |rel: &str, text: &str| -> Result<(), String> {
        let path = prefix.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
        Ok(())
    };
    for (name, text) in HEADERS {
        write(&format!("include/tickinfer/{name}"), text)?;
    }
    for (rel, template) in TEMPLATES {
        let text = template
            .replace("@PREFIX@", prefix_text)
            .replace("@PACKAGE_VERSION@", env!("CARGO_PKG_VERSION"))
            .replace("@WIRE_VERSION@", &crate::wire::PROTOCOL_VERSION.to_string())
            .replace("@SHM_VERSION@", &crate::shm::SHM_VERSION.to_string());
        debug_assert!(!text.contains('@'), "{rel}: a template variable left unfilled");
        write(rel, &text)?;
    }
    Ok(written)
}
