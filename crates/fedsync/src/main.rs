//! The fedsync command line: parses, calls the engine, prints. No sync logic lives here.

mod cli;
mod output;

// Scans allocate one path and one entry per file; mimalloc keeps that cheap on large trees.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(cli::main());
}
