//! `circuit-sweep`: find circuits in transformer language models by ablation.

mod cli;
mod job;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Die quietly when stdout is closed (`circuit-sweep prompts check ... | head`), as Unix
    // tools do, instead of panicking on the write.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = cli::Cli::parse();
    cli::init_logging(&args.log);
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
