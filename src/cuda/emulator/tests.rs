//! The emulator's own tests, on the kernels of emulator/tests/seeded.cu: each seeded
//! bug (an off-by-one row bound, a missing `__syncthreads`, a racy shared write,
//! divergent barriers, uninitialized and misaligned reads, writes to an input, one
//! block reading another's writes, an output left unwritten) is caught and named, and
//! the same patterns written correctly pass with the right results. Also: the launch
//! is checked against the kernel's signature and launch bounds, the argument structs
//! of params.rs arrive field by field where the kernels read them, and the shim's half
//! precision conversions agree with the `half` crate bit for bit.

use super::super::params::{GroupLastDxArgs, GroupShape, RowBwdArgs};
use super::super::plan::Launch;
use super::Device;
use crate::spec::{Kind, Spec};
use candle_core::Result;
use half::{bf16, f16};
use std::ffi::c_void;

extern "C" {
    fn cn_emu_f32_to_f16(f: f32) -> u16;
    fn cn_emu_f16_to_f32(h: u16) -> f32;
    fn cn_emu_f32_to_bf16(f: f32) -> u16;
    fn cn_emu_bf16_to_f32(h: u16) -> f32;
}

/// An argument of a seeded kernel, which takes plain parameters.
#[derive(Clone, Copy)]
enum KArg {
    Ptr(u64),
    I32(i32),
    F32(f32),
}

impl KArg {
    fn raw(&self) -> (*const c_void, usize) {
        match self {
            KArg::Ptr(p) => ((p as *const u64).cast(), 8),
            KArg::I32(v) => ((v as *const i32).cast(), 4),
            KArg::F32(v) => ((v as *const f32).cast(), 4),
        }
    }
}

fn launch(dev: &mut Device, entry: &str, grid: u32, block: u32, smem: u32, args: Vec<KArg>) -> Result<()> {
    let raw: Vec<_> = args.iter().map(KArg::raw).collect();
    dev.launch_raw(entry, [grid, 1, 1], [block, 1, 1], smem, &raw)
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_ne_bytes()).collect()
}

/// A read-only input holding `v`.
fn input(dev: &mut Device, v: &[f32]) -> u64 {
    let a = dev.alloc(v.len() * 4, 0, false, true, "x").unwrap();
    dev.write(a, &bytes(v)).unwrap();
    a
}

/// An output of `n` floats, not written.
fn output(dev: &mut Device, n: usize) -> u64 {
    dev.alloc(n * 4, 0, false, false, "y").unwrap()
}

/// The launch fails with an error holding every one of `parts`.
fn fails(r: Result<()>, parts: &[&str]) {
    let e = r.expect_err("the seeded bug was not caught").to_string();
    for p in parts {
        assert!(e.contains(p), "expected {p:?} in: {e}");
    }
}

#[test]
fn a_block_sum_with_barriers_and_shuffles_passes() {
    let n = 1000;
    for block in [256, 96, 32] {
        let mut dev = Device::new();
        let x: Vec<f32> = (0..3 * n).map(|i| (i % 17) as f32 - 8.0).collect();
        let (xp, out) = (input(&mut dev, &x), output(&mut dev, 3));
        launch(
            &mut dev,
            "good_block_sum",
            3,
            block,
            0,
            vec![KArg::Ptr(xp), KArg::Ptr(out), KArg::I32(n as i32)],
        )
        .unwrap();
        let got: Vec<f32> = dev.read(out, 3, true).unwrap();
        for (b, g) in got.iter().enumerate() {
            let want: f32 = x[b * n..(b + 1) * n].iter().sum();
            assert_eq!(*g, want, "block {b} with {block} threads");
        }
    }
}

