//! Generates the gRPC code from `loadbalancer.proto` with `protoc` (Debian's
//! `protobuf-compiler`, which `scripts/setup.sh` installs).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=loadbalancer.proto");
    tonic_prost_build::configure().compile_protos(&["loadbalancer.proto"], &["."])?;
    Ok(())
}
