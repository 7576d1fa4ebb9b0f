//! Compiles the .proto files with protox (pure Rust, no protoc) and generates prost messages,
//! the tonic clients/servers when the `grpc` feature is on, and a file descriptor set for gRPC
//! reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "neuroshard/common/v1/common.proto",
        "neuroshard/registry/v1/registry.proto",
        "neuroshard/worker/v1/worker.proto",
        "neuroshard/trainer/v1/trainer.proto",
        "neuroshard/aggregator/v1/aggregator.proto",
        "neuroshard/ledger/v1/ledger.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("neuroshard_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .compile_fds(descriptors)?;
    Ok(())
}
