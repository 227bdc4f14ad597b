//! The fedsync command line: parses, calls the engine, prints. No sync logic lives here.

mod cli;
mod output;
mod resolve;

fn main() {
    std::process::exit(cli::main());
}
