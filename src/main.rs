//! The `casola-auth` binary.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = casola_auth::cli::Cli::parse();
    match casola_auth::server::runtime() {
        Ok(runtime) => runtime.block_on(casola_auth::cli::run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