#[test]
fn vector_copies_shuffles_and_dynamic_shared_memory_pass() {
    let mut dev = Device::new();
    let x: Vec<f32> = (0..4096).map(|i| i as f32 * 0.5).collect();
    let (xp, yp) = (input(&mut dev, &x), output(&mut dev, 4096));
    launch(
        &mut dev,
        "good_copy_vec",
        4,
        64,
        0,
        vec![KArg::Ptr(xp), KArg::Ptr(yp), KArg::I32(4096)],
    )
    .unwrap();
    assert_eq!(dev.read::<f32>(yp, 4096, true).unwrap(), x);

    let out = dev.alloc(64 * 6 * 4, 0, false, false, "out").unwrap();
    launch(&mut dev, "good_shuffles", 1, 64, 0, vec![KArg::Ptr(out)]).unwrap();
    let got: Vec<i32> = dev.read(out, 64 * 6, true).unwrap();
    for t in 0..64 {
        let lane = (t % 32) as i32;
        let want = [
            lane ^ 1,
            if lane + 4 < 32 { lane + 4 } else { lane },
            if lane >= 4 { lane - 4 } else { lane },
            7,
            0xaaaa_aaaau32 as i32,
            lane ^ 2,
        ];
        assert_eq!(&got[t * 6..t * 6 + 6], &want, "thread {t}");
    }

    let out = output(&mut dev, 128);
    launch(&mut dev, "good_dynamic_shared", 1, 128, 512, vec![KArg::Ptr(out)]).unwrap();
    let got: Vec<f32> = dev.read(out, 128, true).unwrap();
    assert!(got.iter().enumerate().all(|(i, v)| *v == ((i + 1) % 128) as f32));
}

#[test]
fn an_off_by_one_row_bound_is_out_of_bounds() {
    let mut dev = Device::new();
    let (x, y) = (input(&mut dev, &[1.0; 100]), output(&mut dev, 100));
    let r = launch(
        &mut dev,
        "seeded_row_bound",
        1,
        64,
        0,
        vec![KArg::Ptr(x), KArg::Ptr(y), KArg::I32(100)],
    );
    fails(
        r,
        &[
            "seeded_row_bound",
            "read at offset 400 of `x` (400 bytes): out of bounds",
            "thread (36, 0, 0)",
        ],
    );
}

#[test]
fn a_missing_syncthreads_is_a_race() {
    let mut dev = Device::new();
    let (x, out) = (input(&mut dev, &[1.0; 128]), output(&mut dev, 1));
    // Thread 1 reads warp 1's sum before warp 1 has run: in the emulator's order an
    // uninitialized read, on a GPU whatever the order of the warps gives.
    let r = launch(
        &mut dev,
        "seeded_missing_sync",
        1,
        128,
        0,
        vec![KArg::Ptr(x), KArg::Ptr(out)],
    );
    fails(
        r,
        &[
            "4-byte read of static shared memory",
            "thread (1, 0, 0)",
            "not written by this block",
        ],
    );
    // Each thread reads its neighbour's slot with no barrier after the writes.
    let r = launch(
        &mut dev,
        "seeded_missing_sync_neighbour",
        1,
        64,
        0,
        vec![KArg::Ptr(out)],
    );
    fails(
        r,
        &[
            "race on static shared memory: 4-byte read",
            "thread (0, 0, 0) written since the last __syncthreads",
        ],
    );
}

#[test]
fn a_racy_shared_write_is_a_race() {
    let mut dev = Device::new();
    let (x, out) = (input(&mut dev, &[1.0; 64]), output(&mut dev, 1));
    let r = launch(
        &mut dev,
        "seeded_racy_write",
        1,
        64,
        0,
        vec![KArg::Ptr(x), KArg::Ptr(out)],
    );
    fails(
        r,
        &["race on static shared memory", "write", "thread (0, 0, 0) written"],
    );
}

#[test]
fn divergent_barriers_are_caught() {
    for (kernel, what) in [
        ("seeded_divergent_barrier", "barrier divergence"),
        ("seeded_exit_before_barrier", "exited"),
        ("seeded_divergent_shuffle", "wait at a collective"),
    ] {
        let mut dev = Device::new();
        let out = output(&mut dev, 64);
        fails(
            launch(&mut dev, kernel, 1, 64, 0, vec![KArg::Ptr(out)]),
            &["barrier divergence", what],
        );
    }
}

#[test]
fn uninitialized_reads_are_caught() {
    let mut dev = Device::new();
    let out = output(&mut dev, 32);
    let r = launch(&mut dev, "seeded_uninit_shared", 1, 32, 0, vec![KArg::Ptr(out)]);
    fails(
        r,
        &["static shared memory", "not written by this block (uninitialized)"],
    );
    let scratch = dev.alloc(32 * 4, 0, false, false, "scratch").unwrap();
    let r = launch(
        &mut dev,
        "seeded_uninit_global",
        1,
        32,
        0,
        vec![KArg::Ptr(scratch), KArg::Ptr(out)],
    );
    fails(r, &["of `scratch`", "never written (uninitialized)"]);
}

