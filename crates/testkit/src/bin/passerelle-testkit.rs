//! Writes random-weight models for trying Passerelle without downloading one.
//!
//! `passerelle-testkit write-qwen2 --preset tiny --format gguf --dtype q8_0 --seed 1 --out m.gguf`
//! `passerelle-testkit write-qwen2 --preset qwen2.5-0.5b --format gguf --dtype q4_k_m --fill-vocab words --out m.gguf`
//! `passerelle-testkit convert-hf --hf-dir model-dir --dtype q4_k --out m.gguf`

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use passerelle_testkit::{Preset, Qwen2Checkpoint, Qwen2Spec, VocabFill, WeightDtype};

/// Test models in real formats.
#[derive(Debug, Parser)]
#[command(name = "passerelle-testkit", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a random-weight Qwen2 model.
    WriteQwen2(WriteQwen2),
    /// Convert a Hugging Face Llama, Qwen2, Qwen3 or Phi-3 directory to GGUF as llama.cpp's
    /// converter does.
    #[command(alias = "convert-llama")]
    ConvertHf(ConvertHf),
}

#[derive(Debug, clap::Args)]
struct ConvertHf {
    /// The Hugging Face directory (config.json, tokenizer.json, model.safetensors).
    #[arg(long)]
    hf_dir: PathBuf,
    /// Matrix type: f32, f16, bf16, q8_0, q4_k (Q4_K, Q8_0 for short rows) or q4_k_m
    /// (llama.cpp's Q4_K_M mix).
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: WeightDtype,
    /// The GGUF file to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct WriteQwen2 {
    /// Model shape: `tiny` (tests) or `qwen2.5-0.5b` (the real architecture, about 2 GB in f32).
    #[arg(long, default_value = "tiny", value_parser = parse_preset)]
    preset: Preset,
    /// `safetensors` writes a Hugging Face directory; `gguf` writes one llama.cpp file.
    #[arg(long, value_enum, default_value_t = Format::Safetensors)]
    format: Format,
    /// Weight type: f32, f16, bf16 (safetensors and gguf), q8_0, q4_k or q4_k_m (llama.cpp's
    /// Q4_K_M mix) (gguf only).
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: WeightDtype,
    /// Seed of the random weights; the same seed gives the same weights in every format.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Embedding rows beyond the learned vocabulary: `reserved` (`<|reserved_N|>` padding that
    /// decodes to nothing, as real checkpoints pad theirs) or `words` (distinct synthetic words
    /// ` w0`, ` w1`, ..., so that a random model's streams carry text, e.g. to time first tokens).
    #[arg(long, default_value_t = VocabFill::Reserved, value_parser = parse_fill)]
    fill_vocab: VocabFill,
    /// Output directory (safetensors) or file (gguf).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Safetensors,
    Gguf,
}

fn parse_preset(s: &str) -> Result<Preset, String> {
    s.parse()
        .map_err(|e: passerelle_testkit::TestkitError| e.to_string())
}

fn parse_fill(s: &str) -> Result<VocabFill, String> {
    s.parse()
        .map_err(|e: passerelle_testkit::TestkitError| e.to_string())
}

fn parse_dtype(s: &str) -> Result<WeightDtype, String> {
    s.parse()
        .map_err(|e: passerelle_testkit::TestkitError| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let args = match Args::parse().command {
        Command::WriteQwen2(args) => args,
        Command::ConvertHf(args) => {
            passerelle_testkit::models::convert_hf_to_gguf(&args.hf_dir, &args.out, args.dtype)
                .with_context(|| format!("converting {}", args.hf_dir.display()))?;
            println!("wrote {} ({})", args.out.display(), args.dtype);
            return Ok(());
        }
    };
    let spec = Qwen2Spec {
        vocab_fill: args.fill_vocab,
        ..Qwen2Spec::preset(args.preset)
    };
    let checkpoint = Qwen2Checkpoint::new(spec, args.seed).context("building the model")?;
    let written = match args.format {
        Format::Safetensors => checkpoint.write_safetensors(&args.out, args.dtype),
        Format::Gguf => checkpoint.write_gguf(&args.out, args.dtype),
    }
    .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} {} model ({}, seed {}, vocabulary filled with {}) to {}",
        args.preset,
        match args.format {
            Format::Safetensors => "safetensors",
            Format::Gguf => "gguf",
        },
        args.dtype,
        args.seed,
        args.fill_vocab,
        written.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_command_line() {
        let args = Args::try_parse_from([
            "passerelle-testkit",
            "write-qwen2",
            "--preset",
            "qwen2.5-0.5b",
            "--format",
            "gguf",
            "--dtype",
            "q8_0",
            "--seed",
            "7",
            "--out",
            "m.gguf",
        ])
        .unwrap();
        let Command::WriteQwen2(w) = args.command else {
            panic!("not write-qwen2")
        };
        assert_eq!(w.preset, Preset::Qwen2_5_0_5b);
        assert_eq!(w.dtype, WeightDtype::Q8_0);
        assert_eq!(w.seed, 7);
        assert_eq!(w.fill_vocab, VocabFill::Reserved);
        let args = Args::try_parse_from([
            "passerelle-testkit",
            "write-qwen2",
            "--fill-vocab",
            "words",
            "--out",
            "m",
        ])
        .unwrap();
        let Command::WriteQwen2(w) = args.command else {
            panic!("not write-qwen2")
        };
        assert_eq!(w.fill_vocab, VocabFill::Words);
        assert!(
            Args::try_parse_from([
                "passerelle-testkit",
                "write-qwen2",
                "--out",
                "x",
                "--fill-vocab",
                "zeros"
            ])
            .is_err()
        );
        assert!(
            Args::try_parse_from([
                "passerelle-testkit",
                "write-qwen2",
                "--out",
                "x",
                "--dtype",
                "q2"
            ])
            .is_err()
        );
    }
}
