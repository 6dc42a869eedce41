//! Blocks of f16/bf16 converted to and from f32, with the instructions of the level in
//! use (`super::simd`): on x86-64, F16C or AVX-512 for f16, AVX2 integer rounding or
//! AVX-512 BF16's `vcvtneps2bf16` for bf16; portable code elsewhere and for the last
//! few elements of a block. Rounding is to nearest, ties to even, everywhere; a NaN
//! stays a quiet NaN.
//!
//! Every conversion writes each element of its destination once, into memory that need
//! not be initialized: a buffer's or an output's spare capacity is filled without being
//! zeroed first, and an output is rounded into straight from the block it comes from.

#[cfg(target_arch = "x86_64")]
use super::simd::{cpu_level, CpuLevel};
use half::{bf16, f16};
use std::mem::MaybeUninit;

/// The 16-bit floats, each a `repr(transparent)` u16.
trait Half {}
impl Half for f16 {}
impl Half for bf16 {}

/// The bits of a destination of f16 or bf16 elements.
#[inline(always)]
fn bits_of<H: Half>(dst: &mut [MaybeUninit<H>]) -> &mut [MaybeUninit<u16>] {
    // SAFETY: f16 and bf16 (the only `Half` types) are `repr(transparent)` over u16, so
    // MaybeUninit of either has u16's size and alignment; the slice keeps its length
    // and its exclusive borrow.
    unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast(), dst.len()) }
}

/// bf16 to f32 is exact: the bits move up by 16. Written on the bits so that it
/// vectorizes at every level.
#[inline(always)]
pub(super) fn bf16_widened(v: bf16) -> f32 {
    f32::from_bits(u32::from(v.to_bits()) << 16)
}

#[inline(always)]
pub(super) fn bf16_to_f32(src: &[bf16], dst: &mut [MaybeUninit<f32>]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(bf16_widened(s));
    }
}

#[inline(always)]
pub(super) fn f32_to_bf16(src: &[f32], dst: &mut [MaybeUninit<bf16>]) {
    let bits = bits_of(dst);
    #[cfg(target_arch = "x86_64")]
    match cpu_level() {
        // SAFETY: the level was detected (see simd::cpu_level), so the CPU has AVX-512 BF16.
        CpuLevel::Avx512Bf16 => return unsafe { x86::f32_to_bf16_avx512(src, bits) },
        // SAFETY: as above, the CPU has AVX2.
        CpuLevel::Avx2 | CpuLevel::Avx512 => return unsafe { x86::f32_to_bf16_avx2(src, bits) },
        CpuLevel::Baseline => {}
    }
    f32_to_bf16_portable(src, bits)
}

/// Round to nearest even on the bits: add 0x7fff plus the lowest kept bit, then drop
/// the low 16 bits; a NaN keeps its top bits with the quiet bit set.
#[inline(always)]
fn f32_to_bf16_portable(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
    for (d, s) in dst.iter_mut().zip(src) {
        let b = s.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        d.write(if s.is_nan() { ((b >> 16) as u16) | 0x40 } else { rounded });
    }
}

#[inline(always)]
pub(super) fn f16_to_f32(src: &[f16], dst: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    let bits: &[u16] = half::slice::HalfFloatSliceExt::reinterpret_cast(src);
    #[cfg(target_arch = "x86_64")]
    match cpu_level() {
        // SAFETY: the level was detected, so the CPU has AVX-512 F.
        CpuLevel::Avx512 | CpuLevel::Avx512Bf16 => return unsafe { x86::f16_to_f32_avx512(bits, dst) },
        // SAFETY: the level was detected, so the CPU has F16C and AVX.
        CpuLevel::Avx2 => return unsafe { x86::f16_to_f32_f16c(bits, dst) },
        CpuLevel::Baseline => {}
    }
    for (d, s) in dst.iter_mut().zip(src) {
        d.write(s.to_f32());
    }
}

#[inline(always)]
pub(super) fn f32_to_f16(src: &[f32], dst: &mut [MaybeUninit<f16>]) {
    #[cfg(target_arch = "x86_64")]
    match cpu_level() {
        // SAFETY: the level was detected, so the CPU has AVX-512 F.
        CpuLevel::Avx512 | CpuLevel::Avx512Bf16 => return unsafe { x86::f32_to_f16_avx512(src, bits_of(dst)) },
        // SAFETY: the level was detected, so the CPU has F16C and AVX.
        CpuLevel::Avx2 => return unsafe { x86::f32_to_f16_f16c(src, bits_of(dst)) },
        CpuLevel::Baseline => {}
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(f16::from_f32(s));
    }
}

