//! Compiles the etcd KV protos the rollback anchor speaks (`proto/etcd/kv.proto`) with protox
//! (pure Rust): no system `protoc` is needed. Client code only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/etcd/kv.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().build_server(false).build_client(true).compile_fds(fds)?;
    Ok(())
}
