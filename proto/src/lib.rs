//! The signerd gRPC API, `signer.v1`, generated from `proto/signer/v1/signer.proto`.
//!
//! This crate only carries generated types and the descriptor set used by server reflection;
//! it must never grow logic of its own.

#![allow(missing_docs, unreachable_pub, clippy::all)]

/// `signer.v1`: the signing service and its messages.
pub mod v1 {
    tonic::include_proto!("signer.v1");
}

/// Encoded `FileDescriptorSet` of `signer.v1`, for `grpc.reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/signer_v1_descriptor.bin"));
