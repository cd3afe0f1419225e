fn main() {
    std::process::exit(kvmprov::cli::main());
}
