//! The C/C++ client as a package: `cmake --install` of the repository and
//! `tickinfer install-client` each give a prefix that a CMake project finds with
//! `find_package(tickinfer CONFIG REQUIRED)` and `tickinfer::client`, and that
//! `pkg-config --cflags tickinfer-client` describes; the repository also works as
//! `add_subdirectory`. The examples built each way run against the real server.
//! Skipped (with a message) where `cmake` is absent; CI installs it.
mod util;

use std::path::Path;
use std::process::Command;

use util::server::Server;
use util::{repo_root, run_ok};

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Configure and build the consumer project with `defines`, return its build dir.
fn build_consumer(build: &Path, defines: &[String]) -> String {
    let consumer = repo_root().join("tests/cmake/consumer");
    let examples = format!("-DEXAMPLES_DIR={}", repo_root().join("proto/examples").display());
    let mut configure = Command::new("cmake");
    configure.arg("-S").arg(&consumer).arg("-B").arg(build).arg(examples).args(defines);
    let text = run_ok(&mut configure);
    run_ok(Command::new("cmake").arg("--build").arg(build));
    text
}

/// Both examples from `build` answer the real server (the C one over the socket and shm).
fn examples_run(build: &Path, server: &Server) {
    let sock = server.socket.to_str().unwrap();
    for transport in ["socket", "shm"] {
        let out = run_ok(
            Command::new(build.join("client_example")).args([sock, "500", "spin", "4", "0", transport]),
        );
        assert!(out.contains("received=500") && out.contains("mismatched=0"), "{out}");
        assert!(out.contains(&format!("transport={transport}")), "{out}");
    }
    let out = run_ok(Command::new(build.join("client_example_cpp")).args([sock, "500", "16"]));
    assert!(out.contains("received=500") && out.contains("mismatched=0"), "{out}");
}

#[test]
fn find_package_pkg_config_and_add_subdirectory() {
    if !have("cmake") {
        util::skip("CMake package", "cmake is not installed (apt-get install cmake, or pip install cmake)");
        return;
    }
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();

    // 1. cmake --install of the repository (configured with its prefix, so the .pc names it).
    let cmake_prefix = dir.path().join("cmake-prefix");
    let repo_build = dir.path().join("repo-build");
    run_ok(
        Command::new("cmake")
            .arg("-S")
            .arg(repo_root())
            .arg("-B")
            .arg(&repo_build)
            .arg(format!("-DCMAKE_INSTALL_PREFIX={}", cmake_prefix.display())),
    );
    run_ok(Command::new("cmake").arg("--install").arg(&repo_build));

    // 2. tickinfer install-client, no CMake involved.
    let tool_prefix = dir.path().join("tool-prefix");
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_tickinfer")).arg("install-client").arg("--prefix").arg(&tool_prefix),
    );
    assert!(out.contains("tickinfer-client.pc"), "{out}");

    // Both prefixes hold the same headers (the ones in proto/) and the same kind of files.
    for prefix in [&cmake_prefix, &tool_prefix] {
        for h in ["ml_wire.h", "ml_shm.h", "ml_client.h", "ml_capture.h"] {
            assert_eq!(
                std::fs::read(prefix.join("include/tickinfer").join(h)).unwrap(),
                std::fs::read(repo_root().join("proto").join(h)).unwrap(),
                "{h} under {}",
                prefix.display()
            );
        }
    }
    let cmake_cfg =
        std::fs::read_to_string(cmake_prefix.join("lib/cmake/tickinfer/tickinferConfigVersion.cmake"))
            .unwrap();
    let tool_cfg =
        std::fs::read_to_string(tool_prefix.join("lib/cmake/tickinfer/tickinferConfigVersion.cmake"))
            .unwrap();
    assert_eq!(cmake_cfg, tool_cfg, "CMakeLists.txt's project VERSION and the crate version agree");

    for prefix in [&cmake_prefix, &tool_prefix] {
        // find_package through CMAKE_PREFIX_PATH.
        let build = dir.path().join(format!("consumer-{}", prefix.file_name().unwrap().to_str().unwrap()));
        let text = build_consumer(&build, &[format!("-DCMAKE_PREFIX_PATH={}", prefix.display())]);
        assert!(text.contains("version 0.1.0, wire 1"), "{text}");
        examples_run(&build, &server);

        // pkg-config, where present.
        if have("pkg-config") {
            let cflags = run_ok(
                Command::new("pkg-config")
                    .args(["--cflags", "tickinfer-client"])
                    .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")),
            );
            let include = prefix.canonicalize().unwrap().join("include/tickinfer");
            assert_eq!(cflags.trim(), format!("-I{}", include.display()));
            let exe = build.join("client_example_pc");
            run_ok(
                Command::new("cc")
                    .args(["-std=c11", "-O2"])
                    .args(cflags.split_whitespace())
                    .arg(repo_root().join("proto/examples/client_example.c"))
                    .arg("-o")
                    .arg(&exe),
            );
            let out = run_ok(Command::new(&exe).args([server.socket.to_str().unwrap(), "200", "spin", "1"]));
            assert!(out.contains("received=200") && out.contains("mismatched=0"), "{out}");
        } else {
            util::skip("pkg-config half", "pkg-config is not installed");
        }
    }

    // 3. The repository as a subdirectory (what FetchContent does).
    let build = dir.path().join("consumer-subdir");
    let text = build_consumer(&build, &[format!("-DTICKINFER_SOURCE_DIR={}", repo_root().display())]);
    assert!(text.contains("add_subdirectory"), "{text}");
    examples_run(&build, &server);
}
