//! Generates the Rust code for our gRPC API (`proto/integrad/v1`), the Open Inference Protocol
//! (`proto/inference`, which imports Triton's `proto/triton/model_config.proto`, the schema of
//! `config.pbtxt`, for its ModelConfig RPC; package `inference` too) and ONNX's wire format
//! (`proto/onnx/onnx.proto`, used to read and write graphs), plus a descriptor set of the served
//! APIs and their imports, for reflection and for `src/model/triton.rs`, which parses
//! `config.pbtxt`'s text format against it.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    // NOTE: a vendored protoc keeps a fresh machine free of system packages.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("integrad_descriptor.bin"))
        .compile_protos(
            &[
                "proto/integrad/v1/explainer.proto",
                "proto/inference/grpc_service.proto",
            ],
            &["proto"],
        )?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_protos(&["proto/onnx/onnx.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
