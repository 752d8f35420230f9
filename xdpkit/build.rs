//! Builds the kernel programs (xdpkit-ebpf) and leaves one object per
//! program in OUT_DIR (`<program>.bpf.o`, one per `[[bin]]` of the eBPF
//! crate), so the library embeds them and a copied `xdpkit` binary works on
//! its own.
//!
//! The eBPF crate needs Debian's rustc (it ships `core` for
//! bpfel-unknown-none) and bpf-linker; `cargo xtask bootstrap` installs both.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_RUSTC: &str = "/usr/bin/rustc";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir
        .parent()
        .expect("xdpkit/ sits in the workspace");
    let ebpf_dir = root.join("xdpkit-ebpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));

    for watched in [
        "xdpkit-ebpf/src",
        "xdpkit-ebpf/Cargo.toml",
        "xdpkit-ebpf/.cargo",
        "xdpkit-common/src",
        "xdpkit-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=XDPKIT_EBPF_DIR");
    let programs = programs(&ebpf_dir.join("Cargo.toml"));

    // Already-built objects can be handed in (e.g. by a packager): a
    // directory with one object per program, named like the programs.
    if let Some(prebuilt) = env::var_os("XDPKIT_EBPF_DIR") {
        for program in &programs {
            copy(
                &Path::new(&prebuilt).join(program),
                &out_dir.join(object_name(program)),
            );
        }
        return;
    }

    for (tool, what) in [
        (BPF_RUSTC, "Debian's rustc-web"),
        ("bpf-linker", "bpf-linker"),
    ] {
        if which(tool).is_none() {
            panic!("{what} ({tool}) is missing: run `cargo xtask bootstrap` (as root) to install the eBPF toolchain");
        }
    }

    let target_dir = root.join("target").join("ebpf");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf_dir)
        .args([
            "build",
            "--profile",
            "bpf",
            "--target",
            "bpfel-unknown-none",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC", BPF_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1");
    // The outer build's settings must not leak into the kernel build
    // (clippy's wrapper, host rustflags, a forced target dir).
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTC",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "CARGO_MAKEFLAGS",
        "CARGO_LLVM_COV",
        "RUSTC_LINKER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("could not run cargo for xdpkit-ebpf");
    assert!(
        status.success(),
        "building xdpkit-ebpf failed ({status}); see the errors above"
    );

    let built = target_dir.join("bpfel-unknown-none").join("bpf");
    for program in &programs {
        copy(&built.join(program), &out_dir.join(object_name(program)));
    }
}

/// The `[[bin]]` names of the eBPF crate: one object per program.
fn programs(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest)
        .unwrap_or_else(|e| panic!("read {}: {e}", manifest.display()));
    let mut in_bin = false;
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let (true, Some(value)) = (in_bin, line.strip_prefix("name")) {
            let name = value.trim_start_matches([' ', '=']).trim_matches('"');
            names.push(name.to_string());
        }
    }
    assert!(!names.is_empty(), "no [[bin]] in {}", manifest.display());
    names
}

fn object_name(program: &str) -> String {
    format!("{program}.bpf.o")
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = Path::new(tool);
    if path.is_absolute() {
        return path.exists().then(|| path.to_path_buf());
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(tool))
        .find(|p| p.exists())
}
