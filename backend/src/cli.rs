//! The `borscht` command line.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::server::{self, ServerConfig};

#[derive(Debug, Parser)]
#[command(name = "borscht", version, about = "Recognise a dish and its nutrition from a photo (RUDOLPH)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the web app, the WebSocket protocol (/ws) and the HTTP API.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BORSCHT_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Folder holding the Trunk-built web app (index.html, wasm, static files).
    #[arg(long, env = "BORSCHT_WEB_DIR", default_value = "frontend/dist")]
    pub web_dir: PathBuf,
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        init_tracing();
        match self.command {
            Command::Serve(args) => {
                let runtime = tokio::runtime::Runtime::new()?;
                runtime.block_on(server::serve(ServerConfig { addr: args.addr, web_dir: args.web_dir }))
            }
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BORSCHT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    // A second init (e.g. in tests) is harmless; ignore its error.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
}
