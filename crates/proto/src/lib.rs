//! The gRPC contract between the gateway and the model services, generated from `proto/`.
//!
//! One module per domain (`common`, `llm`, `safety`, `asr`, `diarization`, `embeddings`), each
//! the `v1` package of that domain. [`FILE_DESCRIPTOR_SET`] feeds gRPC reflection.

#![allow(clippy::all, missing_docs, rust_2018_idioms)]

macro_rules! domain {
    ($name:ident, $package:literal) => {
        pub mod $name {
            pub mod v1 {
                tonic::include_proto!($package);
            }
            pub use v1::*;
        }
    };
}

domain!(common, "passerelle.common.v1");
domain!(llm, "passerelle.llm.v1");
domain!(safety, "passerelle.safety.v1");
domain!(asr, "passerelle.asr.v1");
domain!(diarization, "passerelle.diarization.v1");
domain!(embeddings, "passerelle.embeddings.v1");

/// gRPC metadata keys the services and the gateway agree on, beside the messages.
pub mod metadata {
    /// On an `INVALID_ARGUMENT` status: the request field at fault (`temperature`, `input[3]`),
    /// so the gateway's 400 can name its `param`.
    pub const PARAM: &str = "passerelle-param";
    /// On a retryable status: whole seconds to wait, which the gateway sends as `Retry-After`.
    pub const RETRY_AFTER: &str = "retry-after";
}

/// Encoded `FileDescriptorSet` of every Passerelle proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("passerelle_descriptor");
