//! Compiles proto/ with protox (a pure-Rust protobuf compiler, so no protoc is needed),
//! generates the tonic services, and writes two descriptor sets for server reflection:
//! ours, and the closure of Envoy's `external_auth.proto` taken from the envoy-types crate
//! (which ships a full descriptor set but does not export it), so grpcurl can describe and
//! call `envoy.service.auth.v3.Authorization/Check` without proto files.

use std::{
    collections::{BTreeMap, BTreeSet},
    env, fs,
    path::{Path, PathBuf},
};

use prost::Message;
use prost_types::FileDescriptorSet;

const ENVOY_ROOT_FILE: &str = "envoy/service/auth/v3/external_auth.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/casola/auth/v1/token.proto",
        "proto/casola/auth/v1/authorization.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=Cargo.lock");
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("casola_auth_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;

    let envoy = envoy_types_descriptor_set()?;
    fs::write(
        out.join("envoy_ext_authz_descriptor.bin"),
        closure(&envoy, ENVOY_ROOT_FILE)?.encode_to_vec(),
    )?;
    Ok(())
}

/// The envoy-types version in Cargo.lock.
fn locked_version(name: &str) -> Result<String, Box<dyn std::error::Error>> {
    let lock = fs::read_to_string("Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{name}\"")
            && let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return Ok(v.trim_end_matches('"').to_owned());
        }
    }
    Err(format!("{name} not found in Cargo.lock").into())
}

fn envoy_types_descriptor_set() -> Result<FileDescriptorSet, Box<dyn std::error::Error>> {
    let version = locked_version("envoy-types")?;
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let relative = format!("envoy-types-{version}/src/generated/types.bin");
    let mut candidates = vec![PathBuf::from("vendor").join(&relative)];
    if let Ok(registries) = fs::read_dir(cargo_home.join("registry/src")) {
        candidates.extend(registries.flatten().map(|e| e.path().join(&relative)));
    }
    let path = candidates
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| format!("{relative} not found under {}", cargo_home.display()))?;
    Ok(FileDescriptorSet::decode(fs::read(path)?.as_slice())?)
}

/// The file `root` and everything it imports, transitively.
fn closure(
    set: &FileDescriptorSet,
    root: &str,
) -> Result<FileDescriptorSet, Box<dyn std::error::Error>> {
    let by_name: BTreeMap<&str, _> = set.file.iter().map(|f| (f.name(), f)).collect();
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(name) = todo.pop() {
        if seen.insert(name.clone()) {
            let file = by_name
                .get(name.as_str())
                .ok_or_else(|| format!("{name} missing"))?;
            todo.extend(file.dependency.iter().cloned());
        }
    }
    Ok(FileDescriptorSet {
        file: set
            .file
            .iter()
            .filter(|f| seen.contains(f.name()))
            .cloned()
            .collect(),
    })
}
