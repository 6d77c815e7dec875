//! Seeded random Qwen2 weights under Hugging Face tensor names, and their llama.cpp names.

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::models::Qwen2Spec;

/// One weight tensor: Hugging Face name, PyTorch shape (`[out, in]` for matrices), row-major data.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// How a tensor is initialised.
#[derive(Clone, Copy)]
enum Init {
    /// Normal with this standard deviation.
    Normal(f32),
    /// `1 + N(0, std)`: RMSNorm gains near one, but not all equal, so that swapped norms show.
    NearOne(f32),
}

/// Every tensor of the checkpoint, drawn from one RNG in a fixed order so a seed always gives
/// the same weights.
///
/// Scales keep activations near unit variance: matrices `N(0, 1/fan_in)` (halved for the
/// residual-writing projections), embeddings `N(0, 1/hidden)` so tied logits have a spread of
/// about one, which makes sampling meaningfully random and greedy decoding free of near-ties.
pub fn random_weights(spec: &Qwen2Spec, vocab_size: usize, seed: u64) -> Vec<NamedTensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let h = spec.hidden_size;
    let q = spec.num_attention_heads * spec.head_dim();
    let kv = spec.num_key_value_heads * spec.head_dim();
    let i = spec.intermediate_size;
    let fan_in = |n: usize| 1.0 / (n as f32).sqrt();

    let mut plan: Vec<(String, Vec<usize>, Init)> = vec![(
        "model.embed_tokens.weight".to_owned(),
        vec![vocab_size, h],
        Init::Normal(fan_in(h)),
    )];
    for layer in 0..spec.num_hidden_layers {
        let p = format!("model.layers.{layer}");
        plan.extend([
            (
                format!("{p}.input_layernorm.weight"),
                vec![h],
                Init::NearOne(0.05),
            ),
            (
                format!("{p}.self_attn.q_proj.weight"),
                vec![q, h],
                Init::Normal(fan_in(h)),
            ),
            (
                format!("{p}.self_attn.q_proj.bias"),
                vec![q],
                Init::Normal(0.02),
            ),
            (
                format!("{p}.self_attn.k_proj.weight"),
                vec![kv, h],
                Init::Normal(fan_in(h)),
            ),
            (
                format!("{p}.self_attn.k_proj.bias"),
                vec![kv],
                Init::Normal(0.02),
            ),
            (
                format!("{p}.self_attn.v_proj.weight"),
                vec![kv, h],
                Init::Normal(fan_in(h)),
            ),
            (
                format!("{p}.self_attn.v_proj.bias"),
                vec![kv],
                Init::Normal(0.02),
            ),
            (
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, q],
                Init::Normal(0.5 * fan_in(q)),
            ),
            (
                format!("{p}.post_attention_layernorm.weight"),
                vec![h],
                Init::NearOne(0.05),
            ),
            (
                format!("{p}.mlp.gate_proj.weight"),
                vec![i, h],
                Init::Normal(fan_in(h)),
            ),
            (
                format!("{p}.mlp.up_proj.weight"),
                vec![i, h],
                Init::Normal(fan_in(h)),
            ),
            (
                format!("{p}.mlp.down_proj.weight"),
                vec![h, i],
                Init::Normal(0.5 * fan_in(i)),
            ),
        ]);
    }
    plan.push(("model.norm.weight".to_owned(), vec![h], Init::NearOne(0.05)));
    if !spec.tie_word_embeddings {
        plan.push((
            "lm_head.weight".to_owned(),
            vec![vocab_size, h],
            Init::Normal(fan_in(h)),
        ));
    }

    plan.into_iter()
        .map(|(name, shape, init)| {
            let len = shape.iter().product();
            let data = match init {
                Init::Normal(std) => normal(&mut rng, len, std, 0.0),
                Init::NearOne(std) => normal(&mut rng, len, std, 1.0),
            };
            NamedTensor { name, shape, data }
        })
        .collect()
}

/// Box-Muller normals; two per pair of uniforms.
fn normal(rng: &mut StdRng, len: usize, std: f32, mean: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        // 1 - u keeps the logarithm's argument in (0, 1].
        let u1: f32 = 1.0 - rng.random::<f32>();
        let u2: f32 = rng.random::<f32>();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f32::consts::TAU * u2;
        out.push(mean + std * radius * angle.cos());
        out.push(mean + std * radius * angle.sin());
    }
    out.truncate(len);
    out
}

/// The llama.cpp (GGUF) name of a Hugging Face Qwen2 tensor name.
pub fn gguf_name(hf_name: &str) -> Option<String> {
    let fixed = match hf_name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_owned());
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let short = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_and_every_name_maps_to_gguf() {
        let spec = Qwen2Spec::tiny();
        let a = random_weights(&spec, 128, 3);
        let b = random_weights(&spec, 128, 3);
        let c = random_weights(&spec, 128, 4);
        assert_eq!(a.len(), 2 + 12 * spec.num_hidden_layers);
        for ((x, y), z) in a.iter().zip(&b).zip(&c) {
            assert_eq!(x.data, y.data);
            assert_ne!(x.data, z.data);
            assert_eq!(x.data.len(), x.shape.iter().product::<usize>());
            assert!(gguf_name(&x.name).is_some(), "{}", x.name);
        }
        assert_eq!(
            gguf_name("model.layers.1.mlp.down_proj.weight").unwrap(),
            "blk.1.ffn_down.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.k_proj.bias").unwrap(),
            "blk.0.attn_k.bias"
        );
    }

    #[test]
    fn normals_have_the_requested_spread() {
        let mut rng = StdRng::seed_from_u64(1);
        let xs = normal(&mut rng, 20_000, 0.5, 1.0);
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / xs.len() as f32;
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.02, "{var}");
    }
}
