//! Generates the control plane's gRPC stubs (`rpc`): one service described in
//! Rust with `tonic_build::manual` (no .proto file, no protoc), its messages
//! the serde frames of `rpc::frame` in JSON through `rpc::codec::JsonCodec`.

fn main() {
    let session = tonic_build::manual::Method::builder()
        .name("session")
        .route_name("Session")
        .input_type("crate::rpc::frame::TmFrame")
        .output_type("crate::rpc::frame::JmFrame")
        .codec_path("crate::rpc::codec::JsonCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let control = tonic_build::manual::Service::builder()
        .name("Control")
        .package("flowstate.control")
        .comment("A task manager's control connection to the job manager.")
        .method(session)
        .build();
    tonic_build::manual::Builder::new()
        .build_transport(false)
        .compile(&[control]);
    println!("cargo::rerun-if-changed=build.rs");
}