/// Each function converts `min(src.len(), dst.len())` elements: whole vectors with
/// intrinsics, the rest with portable code. Every pointer access below stays inside
/// the first `n` elements of its slice: vector `i` covers `[i·W, i·W + W)` with
/// `i·W + W <= n`.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    #[target_feature(enable = "avx2")]
    pub(super) fn f32_to_bf16_avx2(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
        /// Round-to-nearest-even bf16 bits of 8 floats, in the low half of each lane.
        #[target_feature(enable = "avx2")]
        fn round(v: __m256) -> __m256i {
            let b = _mm256_castps_si256(v);
            let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
            let rounded =
                _mm256_srli_epi32::<16>(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))));
            let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(0x40));
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            _mm256_blendv_epi8(rounded, quiet, nan)
        }
        let n = src.len().min(dst.len());
        let whole = n / 16 * 16;
        for i in (0..whole).step_by(16) {
            // SAFETY: i + 16 <= n, so both loads and the store stay in bounds (see the
            // module's comment); unaligned accesses are used.
            unsafe {
                let a = round(_mm256_loadu_ps(src.as_ptr().add(i)));
                let b = round(_mm256_loadu_ps(src.as_ptr().add(i + 8)));
                // packus interleaves the 128-bit halves of a and b; the permute restores order.
                let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(a, b));
                _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), packed);
            }
        }
        super::f32_to_bf16_portable(&src[whole..n], &mut dst[whole..n]);
    }

    #[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
    pub(super) fn f32_to_bf16_avx512(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
        let n = src.len().min(dst.len());
        let whole = n / 16 * 16;
        for i in (0..whole).step_by(16) {
            // SAFETY: i + 16 <= n (see the module's comment); __m256bh and __m256i are
            // both 32 bytes of plain bits, so the transmute only renames the type.
            unsafe {
                let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i)));
                _mm256_storeu_si256(
                    dst.as_mut_ptr().add(i).cast(),
                    std::mem::transmute::<__m256bh, __m256i>(v),
                );
            }
        }
        super::f32_to_bf16_portable(&src[whole..n], &mut dst[whole..n]);
    }

    #[target_feature(enable = "avx,f16c")]
    pub(super) fn f16_to_f32_f16c(src: &[u16], dst: &mut [MaybeUninit<f32>]) {
        let n = src.len().min(dst.len());
        let whole = n / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= n (see the module's comment).
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
                _mm256_storeu_ps(dst.as_mut_ptr().add(i).cast(), _mm256_cvtph_ps(h));
            }
        }
        tail_to_f32(&src[whole..n], &mut dst[whole..n]);
    }

    #[target_feature(enable = "avx,f16c")]
    pub(super) fn f32_to_f16_f16c(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
        let n = src.len().min(dst.len());
        let whole = n / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= n (see the module's comment).
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
                _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), h);
            }
        }
        tail_to_f16(&src[whole..n], &mut dst[whole..n]);
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn f16_to_f32_avx512(src: &[u16], dst: &mut [MaybeUninit<f32>]) {
        let n = src.len().min(dst.len());
        let whole = n / 16 * 16;
        for i in (0..whole).step_by(16) {
            // SAFETY: i + 16 <= n (see the module's comment).
            unsafe {
                let h = _mm256_loadu_si256(src.as_ptr().add(i).cast());
                _mm512_storeu_ps(dst.as_mut_ptr().add(i).cast(), _mm512_cvtph_ps(h));
            }
        }
        tail_to_f32(&src[whole..n], &mut dst[whole..n]);
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn f32_to_f16_avx512(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
        let n = src.len().min(dst.len());
        let whole = n / 16 * 16;
        for i in (0..whole).step_by(16) {
            // SAFETY: i + 16 <= n (see the module's comment).
            unsafe {
                let v = _mm512_loadu_ps(src.as_ptr().add(i));
                let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), h);
            }
        }
        tail_to_f16(&src[whole..n], &mut dst[whole..n]);
    }

    fn tail_to_f32(src: &[u16], dst: &mut [MaybeUninit<f32>]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            d.write(half::f16::from_bits(s).to_f32());
        }
    }

    fn tail_to_f16(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            d.write(half::f16::from_f32(s).to_bits());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::detected_cpu_level;

    /// f32 values that exercise rounding: ties to even both ways, values next to ties,
    /// the largest finite values (which round to infinity in f16), infinities, NaNs of
    /// both signs with and without payload, zeros, subnormals of f32 and of f16, and a
    /// sweep of bit patterns; 1037 of them, so every vector width leaves a tail.
    fn samples() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            1.0,
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x3f80_8001),
            f32::from_bits(0x3f80_7fff),
            f32::MAX,
            f32::MIN,
            65504.0,
            65520.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffc0_1234),
            f32::MIN_POSITIVE,
            6.0e-8,
            3.0e-8,
            1.0e-5,
        ];
        let mut bits = 0x9e37_79b9u32;
        while v.len() < 1037 {
            bits = bits.wrapping_mul(0x0101_0101).wrapping_add(0x7f4a_7c15);
            v.push(f32::from_bits(bits));
        }
        v
    }

    /// A conversion of one level against `half`'s scalar conversion, bit for bit (NaNs
    /// compared as NaNs: only their being NaN is specified).
    fn check<T: Copy + PartialEq + std::fmt::Debug>(level: &str, got: &[T], want: &[T], is_nan: impl Fn(T) -> bool) {
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                g == w || (is_nan(g) && is_nan(w)),
                "{level}: element {i}: {g:?} != {w:?}"
            );
        }
    }

    /// What `convert` writes into `n` elements, which start initialized to the default
    /// value.
    fn converted<U: Copy + Default>(n: usize, convert: impl FnOnce(&mut [MaybeUninit<U>])) -> Vec<U> {
        let mut v = vec![MaybeUninit::new(U::default()); n];
        convert(&mut v);
        // SAFETY: every element was initialized when the vector was made, and the
        // conversions write only initialized values.
        v.into_iter().map(|m| unsafe { m.assume_init() }).collect()
    }

    #[test]
    fn every_detected_level_rounds_like_the_portable_code() {
        let src = samples();
        let n = src.len();
        let want_bf16: Vec<bf16> = src.iter().map(|&v| bf16::from_f32(v)).collect();
        // half's const conversions are software: the intrinsics are checked against them.
        let want_f16: Vec<f16> = src.iter().map(|&v| f16::from_f32_const(v)).collect();
        let portable = converted(n, |d| f32_to_bf16_portable(&src, d));
        check(
            "portable bf16",
            &portable,
            &want_bf16.iter().map(|b| b.to_bits()).collect::<Vec<_>>(),
            |b| bf16::from_bits(b).is_nan(),
        );
        let back: Vec<f32> = converted(n, |d| bf16_to_f32(&want_bf16, d));
        assert!(back
            .iter()
            .zip(&want_bf16)
            .all(|(a, b)| a.to_bits() == b.to_f32().to_bits() || a.is_nan()));
        let level = detected_cpu_level();
        println!("detected {level:?}");
        #[cfg(target_arch = "x86_64")]
        {
            let hbits: Vec<u16> = want_f16.iter().map(|v| v.to_bits()).collect();
            let want_back: Vec<f32> = want_f16.iter().map(|v| v.to_f32_const()).collect();
            let nan16 = |v: u16| f16::from_bits(v).is_nan();
            let nan32 = |v: f32| v.is_nan();
            if level >= CpuLevel::Avx2 {
                // SAFETY: the CPU has AVX2, AVX and F16C (detected above).
                let b = converted(n, |d| unsafe { x86::f32_to_bf16_avx2(&src, d) });
                check("avx2 bf16", &b, &portable, |v| bf16::from_bits(v).is_nan());
                // SAFETY: as above.
                let h = converted(n, |d| unsafe { x86::f32_to_f16_f16c(&src, d) });
                check("f16c f16", &h, &hbits, nan16);
                // SAFETY: as above.
                let f = converted(n, |d| unsafe { x86::f16_to_f32_f16c(&hbits, d) });
                check("f16c f32", &f, &want_back, nan32);
            }
            if level >= CpuLevel::Avx512 {
                // SAFETY: the CPU has AVX-512 F (detected above).
                let h = converted(n, |d| unsafe { x86::f32_to_f16_avx512(&src, d) });
                check("avx512 f16", &h, &hbits, nan16);
                // SAFETY: as above.
                let f = converted(n, |d| unsafe { x86::f16_to_f32_avx512(&hbits, d) });
                check("avx512 f32", &f, &want_back, nan32);
            }
            if level >= CpuLevel::Avx512Bf16 {
                // vcvtneps2bf16 flushes subnormals, so those are left out here.
                let normal: Vec<f32> = src.iter().map(|&v| if v.is_subnormal() { 0.5 } else { v }).collect();
                let want = converted(n, |d| f32_to_bf16_portable(&normal, d));
                // SAFETY: the CPU has AVX-512 BF16 (detected above).
                let b = converted(n, |d| unsafe { x86::f32_to_bf16_avx512(&normal, d) });
                check("avx512-bf16 bf16", &b, &want, |v| bf16::from_bits(v).is_nan());
            }
        }
    }
}
