//! The `load_balancer` binary: parses the command line and runs [`load_balancer::app`].

use std::process::ExitCode;

use clap::Parser;
use load_balancer::config::Config;

#[actix_web::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = Config::parse();
    match load_balancer::app::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
