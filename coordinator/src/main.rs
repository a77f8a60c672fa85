//! `circuit-sweep`: find circuits in transformer language models by ablation.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    // Commands that only print die quietly when stdout is closed (`prompts check ... | head`),
    // as Unix tools do. Anything holding a socket keeps SIGPIPE ignored: a peer that hangs up
    // is then an error on that connection, not the silent death of a server.
    #[cfg(unix)]
    if args.command.only_prints() {
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // A forward pass allocates and frees tensors of several MiB each. By default glibc maps
    // such blocks afresh and the kernel zeroes their pages on first touch (page faults took
    // 5-7 % of an edge sweep); keep blocks up to 32 MiB (its maximum) in the heap instead, and
    // let each heap keep up to 64 MiB free before it gives memory back.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: tuning the allocator before any thread starts or anything is allocated in bulk.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
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
