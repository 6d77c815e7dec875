//! SwiGLU's gate with AVX-512: `silu(gate) * up`, 16 values at a time.

use std::arch::x86_64::*;

use super::{Avx512, attention::exp};

impl Avx512 {
    /// `out[i] = silu(gate[i]) * up[i]`, `silu(x) = x / (1 + e^-x)`.
    pub(crate) fn swiglu(self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        // SAFETY: an `Avx512` exists only where its features were detected.
        unsafe { swiglu(gate, up, out) }
    }
}

#[target_feature(enable = "avx512f,avx512dq,fma")]
fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let one = _mm512_set1_ps(1.0);
    for ((gate, up), out) in gate.chunks(16).zip(up.chunks(16)).zip(out.chunks_mut(16)) {
        let mask = (1u32 << gate.len()).wrapping_sub(1) as u16;
        // SAFETY: the mask covers the chunk's values (at most 16) in each slice, which have
        // the same length.
        unsafe {
            let g = _mm512_maskz_loadu_ps(mask, gate.as_ptr());
            let u = _mm512_maskz_loadu_ps(mask, up.as_ptr());
            // Where e^-x overflows to infinity, silu is -0, as it should be.
            let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
            _mm512_mask_storeu_ps(out.as_mut_ptr(), mask, _mm512_mul_ps(silu, u));
        }
    }
}
