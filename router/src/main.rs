//! The `hyphae-router` binary. The daemon is not built yet: rather than pretend to run a node,
//! it says so and exits with an error.

fn main() -> std::process::ExitCode {
    eprintln!(
        "hyphae-router: the node daemon is not implemented yet (see the router issue); \
         only the wire codecs and tests exist in this build"
    );
    std::process::ExitCode::from(2)
}
