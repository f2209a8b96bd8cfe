//! `tollgate`: walks the command line, loads the config, hands over to `server::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of glibc's malloc: a proxy allocates and frees many small, short-lived
/// buffers per request, which glibc serves at several times jemalloc's cost (and pingora's
/// own benchmarks run on jemalloc for its flatter RSS under load).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "An LLM egress gateway: project keys, budgets, policy, usage counting"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground.
    Serve {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Take the listening sockets over from a running instance (graceful binary upgrade).
        #[arg(long, short = 'u')]
        upgrade: bool,
    },
    /// Validate a config file: exit 0 with a summary, or exit 1 with every error and its place.
    Check {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Project keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print a fresh random project key and its sha256 form for the config.
    New,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match cli.command {
        Command::Check { config } => match tollgate::config::load_file(&config) {
            Ok(c) => {
                println!(
                    "{}: OK ({} providers, {} routes, {} prices, {} projects, {} keys)",
                    config.display(),
                    c.providers.len(),
                    c.routes.routes().len(),
                    c.prices.keys().count(),
                    c.projects.len(),
                    c.key_count()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config, upgrade } => match tollgate::config::load_file(&config) {
            Ok(c) => {
                let opts = tollgate::server::RunOptions {
                    config_path: config,
                    upgrade,
                };
                ExitCode::from(tollgate::server::run(c, opts).clamp(0, 255) as u8)
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Key {
            command: KeyCommand::New,
        } => {
            let mut r = [0u8; 20];
            if let Err(e) = getrandom::getrandom(&mut r) {
                eprintln!("no randomness available: {e}");
                return ExitCode::FAILURE;
            }
            let key = tollgate::auth::new_key(&r);
            let digest = tollgate::auth::hex(&tollgate::auth::key_digest(key.as_bytes()));
            println!("key:    {key}");
            println!("config: \"sha256:{digest}\"");
            ExitCode::SUCCESS
        }
    }
}
