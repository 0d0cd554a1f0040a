use clap::Parser;

fn main() -> anyhow::Result<()> {
    borscht::cli::Cli::parse().run()
}
