//! The `ckpt-diff` command: arguments, a view or an operation, a report.

// The command line is where output goes: it alone prints (the reports render text).
#[allow(clippy::print_stdout, clippy::print_stderr)]
mod cli;
mod reports;

fn main() -> std::process::ExitCode {
    cli::run()
}
