fn main() -> std::process::ExitCode {
    kvmprov::cli::main().into()
}
