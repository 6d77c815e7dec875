//! SwiGLU's gate, `silu(gate) * up`, in one pass where the CPU has AVX-512 (candle's two
//! element-wise operations otherwise, each a pass and, on large inputs, a hand-off to candle's
//! own thread pool).

use candle_core::{DType, Storage, Tensor};

/// `silu(gate) * up` for tensors of the same shape.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx512) = super::x86::Avx512::detect()
        && let Some(out) = fused(avx512, gate, up)?
    {
        return Ok(out);
    }
    candle_nn::ops::silu(gate)? * up
}

#[cfg(target_arch = "x86_64")]
fn fused(
    avx512: super::x86::Avx512,
    gate: &Tensor,
    up: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    if gate.dtype() != DType::F32 || up.dtype() != DType::F32 || gate.dims() != up.dims() {
        return Ok(None);
    }
    let (gate_storage, gate_layout) = gate.storage_and_layout();
    let (up_storage, up_layout) = up.storage_and_layout();
    let (Storage::Cpu(g), Storage::Cpu(u), Some((g0, g1)), Some((u0, u1))) = (
        &*gate_storage,
        &*up_storage,
        gate_layout.contiguous_offsets(),
        up_layout.contiguous_offsets(),
    ) else {
        return Ok(None);
    };
    let (g, u) = (&g.as_slice::<f32>()?[g0..g1], &u.as_slice::<f32>()?[u0..u1]);
    let mut out = vec![0f32; g.len()];
    avx512.swiglu(g, u, &mut out);
    Ok(Some(Tensor::from_vec(out, gate.dims(), gate.device())?))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::kernels::tests::max_abs_diff;

    #[test]
    fn the_fused_gate_is_candles_silu_times_up() {
        // Values from -100 to 100: e^-x overflows at one end and vanishes at the other.
        let gate = Tensor::randn(0f32, 30.0, (3, 37), &Device::Cpu).unwrap();
        let up = Tensor::randn(0f32, 1.0, (3, 37), &Device::Cpu).unwrap();
        let ours = swiglu(&gate, &up).unwrap();
        let theirs = (candle_nn::ops::silu(&gate).unwrap() * &up).unwrap();
        let diff = max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-4, "{diff}");
        assert!(ours_is_finite(
            &swiglu(&(gate * 10.0).unwrap(), &up).unwrap()
        ));
    }

    fn ours_is_finite(t: &Tensor) -> bool {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    }
}
