use clap::{Parser, Subcommand};

mod nab;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replay the NAB corpus through every detector and score it.
    Nab(nab::NabArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Nab(args) => nab::run(args),
    }
}
