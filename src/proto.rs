//! Generated protobuf and gRPC code for `casola.auth.v1`, and the descriptor sets server
//! reflection serves (ours, health, Envoy's ext_authz, `google.rpc` error details).

/// `casola.auth.v1` messages and services.
#[allow(clippy::all, reason = "generated code")]
pub mod casola_auth_v1 {
    tonic::include_proto!("casola.auth.v1");
}

pub use casola_auth_v1::*;

/// Encoded descriptor set of our protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("casola_auth_descriptor");

/// Encoded descriptor set of Envoy's `envoy/service/auth/v3/external_auth.proto` and its
/// imports (vendored in proto/third_party/), for server reflection of
/// `envoy.service.auth.v3.Authorization`.
pub const ENVOY_EXT_AUTHZ_FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("envoy_ext_authz_descriptor");

/// Encoded descriptor set of `google/rpc/error_details.proto` and its imports, so that
/// reflection clients can decode the `google.rpc.BadRequest` details of our errors.
pub const ERROR_DETAILS_FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("error_details_descriptor");

/// The descriptor sets reflection serves: our services, health, Envoy's ext_authz, and the
/// error details our statuses carry. Each set is self-contained, so some files (the
/// well-known types) are in several; tonic-reflection keeps the first copy of a file name and
/// ignores later ones, which is safe because the copies are the same (tested below).
pub const SERVED_DESCRIPTOR_SETS: [&[u8]; 4] = [
    FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    ENVOY_EXT_AUTHZ_FILE_DESCRIPTOR_SET,
    ERROR_DETAILS_FILE_DESCRIPTOR_SET,
];

/// A reflection service builder with [`SERVED_DESCRIPTOR_SETS`] registered; build it once per
/// protocol version (`build_v1`, `build_v1alpha`).
pub fn reflection() -> tonic_reflection::server::Builder<'static> {
    SERVED_DESCRIPTOR_SETS.iter().fold(
        tonic_reflection::server::Builder::configure(),
        |builder, set| builder.register_encoded_file_descriptor_set(set),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::Message;
    use prost_types::{FileDescriptorProto, FileDescriptorSet};

    use super::*;

    fn served_files() -> Vec<FileDescriptorProto> {
        SERVED_DESCRIPTOR_SETS
            .iter()
            .flat_map(|set| {
                FileDescriptorSet::decode(*set)
                    .expect("descriptor set")
                    .file
            })
            .collect()
    }

    /// Fully qualified names of the services and top-level messages of the served files.
    fn served_symbols() -> Vec<String> {
        served_files()
            .iter()
            .flat_map(|file| {
                let names = file.service.iter().map(|s| s.name());
                let names = names.chain(file.message_type.iter().map(|m| m.name()));
                names
                    .map(|name| format!("{}.{name}", file.package()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn served_sets_describe_envoy_check_and_bad_request_details() {
        let symbols = served_symbols();
        for wanted in [
            "envoy.service.auth.v3.Authorization",
            "envoy.service.auth.v3.CheckRequest",
            "google.rpc.BadRequest",
            "google.rpc.Status",
            "casola.auth.v1.TokenService",
            "grpc.health.v1.Health",
        ] {
            assert!(symbols.iter().any(|s| s == wanted), "{wanted} not served");
        }
    }

    #[test]
    fn every_import_of_a_served_file_is_served() {
        let files = served_files();
        for file in &files {
            for import in &file.dependency {
                assert!(
                    files.iter().any(|f| f.name() == import),
                    "{} imports {import}, which is not served",
                    file.name()
                );
            }
        }
    }

    #[test]
    fn a_file_in_several_served_sets_is_the_same_in_each() {
        let mut by_name: BTreeMap<String, FileDescriptorProto> = BTreeMap::new();
        for file in served_files() {
            match by_name.get(file.name()) {
                // Source locations are left out: the same file compiled twice has the same
                // declarations, and reflection clients only need those.
                Some(first) => assert_eq!(
                    without_source_info(first),
                    without_source_info(&file),
                    "{} differs between served sets",
                    file.name()
                ),
                None => {
                    by_name.insert(file.name().to_owned(), file);
                }
            }
        }
    }

    fn without_source_info(file: &FileDescriptorProto) -> FileDescriptorProto {
        FileDescriptorProto {
            source_code_info: None,
            ..file.clone()
        }
    }

    /// Asks a reflection service of one protocol version, over real gRPC, what grpcurl asks:
    /// the service list, the file defining a symbol, then every import by file name.
    macro_rules! reflection_test {
        ($name:ident, $version:ident, $build:ident) => {
            #[tokio::test]
            async fn $name() {
                use tonic_reflection::pb::$version::{
                    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                    server_reflection_request::MessageRequest,
                    server_reflection_response::MessageResponse,
                };

                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let service = reflection().$build().unwrap();
                let server = tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
                );
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let mut client = ServerReflectionClient::new(channel);
                let mut ask = async |request: MessageRequest| {
                    let request = ServerReflectionRequest {
                        host: String::new(),
                        message_request: Some(request),
                    };
                    let mut answers = client
                        .server_reflection_info(tokio_stream::iter([request]))
                        .await
                        .unwrap()
                        .into_inner();
                    answers.message().await.unwrap().unwrap().message_response
                };

                let Some(MessageResponse::ListServicesResponse(list)) =
                    ask(MessageRequest::ListServices(String::new())).await
                else {
                    panic!("no service list");
                };
                assert!(
                    list.service
                        .iter()
                        .any(|s| s.name == "envoy.service.auth.v3.Authorization"),
                    "{list:?}"
                );

                for symbol in [
                    "envoy.service.auth.v3.Authorization",
                    "google.rpc.BadRequest",
                ] {
                    let mut todo = vec![MessageRequest::FileContainingSymbol(symbol.into())];
                    let mut seen: Vec<String> = Vec::new();
                    while let Some(request) = todo.pop() {
                        let asked = format!("{request:?}");
                        let Some(MessageResponse::FileDescriptorResponse(files)) =
                            ask(request).await
                        else {
                            panic!("{symbol}: no file for {asked}");
                        };
                        for encoded in files.file_descriptor_proto {
                            let file = FileDescriptorProto::decode(encoded.as_slice()).unwrap();
                            if seen.iter().any(|s| s == file.name()) {
                                continue;
                            }
                            seen.push(file.name().to_owned());
                            todo.extend(
                                file.dependency
                                    .into_iter()
                                    .filter(|d| !seen.contains(d))
                                    .map(MessageRequest::FileByFilename),
                            );
                        }
                    }
                    assert!(seen.len() > 1, "{symbol}: only {seen:?}");
                }
                server.abort();
            }
        };
    }

    reflection_test!(
        reflection_v1_serves_envoy_check_and_bad_request_with_their_imports,
        v1,
        build_v1
    );
    reflection_test!(
        reflection_v1alpha_serves_envoy_check_and_bad_request_with_their_imports,
        v1alpha,
        build_v1alpha
    );
}
