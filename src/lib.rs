//! The `ckpt-diff` command line as a library: the binary (`src/main.rs`) and the Python
//! module (`crates/ckpt-py`) run the same code, through [`embed`].

// The command line is where output goes: it alone prints (the reports render text).
#[allow(clippy::print_stdout, clippy::print_stderr)]
mod cli;
mod reports;

pub use cli::embed;

/// The binary's `main`: the arguments of the process, Ctrl-C cancelling the running pass.
pub fn main() -> std::process::ExitCode {
    cli::run()
}
