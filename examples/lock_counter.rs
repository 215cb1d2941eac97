//! Four processes increment one counter under a `Lock` (Python's
//! `with lock: counter += 1` in four `Process`es). The counter is 8 bytes of a file, read and
//! written with `pread`/`pwrite`: without the lock, increments from different processes
//! would be lost.
//!
//! Run it with `cargo run --release --example lock_counter`.

use std::fs::File;
use std::os::unix::fs::FileExt;

use mproc::{Lock, Process};

fn read(f: &File) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 0).expect("read the counter");
    u64::from_ne_bytes(b)
}

/// Python: `def increment(lock, path, n): for _ in range(n): with lock: ...`
fn increment((lock, path, n): (Lock, String, u64)) {
    let f = File::options()
        .read(true)
        .write(true)
        .open(path)
        .expect("counter");
    for _ in 0..n {
        let _held = lock.acquire().expect("lock");
        f.write_all_at(&(read(&f) + 1).to_ne_bytes(), 0)
            .expect("write the counter");
    }
}

fn main() -> mproc::Result<()> {
    let path = std::env::temp_dir().join(format!("mproc-counter-{}", std::process::id()));
    std::fs::write(&path, 0u64.to_ne_bytes()).expect("create the counter");
    let arg = path.to_string_lossy().into_owned();

    let lock = Lock::new()?;
    let mut procs = Vec::new();
    for _ in 0..4 {
        procs.push(Process::spawn(
            increment,
            (lock.clone(), arg.clone(), 10_000),
        )?);
    }
    for p in &mut procs {
        p.join()?;
    }
    let total = read(&File::open(&path).expect("counter"));
    std::fs::remove_file(&path).expect("remove the counter");
    println!("counter = {total}"); // 40000
    assert_eq!(total, 40_000);
    Ok(())
}
