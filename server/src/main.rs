//! The `toplog` binary.

fn main() -> std::process::ExitCode {
    toplog_server::main()
}
