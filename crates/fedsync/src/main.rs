//! The fedsync command line: parses, calls the engine, prints. No sync logic lives here.

mod cli;
mod output;
mod resolve;
mod service;
mod ui;
mod watch;

fn main() {
    std::process::exit(cli::main());
}
