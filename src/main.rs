//! `tollgate`: walks the command line and hands each command to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;

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
    /// Try Tollgate offline: the gateway and the bundled mock provider, a project with a tiny
    /// budget and policy rules, and the calls to try. Needs `cargo build --bins` (the mock).
    Demo {
        /// The demo config (default: conf/demo.toml, or the copy built into this binary).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Make the calls (a proxied call, 403s, 402 and the decision records), check each
        /// answer, print them and exit: 0 when every answer was the expected one.
        #[arg(long)]
        run: bool,
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
    let filter = match &cli.command {
        Command::Demo { run, .. } => demo::default_log_filter(*run),
        _ => "info",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter)).init();
    match cli.command {
        Command::Check { config } => match tollgate::check(&config) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config, upgrade } => match tollgate::serve(config, upgrade) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { config, run } => match demo::run(config, run) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("{}", e.trim_end());
                ExitCode::FAILURE
            }
        },
        Command::Key {
            command: KeyCommand::New,
        } => match tollgate::new_key() {
            Ok((key, config)) => {
                println!("key:    {key}");
                println!("config: \"{config}\"");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}
