//! Compiles `kernels/*.cu` into fatbins (machine code for each target GPU plus PTX for
//! newer ones) with nvcc, only when the `cuda` feature is on. Without the feature it
//! does nothing and no CUDA toolkit is needed.
//!
//! Variables read:
//! - `NVCC`: the nvcc to use; else `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc`, or
//!   nvcc on `PATH`.
//! - `CUDA_COMPUTE_CAP`: target architectures, one or a comma-separated list (`90` or
//!   `80,86,89,90`); else the GPUs `nvidia-smi` reports; else [`DEFAULT_ARCHS`].
//! - `CANDLE_NORM_NVCC_FLAGS`: extra nvcc flags, space-separated (say `-Xptxas -v`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Ampere (A100, A10/RTX 30), Ada (L4/L40, RTX 40) and Hopper (H100/H200); PTX of the
/// newest is embedded for GPUs after these.
const DEFAULT_ARCHS: [u32; 4] = [80, 86, 89, 90];
const ENV_VARS: [&str; 6] = [
    "NVCC",
    "CUDA_HOME",
    "CUDA_PATH",
    "CUDA_COMPUTE_CAP",
    "CANDLE_NORM_NVCC_FLAGS",
    "PATH",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=kernels");
    for v in ENV_VARS {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let nvcc = find_nvcc().unwrap_or_else(|| {
        fail(
            "nvcc was not found. The `cuda` feature compiles this crate's kernels with nvcc: \
             install a CUDA toolkit (12.x or 13.x; scripts/cuda-toolchain.sh installs a build-only \
             CUDA 13.0 from PyPI) and set NVCC to nvcc's path, or CUDA_HOME (or CUDA_PATH) to the \
             toolkit's root, or put nvcc on PATH.",
        )
    });
    let archs = archs();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let extra: Vec<String> = std::env::var("CANDLE_NORM_NVCC_FLAGS")
        .map(|f| f.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let sources = ["layer_norm", "rms_norm", "group_norm"];
    std::thread::scope(|s| {
        let jobs: Vec<_> = sources
            .iter()
            .map(|name| {
                let (nvcc, archs, out, extra) = (&nvcc, &archs, &out, &extra);
                s.spawn(move || compile(nvcc, name, archs, out, extra))
            })
            .collect();
        for j in jobs {
            j.join().expect("nvcc thread panicked");
        }
    });
}

fn fail(msg: &str) -> ! {
    eprintln!("error: candle-norm: {msg}");
    std::process::exit(1);
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    for root in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(r) = std::env::var_os(root) {
            let p = Path::new(&r).join("bin").join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("nvcc"))
        .find(|p| p.is_file())
}

fn parse_caps(s: &str) -> Vec<u32> {
    s.split([',', ' ', '\n', ';'])
        .filter(|c| !c.trim().is_empty())
        .map(|c| {
            c.trim()
                .replace('.', "")
                .parse()
                .unwrap_or_else(|_| fail(&format!("bad compute capability {c:?}")))
        })
        .collect()
}

fn archs() -> Vec<u32> {
    let mut caps = match std::env::var("CUDA_COMPUTE_CAP") {
        Ok(v) => parse_caps(&v),
        Err(_) => Command::new("nvidia-smi")
            .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| parse_caps(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_default(),
    };
    if caps.is_empty() {
        caps = DEFAULT_ARCHS.to_vec();
    }
    caps.sort_unstable();
    caps.dedup();
    caps
}

fn compile(nvcc: &Path, name: &str, archs: &[u32], out: &Path, extra: &[String]) {
    let src = format!("kernels/{name}.cu");
    let dst = out.join(format!("{name}.fatbin"));
    let mut cmd = Command::new(nvcc);
    cmd.args(["--fatbin", "-O3", "-std=c++17", "-Ikernels", "-o"])
        .arg(&dst)
        .arg(&src);
    for a in archs {
        cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
    }
    let newest = archs.last().expect("at least one architecture");
    cmd.arg(format!("-gencode=arch=compute_{newest},code=compute_{newest}"));
    cmd.args(extra);
    let output = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("could not run {}: {e}", nvcc.display())));
    if !output.status.success() {
        fail(&format!(
            "nvcc failed on {src}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let report = String::from_utf8_lossy(&output.stderr);
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning={name}: {line}");
    }
}
