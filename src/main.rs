fn main() -> std::process::ExitCode {
    ckpt_diff::cli::run()
}
