//! NeuroShard's gRPC contract. One module per proto package; field numbers are never reused.
//! `FILE_DESCRIPTOR_SET` feeds gRPC reflection in every service.
//!
//! The messages are plain prost types; the tonic clients and servers (`*_client`,
//! `*_server` modules) exist only with the `grpc` feature, so a library that carries wire
//! types without speaking gRPC does not compile a transport.

#![allow(missing_debug_implementations, clippy::derive_partial_eq_without_eq)] // generated code

pub mod aggregator {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/neuroshard.aggregator.v1.rs"));
    }
}

pub mod common {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/neuroshard.common.v1.rs"));
    }
}

pub mod ledger {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/neuroshard.ledger.v1.rs"));
    }
}

pub mod registry {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/neuroshard.registry.v1.rs"));
    }
}

pub mod trainer {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/neuroshard.trainer.v1.rs"));
    }
}

pub mod worker {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/neuroshard.worker.v1.rs"));
    }
}

/// Encoded `FileDescriptorSet` of every NeuroShard proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/neuroshard_descriptor.bin"));
