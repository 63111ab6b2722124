fn main() -> std::process::ExitCode {
    peft_host::cli::main()
}
