//! The `casola-auth` binary.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    casola_auth::cli::run(casola_auth::cli::Cli::parse()).await
}
