//! The `cuda` feature's build: every kernel file through nvcc into a fatbin, the Rust
//! list of them (`fatbins.rs`, which `src/cuda/driver.rs` includes), and ptxas's
//! report of every entry (`kernel-resources.tsv`).

use super::{fail, kernel_source};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Ampere (A100, A10/RTX 30), Ada (L4/L40, RTX 40) and Hopper (H100/H200); PTX of the
/// newest is embedded for GPUs after these.
const DEFAULT_ARCHS: [u32; 4] = [80, 86, 89, 90];
const ENV_VARS: [&str; 7] = [
    "NVCC",
    "CUDA_HOME",
    "CUDA_PATH",
    "CANDLE_NORM_CUDA_ARCHS",
    "CUDA_COMPUTE_CAP",
    "CANDLE_NORM_NVCC_FLAGS",
    "PATH",
];

pub(super) fn build(out: &Path, files: &[&str]) {
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
    let extra: Vec<String> = std::env::var("CANDLE_NORM_NVCC_FLAGS")
        .map(|f| f.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let reports: Vec<String> = std::thread::scope(|s| {
        let jobs: Vec<_> = files
            .iter()
            .map(|name| {
                let (nvcc, archs, extra) = (&nvcc, &archs, &extra);
                s.spawn(move || compile(nvcc, name, archs, out, extra))
            })
            .collect();
        jobs.into_iter()
            .map(|j| j.join().expect("nvcc thread panicked"))
            .collect()
    });
    let mut table = String::from("# arch entry registers shared stack spill_stores spill_loads (ptxas -v)\n");
    for r in &reports {
        table += &resources(r);
    }
    write(out, "kernel-resources.tsv", &table);
    let mut list = String::from(
        "/// The fatbin of each kernel file, as build.rs compiled them.\nconst FATBINS: &[(&str, &[u8])] = &[\n",
    );
    for name in files {
        let _ = writeln!(
            list,
            "    ({name:?}, include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{name}.fatbin\"))),"
        );
    }
    write(out, "fatbins.rs", &(list + "];\n"));
}

fn write(out: &Path, name: &str, text: &str) {
    std::fs::write(out.join(name), text).unwrap_or_else(|e| fail(&format!("could not write {name}: {e}")));
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
    let given = std::env::var("CANDLE_NORM_CUDA_ARCHS").or_else(|_| std::env::var("CUDA_COMPUTE_CAP"));
    let mut caps = match given {
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

/// Compiles kernel file `name`; returns ptxas's report.
fn compile(nvcc: &Path, name: &str, archs: &[u32], out: &Path, extra: &[String]) -> String {
    let src = kernel_source(name);
    let dst = out.join(format!("{name}.fatbin"));
    let mut cmd = Command::new(nvcc);
    cmd.args(["--fatbin", "-O3", "-std=c++17", "-Ikernels", "-Xptxas", "-v"])
        .arg(format!("-I{}", out.display()))
        .arg("-o")
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
    let report = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        fail(&format!(
            "nvcc failed on {}:\n{}{report}",
            src.display(),
            String::from_utf8_lossy(&output.stdout)
        ));
    }
    // ptxas's report is printed only when asked for (CANDLE_NORM_NVCC_FLAGS=-Xptxas -v);
    // anything else nvcc says, always.
    let verbose = extra.iter().any(|f| f == "-v" || f == "--verbose");
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        let info = line.starts_with("ptxas info") || line.starts_with("    ");
        if verbose || !info {
            println!("cargo:warning={name}: {line}");
        }
    }
    report
}

/// ptxas's report as lines of `arch entry registers shared stack spill_stores
/// spill_loads`.
fn resources(report: &str) -> String {
    let mut out = String::new();
    let mut entry: Option<(String, String)> = None;
    // The stack frame and spills of the function whose properties come next.
    let mut props_of_entry = false;
    let mut frame = (0u64, 0u64, 0u64);
    let number_before = |line: &str, unit: &str| -> u64 {
        line.find(unit)
            .and_then(|at| line[..at].split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    for line in report.lines() {
        if let Some(rest) = line.strip_prefix("ptxas info    : Compiling entry function '") {
            let mut parts = rest.split("' for '");
            let name = parts.next().unwrap_or_default().to_owned();
            let arch = parts.next().unwrap_or_default().trim_end_matches('\'').to_owned();
            entry = Some((arch, name));
        } else if let Some(f) = line.strip_prefix("ptxas info    : Function properties for ") {
            props_of_entry = entry.as_ref().is_some_and(|(_, name)| name == f.trim());
        } else if line.contains("bytes stack frame") && props_of_entry {
            frame = (
                number_before(line, "bytes stack frame"),
                number_before(line, "bytes spill stores"),
                number_before(line, "bytes spill loads"),
            );
        } else if line.contains("Used") && line.contains("registers") {
            if let Some((arch, name)) = entry.take() {
                let (regs, smem) = (number_before(line, "registers"), number_before(line, "bytes smem"));
                let _ = writeln!(out, "{arch} {name} {regs} {smem} {} {} {}", frame.0, frame.1, frame.2);
            }
        }
    }
    out
}
