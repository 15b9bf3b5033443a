//! `keel`: one binary, every role. This file only parses arguments and wires crates together.

mod bench_jobs;
mod chat_bench;
mod chat_cmd;
mod cli;
mod dev_cmd;
mod jobs_cmd;
mod limit_cmd;

use clap::Parser;

/// mimalloc instead of the system allocator: the job worker and the bench allocate a few small
/// buffers per job, and glibc's malloc took about 40 % of their CPU (docs/bench/jobs.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keel: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("keel: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
