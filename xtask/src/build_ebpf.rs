//! `cargo xtask build-ebpf [--release]`: builds sentinel-ebpf with the nightly toolchain for
//! bpfel-unknown-none and puts the object where sentinel-user's build script embeds it.
//! On a fresh machine it first installs, once and idempotently, the nightly's `rust-src` and a
//! `bpf-linker` built against the nightly's own LLVM.

use std::{
    env,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, anyhow, bail};

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

const TARGET: &str = "bpfel-unknown-none";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub fn run(opts: &Options) -> Result<()> {
    let root = workspace_root();
    ensure_rust_src()?;
    let linker = ensure_bpf_linker()?;
    // The `sentinel` binary that embeds this object builds containerd's gRPC client, whose
    // build script runs `protoc`: install it now, so the README's next command just works.
    crate::packages::ensure(&["protobuf-compiler"])?;
    let profile = if opts.release { "release" } else { "debug" };
    step(&format!("building sentinel-ebpf ({profile}) for {TARGET}"));
    let mut cmd = nightly_cargo();
    cmd.current_dir(root.join("sentinel-ebpf"))
        .args(["build", "-Z", "build-std=core", "--target", TARGET])
        .env("PATH", path_with(linker.parent().unwrap_or(Path::new("."))));
    if opts.release {
        cmd.arg("--release");
    }
    status(&mut cmd, "building the eBPF object")?;
    let built = root
        .join("sentinel-ebpf/target")
        .join(TARGET)
        .join(profile)
        .join("sentinel");
    let dest_dir = root.join("target/sentinel-ebpf");
    fs::create_dir_all(&dest_dir)?;
    let dest = dest_dir.join("sentinel.bpf.o");
    // Copy only when it changed, so cargo does not rebuild sentinel-user for nothing.
    let bytes = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    if fs::read(&dest).ok().as_deref() != Some(bytes.as_slice()) {
        fs::write(&dest, &bytes)?;
    }
    step(&format!(
        "eBPF object ready: {} ({} bytes); sentinel-user embeds it on its next build",
        dest.display(),
        bytes.len()
    ));
    Ok(())
}

pub fn step(message: &str) {
    eprintln!("xtask: {message}");
}

/// `cargo` of the nightly toolchain, free of the variables the outer (stable) cargo set.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn nightly_rustc(args: &[&str]) -> Result<String> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc"])
        .args(args)
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("running rustup: is rustup installed and on PATH?")?;
    if !out.status.success() {
        bail!(
            "the nightly toolchain is missing or broken ({}); install it with `rustup toolchain install nightly`",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn ensure_rust_src() -> Result<()> {
    let sysroot = PathBuf::from(nightly_rustc(&["--print", "sysroot"])?);
    if sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
    {
        return Ok(());
    }
    step("installing the nightly's rust-src component (needed for -Z build-std=core)");
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .env_remove("RUSTUP_TOOLCHAIN");
    status(&mut cmd, "rustup component add rust-src")
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(paths).unwrap_or_default()
}

fn linker_works(path: &Path) -> bool {
    Command::new(path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Finds a working bpf-linker, or builds one against the nightly's own LLVM: the nightly
/// ships `lib/libLLVM.so.<ver>-rust-<release>`; bpf-linker's build wants an LLVM prefix
/// whose `lib/` holds it as `libLLVM.so`, and finds it there again at run time, so the
/// prefix lives under CARGO_HOME, not in a temporary directory.
fn ensure_bpf_linker() -> Result<PathBuf> {
    let installed = cargo_home().join("bin/bpf-linker");
    if linker_works(&installed) {
        return Ok(installed);
    }
    if let Some(found) = env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .map(|p| p.join("bpf-linker"))
        .find(|p| linker_works(p))
    {
        return Ok(found);
    }
    let verbose = nightly_rustc(&["-vV"])?;
    let llvm_version = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .ok_or_else(|| anyhow!("`rustc +nightly -vV` does not name its LLVM version"))?;
    let major = llvm_version.split('.').next().unwrap_or_default();
    let sysroot = PathBuf::from(nightly_rustc(&["--print", "sysroot"])?);
    let lib = fs::read_dir(sysroot.join("lib"))?
        .flatten()
        .map(|e| e.file_name())
        .find(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        .ok_or_else(|| {
            anyhow!(
                "no libLLVM.so.* in {}/lib: the nightly does not ship its LLVM",
                sysroot.display()
            )
        })?;
    let prefix = cargo_home()
        .join("sentinel-llvm")
        .join(lib.to_string_lossy().trim_start_matches("libLLVM.so."));
    fs::create_dir_all(prefix.join("lib"))?;
    for name in [OsStr::new("libLLVM.so"), lib.as_os_str()] {
        let link = prefix.join("lib").join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&lib), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    step(&format!(
        "installing bpf-linker against the nightly's LLVM {llvm_version} (prefix {}); this takes about a minute, once",
        prefix.display()
    ));
    let mut cmd = Command::new(cargo());
    cmd.args([
        "install",
        "bpf-linker",
        "--no-default-features",
        "--features",
        &format!("llvm-{major}"),
    ])
    .env("LLVM_PREFIX", &prefix)
    .env_remove("CARGO_TARGET_DIR");
    status(&mut cmd, "cargo install bpf-linker")?;
    if !linker_works(&installed) {
        bail!(
            "bpf-linker was installed at {} but does not run",
            installed.display()
        );
    }
    Ok(installed)
}

pub fn status(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
