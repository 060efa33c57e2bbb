//! Generates a client from the seeds' proto text exactly as SPEC.md gives it
//! (`proto/seed.proto`), not from the project's own `proto/loadbalancer.proto`: a
//! client written against that text must work with the balancer unchanged.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/seed.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/seed.proto"], &["proto"])?;
    Ok(())
}
