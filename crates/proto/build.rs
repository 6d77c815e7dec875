//! Compiles proto/ into tonic/prost code with the vendored protoc, and writes the descriptor set
//! that services serve through gRPC reflection.

use std::path::PathBuf;

const DOMAINS: [&str; 6] = [
    "common",
    "llm",
    "safety",
    "asr",
    "diarization",
    "embeddings",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files: Vec<PathBuf> = DOMAINS
        .iter()
        .map(|domain| root.join(domain).join("v1").join(format!("{domain}.proto")))
        .collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("passerelle_descriptor.bin"))
        .compile_with_config(config, &files, &[root])?;
    Ok(())
}
