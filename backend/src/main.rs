use clap::Parser;

fn main() -> anyhow::Result<()> {
    borscht::process::configure();
    borscht::cli::Cli::parse().run()
}
