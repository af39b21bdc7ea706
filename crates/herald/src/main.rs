//! The `herald` binary: one process that serves the API, runs the workers and schedulers, and
//! carries the operator commands.
#![forbid(unsafe_code)]

mod admin;
mod bench;
mod bench_deliveries;
mod bench_feeds;
mod bench_workflows;
mod cli;
mod config;
mod connections;
mod jobs;
mod serve;
mod sources;
mod workflows;

use clap::Parser;
use cli::{Cli, Command, ConfigCommand, DiagCommand, JobsCommand};
use config::{Config, ConfigError, LogFormat};
use std::process::ExitCode;

/// mimalloc, built without transparent huge pages (`no_thp`): glibc's malloc and free were a fifth
/// of every profile's samples, and mimalloc took 7–26% off the CPU per delivery and per event
/// (`herald bench deliveries`, `herald bench workflows`, interleaved with glibc's). An earlier
/// trial without `no_thp` peaked at 146–153 MB RSS, past the 150 MB budget; with it, `bench
/// deliveries` over both backends peaked at 103 MB, against glibc's 119 MB in the same run.
/// `override` also gives it the C code's `malloc` and `free` (the bundled SQLite's, on the writer's
/// thread), which otherwise still went to glibc; see `.cargo/config.toml` for the rest of that
/// change and the herald README for its figures.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How a command ends badly: a configuration problem (exit 2) or a failure at run time (exit 1).
#[derive(Debug)]
pub enum Exit {
    Config(String),
    Failure(anyhow::Error),
}

impl From<ConfigError> for Exit {
    fn from(e: ConfigError) -> Self {
        Exit::Config(e.0)
    }
}

impl From<anyhow::Error> for Exit {
    fn from(e: anyhow::Error) -> Self {
        Exit::Failure(e)
    }
}

impl From<herald_store::StoreError> for Exit {
    fn from(e: herald_store::StoreError) -> Self {
        if e.is_config() { Exit::Config(e.to_string()) } else { Exit::Failure(e.into()) }
    }
}

impl From<herald_queue::QueueError> for Exit {
    fn from(e: herald_queue::QueueError) -> Self {
        Exit::Failure(e.into())
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    cli.settings.role = match &cli.command {
        Command::Serve { role } => role.clone(),
        _ => std::env::var("HERALD_ROLE").ok(),
    };
    let config = match Config::load(&cli.settings) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli.command, config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Exit::Config(msg)) => {
            eprintln!("herald: configuration error: {msg}");
            ExitCode::from(2)
        }
        Err(Exit::Failure(e)) => {
            eprintln!("herald: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(command: Command, config: Config) -> Result<(), Exit> {
    match command {
        Command::Serve { .. } => serve::serve(config).await,
        Command::Migrate => {
            let db = serve::open_database(&config).await?;
            db.migrate().await?;
            println!("migrations applied to {}", config.database_url);
            db.close().await;
            Ok(())
        }
        Command::Config { command: ConfigCommand::Check } => {
            print!("{}", config.render());
            serve::check(&config).await?;
            println!("# configuration is valid");
            Ok(())
        }
        Command::User { command } => admin::user(command, &config).await,
        Command::Token { command } => admin::token(command, &config).await,
        Command::Secrets { command } => admin::secrets(command, &config).await,
        Command::Connections { command, target } => connections::run(command, target, &config).await,
        Command::Sources { command, target } => sources::run(command, target, &config).await,
        Command::Workflows { command, target } => workflows::run(command, target, &config).await,
        Command::Jobs { command: JobsCommand::Stats } => {
            let db = serve::open_database(&config).await?;
            let depth = herald_queue::Queue::new(db.clone()).depth().await?;
            println!("{}", serde_json::to_string_pretty(&depth).map_err(anyhow::Error::from)?);
            db.close().await;
            Ok(())
        }
        Command::Diag { command: DiagCommand::Ping { url, count } } => {
            let db = serve::open_database(&config).await?;
            db.migrate().await?;
            jobs::enqueue_pings(&db, &url, count).await?;
            println!("enqueued {count} diag.ping jobs");
            db.close().await;
            Ok(())
        }
        Command::Bench { command } => bench::run(command, &config).await,
    }
}
