//! The `ckpt-diff` command: arguments, a view or an operation, a report.

mod cli;
mod reports;

fn main() -> std::process::ExitCode {
    cli::run()
}
