//! The `ckpt-diff` command: arguments, a view or an operation, a report (the library
//! `ckpt_diff_cli`, which the Python module runs too).

fn main() -> std::process::ExitCode {
    ckpt_diff_cli::main()
}
