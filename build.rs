//! Generates the Rust code for our gRPC API (`proto/integrad/v1`), the Open Inference Protocol
//! (`proto/inference`) and ONNX's wire format (`proto/onnx/onnx.proto`, used to read and write
//! graphs), plus a descriptor set of the served APIs for reflection; and Triton's
//! `proto/triton/model_config.proto` (the schema of `config.pbtxt`, package `inference` like the
//! Open Inference Protocol, so it goes to its own directory), as Rust types and a descriptor set
//! that `src/model/triton.rs` parses the text format with.

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
    let triton = out_dir.join("triton");
    std::fs::create_dir_all(&triton)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .out_dir(&triton)
        .file_descriptor_set_path(triton.join("model_config.bin"))
        .compile_protos(&["proto/triton/model_config.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
