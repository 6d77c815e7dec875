//! The one way Passerelle serves gRPC.
//!
//! [`GrpcServer`] wraps tonic's server with what every model service needs: `grpc.health.v1`
//! (each service starts NOT_SERVING and flips to SERVING once its model is warm), reflection over
//! the Passerelle descriptor set, message size limits, a tracing span per RPC parented on the
//! caller's W3C trace context, and a graceful drain on shutdown. [`status`] holds the helpers that
//! turn domain errors into `tonic::Status`.

mod server;
pub mod status;

pub use server::{GrpcServer, ServeError, ServerConfig};
pub use tonic_health::ServingStatus;
pub use tonic_health::server::HealthReporter;