#[test]
fn a_misaligned_vector_is_caught() {
    let mut dev = Device::new();
    let (x, y) = (input(&mut dev, &[1.0; 256]), output(&mut dev, 32));
    for (kernel, want) in [
        (
            "seeded_misaligned_vector",
            &["16-byte vector read", "not 16-byte aligned"],
        ),
        (
            "seeded_misaligned_vector8",
            &["8-byte vector read", "not 8-byte aligned"],
        ),
    ] {
        let r = launch(&mut dev, kernel, 1, 32, 0, vec![KArg::Ptr(x), KArg::Ptr(y)]);
        fails(r, want);
    }
}

#[test]
fn blocks_cannot_read_each_others_writes() {
    // Block 1 reads what block 0 writes: with the blocks on two workers, it may read
    // first and find the bytes unwritten instead.
    let mut dev = Device::new().blocks_in_order();
    let buf = output(&mut dev, 128);
    let r = launch(&mut dev, "seeded_cross_block", 2, 64, 0, vec![KArg::Ptr(buf)]);
    fails(r, &["block (1, 0, 0)", "block (0, 0, 0) wrote in this launch"]);
}

#[test]
fn writes_to_inputs_and_past_shared_memory_are_caught() {
    let mut dev = Device::new();
    let x = input(&mut dev, &[1.0; 32]);
    fails(
        launch(&mut dev, "seeded_write_input", 1, 32, 0, vec![KArg::Ptr(x)]),
        &["an input of the launch"],
    );
    let out = output(&mut dev, 32);
    let r = launch(
        &mut dev,
        "seeded_dynamic_shared_bound",
        1,
        32,
        128,
        vec![KArg::Ptr(out)],
    );
    fails(
        r,
        &["write at offset 128 of dynamic shared memory, of which the launch has 128 bytes"],
    );
}

#[test]
fn an_output_left_unwritten_is_caught_when_read_back() {
    let mut dev = Device::new();
    let y = output(&mut dev, 100);
    launch(
        &mut dev,
        "seeded_partial_output",
        1,
        32,
        0,
        vec![KArg::Ptr(y), KArg::I32(100)],
    )
    .unwrap();
    let e = dev.read::<f32>(y, 100, true).unwrap_err().to_string();
    assert!(e.contains("200 of the 400 bytes of `y` were never written"), "{e}");
    assert_eq!(dev.read::<f32>(y, 50, true).unwrap(), vec![1.0; 50]);
}

#[test]
fn launches_are_checked_against_the_kernel() {
    let mut dev = Device::new();
    let (x, y) = (input(&mut dev, &[1.0; 64]), output(&mut dev, 64));
    let r = launch(&mut dev, "good_copy_vec", 1, 16, 0, vec![KArg::Ptr(x), KArg::Ptr(y)]);
    fails(r, &["2 arguments given, the kernel takes 3"]);
    let r = launch(
        &mut dev,
        "good_copy_vec",
        1,
        16,
        0,
        vec![KArg::Ptr(x), KArg::F32(0.0), KArg::I32(64)],
    );
    fails(r, &["argument 1 has 4 bytes, the kernel's parameter 8"]);
    let r = launch(
        &mut dev,
        "good_block_sum",
        1,
        512,
        0,
        vec![KArg::Ptr(x), KArg::Ptr(y), KArg::I32(64)],
    );
    fails(r, &["512 threads a block, past the kernel's __launch_bounds__ of 256"]);
    fails(
        launch(&mut dev, "no_such_kernel", 1, 32, 0, vec![]),
        &["no kernel has the entry point no_such_kernel"],
    );
}

