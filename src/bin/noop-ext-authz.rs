//! noop-ext-authz: an Envoy ext_authz server that answers OK to every Check and does no
//! other work. It is the floor of the ext_authz protocol on a machine: `scripts/bench.py`
//! puts it behind the same Envoy as casola-auth and reports casola-auth's throughput as a
//! ratio of this one. Built only with `--features bench`.

use std::net::SocketAddr;

use clap::Parser;
use envoy_types::ext_authz::v3::{
    CheckResponseExt,
    pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse},
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
}

/// Allows every request without reading it.
struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse::with_status(Status::ok(""))))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    eprintln!("noop-ext-authz listening on {}", cli.listen);
    Server::builder()
        .add_service(AuthorizationServer::new(AllowAll))
        .serve_with_shutdown(cli.listen, async {
            // Ends on SIGINT; the bench stops it with SIGTERM, which also ends the process.
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
