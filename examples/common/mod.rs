//! What both examples share: their command-line entry point, the device choice and a
//! seeded generator. Each example includes this file as its `common` module.
#![allow(dead_code)]

use candle_core::Device;
use clap::Parser;

/// SplitMix64: small, seedable, the same numbers on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

/// Where an example runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

/// The device of `--device`, or a one-line error saying how to get it.
pub fn device(arg: DeviceArg, example: &str) -> Result<Device, String> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda if !cfg!(feature = "cuda") => Err(format!(
            "--device cuda needs a build with the cuda feature: cargo run --release --features cuda --example {example}"
        )),
        DeviceArg::Cuda => Device::new_cuda(0).map_err(|e| format!("no CUDA device: {e}")),
    }
}

/// Parses the arguments and runs `run`; a bad argument or a failure ends the process
/// with a one-line message (exit codes 2 and 1).
pub fn main_with<A: Parser>(run: impl FnOnce(&A) -> Result<(), Box<dyn std::error::Error>>) {
    let args = match A::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{} (see --help)", msg.lines().next().unwrap_or("invalid arguments"));
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("error: {}", e.to_string().lines().next().unwrap_or("failed"));
        std::process::exit(1);
    }
}
