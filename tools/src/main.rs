//! The `hyphae` binary; everything lives in the library (see its docs).

fn main() -> std::process::ExitCode {
    hyphae_tools::main()
}
