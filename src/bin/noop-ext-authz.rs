//! noop-ext-authz: an Envoy ext_authz server that answers OK to every Check and does no
//! other work. It is the floor of the ext_authz protocol on a machine: `scripts/bench.py`
//! puts it behind the same Envoy as casola-auth and reports casola-auth's throughput as a
//! ratio of this one. Built only with `--features bench`.
//!
//! `--answer casola` makes it answer every Check with the content of casola-auth's allow
//! (the four identity headers and the decision id to the upstream, the decision id to the
//! client, the credential headers removed, the identity as dynamic metadata), still without
//! reading the request. Behind the same Envoy it measures what applying such an answer
//! costs Envoy, apart from what computing it costs casola-auth.

use std::{collections::HashMap, net::SocketAddr};

use casola_auth::transport::envoy::{
    CREDENTIAL_HEADERS, DECISION_ID_HEADER, ORG_ID_HEADER, SCOPES_HEADER, TOKEN_ID_HEADER,
    USER_ID_HEADER,
};
use clap::{Parser, ValueEnum};
use envoy_types::{
    ext_authz::v3::{
        CheckResponseExt, OkHttpResponseBuilder,
        pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction},
    },
    pb::google::protobuf::{Struct, Value, value::Kind},
};
use tonic::{Request, Response, Status, transport::Server};

#[derive(Parser)]
#[command(
    name = "noop-ext-authz",
    about = "ext_authz server that allows everything"
)]
struct Cli {
    /// Address to listen on (loopback only: this is a benchmark fixture).
    #[arg(long, default_value = "127.0.0.1:50061")]
    listen: SocketAddr,
    /// What an allow carries.
    #[arg(long, value_enum, default_value_t = Answer::Empty)]
    answer: Answer,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Answer {
    /// OK and nothing else.
    Empty,
    /// OK with the content of casola-auth's allow (fixed values of typical lengths).
    Casola,
}

/// Allows every request without reading it.
struct AllowAll(Answer);

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let mut response = CheckResponse::with_status(Status::ok(""));
        if self.0 == Answer::Casola {
            casola_answer(&mut response);
        }
        Ok(Response::new(response))
    }
}

/// The content of casola-auth's allow (`transport::envoy`, `CheckApi::respond`), built
/// afresh per call as casola-auth builds it, with values of the usual lengths.
fn casola_answer(response: &mut CheckResponse) {
    let identity = [
        (
            TOKEN_ID_HEADER,
            "token_id",
            "0193f5a4-7c1e-7d2a-9b3e-4f6a8c0d2e1b",
        ),
        (ORG_ID_HEADER, "org_id", "org_2x9Kq7LmTa"),
        (USER_ID_HEADER, "user_id", "user_8Hq3Zp1Wc"),
        (SCOPES_HEADER, "scopes", "models:read user:read"),
    ];
    let decision_id = "0193f5a4-7c1f-7b44-8e21-5d3c9a7b6f10";
    let mut ok = OkHttpResponseBuilder::new();
    let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    for (header, _, value) in identity {
        ok.add_header(header, value, overwrite, true);
    }
    ok.add_header(DECISION_ID_HEADER, decision_id, overwrite, true);
    ok.add_response_header(DECISION_ID_HEADER, decision_id, overwrite, false);
    for header in CREDENTIAL_HEADERS.into_iter().chain(["authorization"]) {
        ok.remove_header(header);
    }
    let fields: HashMap<String, Value> = identity
        .into_iter()
        .map(|(_, key, value)| {
            let kind = Some(Kind::StringValue(value.to_owned()));
            (key.to_owned(), Value { kind })
        })
        .collect();
    response
        .set_dynamic_metadata(Some(Struct { fields }))
        .set_http_response(ok);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    eprintln!("noop-ext-authz listening on {}", cli.listen);
    Server::builder()
        .add_service(AuthorizationServer::new(AllowAll(cli.answer)))
        .serve_with_shutdown(cli.listen, async {
            // Ends on SIGINT; the bench stops it with SIGTERM, which also ends the process.
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