/// f16 and bf16 to f32: every value. f32 to f16 and bf16: every midpoint between two
/// neighbours (ties to even) and the floats either side of it, and a sweep of bit
/// patterns; NaN becomes a NaN.
#[test]
fn half_conversions_match_the_half_crate_bit_for_bit() {
    // SAFETY: the four conversions are pure functions of their value argument: no
    // pointers, no state, no precondition.
    let f16_of = |f: f32| unsafe { cn_emu_f32_to_f16(f) };
    // SAFETY: as above.
    let bf16_of = |f: f32| unsafe { cn_emu_f32_to_bf16(f) };
    for h in 0..=u16::MAX {
        let (a, b) = (f16::from_bits(h), bf16::from_bits(h));
        // SAFETY: as above.
        let (ea, eb) = unsafe { (cn_emu_f16_to_f32(h), cn_emu_bf16_to_f32(h)) };
        if a.is_nan() {
            assert!(ea.is_nan());
        } else {
            assert_eq!(ea.to_bits(), a.to_f32().to_bits(), "f16 {h:#06x}");
        }
        if b.is_nan() {
            assert!(eb.is_nan());
        } else {
            assert_eq!(eb.to_bits(), b.to_f32().to_bits(), "bf16 {h:#06x}");
        }
    }
    let check = |f: f32| {
        if f.is_nan() {
            assert!(f16::from_bits(f16_of(f)).is_nan() && bf16::from_bits(bf16_of(f)).is_nan());
            return;
        }
        assert_eq!(
            f16_of(f),
            f16::from_f32(f).to_bits(),
            "f32 {f:e} ({:#010x}) to f16",
            f.to_bits()
        );
        assert_eq!(
            bf16_of(f),
            bf16::from_f32(f).to_bits(),
            "f32 {f:e} ({:#010x}) to bf16",
            f.to_bits()
        );
    };
    for h in 0..0x7bffu16 {
        for (lo, hi) in [
            (f16::from_bits(h).to_f32(), f16::from_bits(h + 1).to_f32()),
            (bf16::from_bits(h).to_f32(), bf16::from_bits(h + 1).to_f32()),
        ] {
            let mid = (lo + hi) / 2.0;
            for f in [
                mid,
                f32::from_bits(mid.to_bits() - 1),
                f32::from_bits(mid.to_bits() + 1),
            ] {
                check(f);
                check(-f);
            }
        }
    }
    let mut bits = 0x9E37_79B9u32;
    for _ in 0..1 << 20 {
        bits = bits.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        check(f32::from_bits(bits));
    }
    for f in [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        65504.0,
        65520.0,
        65519.99,
        f32::MAX,
        f32::MIN_POSITIVE,
    ] {
        check(f);
    }
}

/// The argument structs of params.rs reach the kernels field by field: a kernel that
/// writes back what it received gets every value the launch code set, a nested shape
/// and the fields after it included.
#[test]
fn argument_structs_arrive_as_the_kernels_read_them() {
    let spec = Spec::last_dim(Kind::Layer, &[2, 8], 1e-5);
    let mut dev = Device::new();
    let out = dev.alloc(18 * 8, 0, false, false, "out").unwrap();
    let args = RowBwdArgs {
        x: 0x1111,
        weight: 0x2222,
        dy: 0x3333,
        dx: out,
        partial_dw: 0x5555,
        partial_db: 0x6666,
        rows: 7,
        len: -9,
        eps: 1.5,
    };
    dev.launch(&Launch::new(&spec, "probe_row_bwd_args".into(), (1, 1), 32, 0, args).unwrap())
        .unwrap();
    let got: Vec<u64> = dev.read(out, 8, true).unwrap();
    assert_eq!(
        got,
        [
            0x1111,
            0x2222,
            0x3333,
            0x5555,
            0x6666,
            7,
            -9i64 as u64,
            1.5f32.to_bits() as u64
        ]
    );

    let shape = GroupShape {
        rows: 1,
        len: 2,
        spatial: 3,
        per_group: 4,
        groups: 5,
        channels: 6,
        splits: 7,
        chunk: 8,
    };
    let args = GroupLastDxArgs {
        x: 0xa1,
        weight: 0xa2,
        bias: 0xa3,
        dy: 0xa4,
        moments: 0xa5,
        partial_dw: 0xa6,
        partial_db: 0xa7,
        dx: out,
        shape,
        eps: -0.25,
        flags: 9,
        slices: 10,
    };
    dev.launch(&Launch::new(&spec, "probe_group_last_dx_args".into(), (1, 1), 32, 0, args).unwrap())
        .unwrap();
    let got: Vec<u64> = dev.read(out, 18, true).unwrap();
    let mut want = vec![0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7];
    want.extend(1..=10);
    want.push((-0.25f32).to_bits() as u64);
    assert_eq!(got, want);
}
