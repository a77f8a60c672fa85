//! `circuit-sweep`: find circuits in transformer language models by ablation.

mod cli;

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
    // candle's CPU kernels size their thread pool from RAYON_NUM_THREADS: set it before any
    // thread starts.
    if let cli::Command::Worker(w) = &args.command
        && let Some(n) = w.threads()
    {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    cli::init_logging(&args.log);
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, each once: many messages already quote their cause.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}
