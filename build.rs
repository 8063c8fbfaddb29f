//! Compiles proto/ with protox (a pure-Rust protobuf compiler, so no protoc is needed).
//! Our protos become tonic services and a descriptor set. The vendored third-party protos in
//! proto/third_party/ (see its README) become descriptor sets only, for server reflection:
//! their Rust types come from envoy-types and tonic-types.

use std::{env, fs, path::PathBuf};

use prost::Message;

/// Third-party descriptor sets: output file name and root proto (under proto/third_party/),
/// each compiled with its imports so that every set is self-contained.
const THIRD_PARTY: [(&str, &str); 2] = [
    (
        "envoy_ext_authz_descriptor.bin",
        "envoy/service/auth/v3/external_auth.proto",
    ),
    (
        "error_details_descriptor.bin",
        "google/rpc/error_details.proto",
    ),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let ours = protox::compile(
        [
            "proto/casola/auth/v1/token.proto",
            "proto/casola/auth/v1/authorization.proto",
        ],
        ["proto"],
    )?;
    fs::write(out.join("casola_auth_descriptor.bin"), ours.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(ours)?;

    for (name, root) in THIRD_PARTY {
        // Encoded by protox itself, which keeps custom options (validate, udpa) that a
        // round trip through prost-types would drop.
        let set = protox::Compiler::new(["proto/third_party"])?
            .include_imports(true)
            .include_source_info(true)
            .open_file(format!("proto/third_party/{root}"))?
            .encode_file_descriptor_set();
        fs::write(out.join(name), set)?;
    }
    Ok(())
}
