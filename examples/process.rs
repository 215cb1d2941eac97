//! One process, started and joined (Python's `Process(target=f, args=(x,)).start(); join()`).
//!
//! Run it with `cargo run --release --example process`.

use mproc::Process;

fn greet(name: String) -> String {
    format!("hello {name}, from process {}", std::process::id())
}

fn main() -> mproc::Result<()> {
    let mut p = Process::spawn(greet, "bob".to_string())?;
    println!(
        "started {} (pid {}), alive: {}",
        p.name(),
        p.pid(),
        p.is_alive()
    );
    let answer = p.join()?; // the function's return value comes back
    println!("{answer}");
    println!("exit code: {:?}", p.exit_status().and_then(|s| s.code()));
    Ok(())
}
