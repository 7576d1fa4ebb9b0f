//! NeuroShard's gRPC contract. One module per proto package; field numbers are never reused.
//! `FILE_DESCRIPTOR_SET` feeds gRPC reflection in every service.

#![allow(missing_debug_implementations, clippy::derive_partial_eq_without_eq)] // generated code

pub mod common {
    pub mod v1 {
        tonic::include_proto!("neuroshard.common.v1");
    }
}

pub mod registry {
    pub mod v1 {
        tonic::include_proto!("neuroshard.registry.v1");
    }
}

pub mod worker {
    pub mod v1 {
        tonic::include_proto!("neuroshard.worker.v1");
    }
}

/// Encoded `FileDescriptorSet` of every NeuroShard proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/neuroshard_descriptor.bin"));
