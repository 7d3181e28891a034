//! ilot: one binary, the daemon (`ilot daemon`) and its CLI (every other command).
//! docs/architecture.md is the map of this code.

mod api;
mod backup;
mod catalog;
mod certs;
mod cli;
mod config;
mod daemon;
mod dns;
mod error;
mod events;
mod firewall;
mod guard;
mod http_client;
mod mail;
mod monitor;
mod names;
mod notify;
mod plan;
mod proxy;
mod runtime;
mod state;

fn main() {
    std::process::exit(cli::main());
}
