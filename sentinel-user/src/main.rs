use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sentinel", version, about = "Linux host sentinel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a recorded series through the detection engine.
    Replay(sentinel::replay::ReplayArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Replay(args) => sentinel::replay::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
