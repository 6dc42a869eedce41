//! Builds this crate's CUDA kernels, only when a feature asks for them; without one it
//! does nothing and needs no compiler.
//!
//! - `cuda`: compiles `kernels/*.cu` into fatbins (machine code for each target GPU plus
//!   PTX for newer ones) with nvcc (`build/nvcc.rs`), and writes ptxas's report of every
//!   entry's registers, shared memory and spills to `$OUT_DIR/kernel-resources.tsv`.
//! - `cuda-emulator`: compiles the same kernel files with the host C++ compiler against
//!   the emulator's shim, and the emulator's runtime (`build/emulator.rs`).
//!
//! Both read the kernels' launch constants from `src/cuda/launch.rs`, written out here
//! as the header `launch.h`, the list of kernel files from the same file, and the
//! kernels' argument structs from `src/cuda/params.rs`, written out as `params.h`.
//!
//! Variables read (`cuda`):
//! - `NVCC`: the nvcc to use; else `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc`, or
//!   nvcc on `PATH`.
//! - `CANDLE_NORM_CUDA_ARCHS`, else `CUDA_COMPUTE_CAP` (which candle's own kernels
//!   read too): target architectures, one or a comma-separated list (`90` or
//!   `80,86,89,90`); else the GPUs `nvidia-smi` reports; else 80, 86, 89 and 90.
//! - `CANDLE_NORM_NVCC_FLAGS`: extra nvcc flags, space-separated (`-Xptxas -v` also
//!   prints ptxas's report as build warnings).

use std::path::{Path, PathBuf};

/// Declares the constants of `src/cuda/launch.rs` as a table for [`launch_header`]
/// (the crate declares the same list as Rust constants).
macro_rules! launch_constants {
    ($($(#[doc = $doc:literal])* $name:ident: $ty:ty = $value:expr;)*) => {
        /// (doc lines, name, value) of each launch constant.
        pub(crate) const CONSTANTS: &[(&[&str], &str, i64)] = &[$((&[$($doc),*], stringify!($name), $value as i64)),*];
    };
}

#[path = "src/cuda/launch.rs"]
mod launch;

/// Declares the structs of `src/cuda/params.rs` as Rust does (for their layout), and
/// [`params::header`], which writes them for the kernels with their layout asserted,
/// and for each a macro of the entry parameters its fields are passed as.
macro_rules! kernel_params {
    ($($(#[doc = $doc:literal])* struct $name:ident { $($(#[doc = $fdoc:literal])* $field:ident: $ty:ident,)* })*) => {
        $(
            #[repr(C)]
            #[allow(dead_code)]
            pub(crate) struct $name { $($field: $ty,)* }
        )*

        /// The kernels' header of argument structs, each followed by assertions that
        /// its size and every field's offset are the ones Rust gives them.
        pub(crate) fn header() -> String {
            let mut h = String::new();
            $(
                let docs: &[&str] = &[$($doc),*];
                for d in docs {
                    h += &format!("//{d}\n");
                }
                h += &format!("struct {} {{\n", stringify!($name));
                $(
                    let docs: &[&str] = &[$($fdoc),*];
                    for d in docs {
                        h += &format!("    //{d}\n");
                    }
                    h += &format!("    {} {};\n", super::c_type(stringify!($ty)), stringify!($field));
                )*
                h += "};\n";
                h += &format!(
                    "static_assert(sizeof({0}) == {1}, \"{0} is laid out as in src/cuda/params.rs\");\n",
                    stringify!($name),
                    std::mem::size_of::<$name>()
                );
                $(
                    h += &format!(
                        "static_assert(offsetof({0}, {1}) == {2}, \"{0}::{1} is where src/cuda/params.rs puts it\");\n",
                        stringify!($name),
                        stringify!($field),
                        std::mem::offset_of!($name, $field)
                    );
                )*
                let fields: &[(&str, &str)] = &[$((stringify!($field), stringify!($ty))),*];
                let params: Vec<String> = fields.iter().map(|(f, t)| format!("{} {f}", super::param_type(t))).collect();
                let names: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
                let (types, of) = if fields.iter().any(|(_, t)| matches!(*t, "Param" | "OutParam")) {
                    ("T, W", "elements of T and parameters of W")
                } else {
                    ("T", "elements of T")
                };
                h += &format!(
                    "// An entry's parameters for {of}, the fields of {0} in order, and the struct made of them.\n#define CN_PARAMS_{0}({types}) {1}\n#define CN_ARGS_{0} cn::{0}{{{2}}}\n\n",
                    stringify!($name),
                    params.join(", "),
                    names.join(", ")
                );
            )*
            h
        }
    };
}

#[path = "src/cuda/params.rs"]
mod params;

#[cfg(feature = "cuda-emulator")]
#[path = "build/emulator.rs"]
mod emulator;
#[path = "build/nvcc.rs"]
mod nvcc;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    let cuda = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
    let emulated = std::env::var_os("CARGO_FEATURE_CUDA_EMULATOR").is_some();
    if !cuda && !emulated {
        return;
    }
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src/cuda/launch.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=src/cuda/params.rs");
    std::fs::write(out.join("launch.h"), launch_header())
        .unwrap_or_else(|e| fail(&format!("could not write launch.h: {e}")));
    std::fs::write(out.join("params.h"), params_header())
        .unwrap_or_else(|e| fail(&format!("could not write params.h: {e}")));
    if cuda {
        nvcc::build(&out, &launch::KERNEL_FILES);
    }
    #[cfg(feature = "cuda-emulator")]
    if emulated {
        emulator::build(&out, &launch::KERNEL_FILES);
    }
}

/// The kernels' header of launch constants: `constexpr int` in namespace `cn`.
fn launch_header() -> String {
    let mut h = String::from("// Generated by build.rs from src/cuda/launch.rs: edit that file, not this one.\n#pragma once\n\nnamespace cn {\n");
    for (doc, name, value) in launch::CONSTANTS {
        for line in *doc {
            h += &format!("//{line}\n");
        }
        h += &format!("constexpr int {name} = {value};\n");
    }
    h + "}  // namespace cn\n"
}

/// The kernels' header of argument structs, in namespace `cn`.
fn params_header() -> String {
    format!(
        "// Generated by build.rs from src/cuda/params.rs: edit that file, not this one.\n#pragma once\n\n#include <stddef.h>\n\nnamespace cn {{\n\n{}}}  // namespace cn\n",
        params::header()
    )
}

/// The C++ type of a field type of `src/cuda/params.rs`.
fn c_type(rust: &str) -> String {
    match rust {
        "In" | "Param" => "const void*".into(),
        "Out" | "OutParam" => "void*".into(),
        "InF32" => "const float*".into(),
        "OutF32" => "float*".into(),
        "i32" => "int".into(),
        "f32" => "float".into(),
        name => format!("cn::{name}"),
    }
}

/// The C++ type of a field of `src/cuda/params.rs` as an entry's parameter, with the
/// kernel's element type T and parameter type W.
fn param_type(rust: &str) -> String {
    match rust {
        "In" => "const T*".into(),
        "Out" => "T*".into(),
        "Param" => "const W*".into(),
        "OutParam" => "W*".into(),
        other => c_type(other),
    }
}

/// Stops the build with a message.
fn fail(msg: &str) -> ! {
    eprintln!("error: candle-norm: {msg}");
    std::process::exit(1);
}

/// The source of kernel file `name`.
fn kernel_source(name: &str) -> PathBuf {
    Path::new("kernels").join(format!("{name}.cu"))
}
