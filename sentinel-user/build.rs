//! Embeds the eBPF object built by `cargo xtask build-ebpf`. Without it (a plain `cargo check`,
//! clippy or unit tests on a machine without bpf-linker) an empty object is embedded and
//! `sentinel run` says what to do instead of loading.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = env::var_os("SENTINEL_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/sentinel-ebpf/sentinel.bpf.o"));
    println!("cargo:rerun-if-env-changed=SENTINEL_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("sentinel.bpf.o");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).expect("write embedded eBPF object"),
        Err(_) => {
            println!(
                "cargo:warning=eBPF object {} not found: run `cargo xtask build-ebpf`; this build cannot load programs",
                object.display()
            );
            fs::write(&out, []).expect("write empty eBPF object");
        }
    }
}
