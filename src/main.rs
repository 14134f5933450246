fn main() -> std::process::ExitCode {
    fyvault::cli::main()
}
