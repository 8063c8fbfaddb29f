//! Bytes that are not a valid protobuf message, and strings that are not UTF-8, are the
//! client's fault on every RPC we generate: INVALID_ARGUMENT, never INTERNAL, and counted as
//! client errors in the metrics (issue 10).

use bytes::{Buf, BufMut};
use tonic::{
    Code, Status,
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

use crate::support::{TestServer, http_get};

/// Sends the bytes it is given as the message, returns the answer's bytes: a client that
/// can send anything.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug, Clone, Default)]
struct Raw;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn send(channel: &Channel, path: &'static str, token: Option<&str>, body: &[u8]) -> Status {
    let mut grpc = Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(body.to_vec());
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    match grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
    {
        Ok(_) => panic!("{path}: garbage was accepted"),
        Err(status) => status,
    }
}

/// A varint cut short: no message of any type.
const NOT_PROTOBUF: &[u8] = &[0x08, 0xff];
/// Field 1 as a length-delimited value of two bytes that are not UTF-8.
const NOT_UTF8: &[u8] = &[0x0a, 0x02, 0xff, 0xfe];

const METHODS: [&str; 9] = [
    "/casola.auth.v1.AuthorizationService/Authorize",
    "/casola.auth.v1.AuthorizationService/WhoAmI",
    "/casola.auth.v1.TokenService/CreateToken",
    "/casola.auth.v1.TokenService/GetToken",
    "/casola.auth.v1.TokenService/ListTokens",
    "/casola.auth.v1.TokenService/UpdateToken",
    "/casola.auth.v1.TokenService/RevokeToken",
    "/casola.auth.v1.TokenService/ListScopes",
    "/envoy.service.auth.v3.Authorization/Check",
];

/// Methods whose request's field 1 is a string, where the UTF-8 check applies.
const STRING_FIELD_ONE: [&str; 4] = [
    "/casola.auth.v1.AuthorizationService/Authorize",
    "/casola.auth.v1.TokenService/CreateToken",
    "/casola.auth.v1.TokenService/GetToken",
    "/casola.auth.v1.TokenService/RevokeToken",
];

#[tokio::test]
async fn garbage_bytes_and_bad_utf8_are_invalid_argument_on_every_rpc() {
    let server = TestServer::memory().await;
    let admin = server
        .operator_token("acme", "alice", "admin-full", &["user:write"])
        .await;
    for path in METHODS {
        let status = send(&server.channel, path, Some(&admin), NOT_PROTOBUF).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(
            status.message().contains("not a valid protobuf message"),
            "{path}: {}",
            status.message()
        );
    }
    for path in STRING_FIELD_ONE {
        let status = send(&server.channel, path, Some(&admin), NOT_UTF8).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(
            status.message().contains("UTF-8"),
            "{path}: {}",
            status.message()
        );
    }
    // Authorize needs no caller token: anyone can send this.
    let anonymous = send(&server.channel, METHODS[0], None, NOT_UTF8).await;
    assert_eq!(anonymous.code(), Code::InvalidArgument);

    let metrics = http_get(server.running.admin_addr, "/metrics").await.body;
    let internal: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("casola_auth_requests_total") && l.contains("INTERNAL"))
        .collect();
    assert!(internal.is_empty(), "{internal:?}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("casola_auth_requests_total")
                && l.contains("Authorize")
                && l.contains("INVALID_ARGUMENT")),
        "the garbage is counted as a client error"
    );
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_out_of_range_with_a_clear_message() {
    let server = TestServer::memory().await;
    let status = send(&server.channel, METHODS[0], None, &vec![0u8; 64 * 1024 + 1]).await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("message length too large"),
        "{}",
        status.message()
    );
}
