//! The `pgmux` binary: parses the command line and hands off to the library.

use std::io::BufRead;
use std::process::ExitCode;

use clap::Parser;
use pgmux::cli::{Cli, Command};
use pgmux::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own report; the server logs what it does.
    let default_level = match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The serving runtime: `workers` threads (0: see [`auto_workers`]); a
/// single worker runs everything on one thread, as PgBouncer does.
fn serving_runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = match workers {
        0 => auto_workers(),
        n => n,
    };
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        b.worker_threads(workers);
    }
    Ok(b.enable_all().build()?)
}

/// Threads when `workers = 0`: one on a machine of two cores or fewer,
/// else one per core. On two cores the proxy shares the CPU with the
/// database or the application, and the work-stealing scheduler's
/// cross-thread wake-ups (futex, epoll) cost more than a second thread
/// gains: one thread measured 15-20% less CPU per transaction there at the
/// same throughput (docs/benchmarks.md).
fn auto_workers() -> usize {
    match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        n if n <= 2 => 1,
        n => n,
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config, takeover } => {
            let workers = Config::load(&config)
                .map_err(|e| anyhow::anyhow!(e.located(&config)))?
                .pgmux
                .workers;
            serving_runtime(workers)?.block_on(pgmux::app::run(&config, takeover))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { config, user } => {
            runtime()?.block_on(pgmux::admin::client::cli(&config, user.as_deref()))
        }
        Command::Check { config } => match Config::load_with_warnings(&config) {
            Ok((cfg, warnings)) => {
                for w in warnings {
                    eprintln!("warning: {w}");
                }
                print!("{}", cfg.to_masked_toml());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{}", e.located(&config));
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Demo { clients, seconds } => {
            runtime()?.block_on(pgmux::demo::run(
                clients,
                std::time::Duration::from_secs(seconds),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword { user } => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            println!(
                "{}",
                postgres_protocol::password::scram_sha_256(password.as_bytes())
            );
            println!("{}", pgmux::auth::md5::stored_hash(&user, password));
            Ok(ExitCode::SUCCESS)
        }
    }
}
