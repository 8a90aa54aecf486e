fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/cairn/mesos.proto",
        "proto/cairn/scheduler.proto",
        "proto/cairn/internal.proto",
    ];
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
