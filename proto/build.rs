//! Compiles the .proto files with protox (pure Rust): no system `protoc` is needed.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/wallet/gateway/v1/gateway.proto",
        "proto/wallet/enclave/v1/enclave.proto",
        "proto/wallet/storage/v1/storage.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // The encoded descriptor set serves gRPC reflection.
    std::fs::write(out.join("wallet_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    let grpc = env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure().build_server(grpc).build_client(grpc).compile_fds(fds)?;
    Ok(())
}
