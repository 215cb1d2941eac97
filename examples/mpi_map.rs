//! The same `Pool` methods over the ranks of an MPI job; tasks that abort, segfault or
//! panic fail alone.
//!
//! ```text
//! cargo build --release --features mpi --example mpi_map
//! mpirun -n 3 target/release/examples/mpi_map
//! ```
//! Rank 0 runs `main`; ranks 1 and 2 serve tasks in their own local worker processes.

fn square(x: u64) -> u64 {
    x * x
}

/// Which rank, host and network namespace ran the task.
fn whereami(_: ()) -> String {
    let rank = std::env::var("OMPI_COMM_WORLD_RANK").unwrap_or_else(|_| "?".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let net = std::fs::read_link("/proc/self/ns/net").unwrap_or_default();
    format!("rank {rank} on {} ({})", host.trim(), net.display())
}

fn reverse(mut v: Vec<u8>) -> Vec<u8> {
    v.reverse();
    v
}

fn abort_now(_: ()) -> u64 {
    std::process::abort()
}

/// Dies by SIGSEGV, as a task with a memory fault would (sent by `kill`: no unsafe needed).
fn segfault(_: ()) -> u64 {
    let me = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-SEGV", &me])
        .status();
    std::thread::sleep(std::time::Duration::from_secs(60));
    0
}

/// Appends `x` to the log at `path` (one `write`, `O_APPEND`), then aborts if `x` is 3.
fn abort_at_3_logged((path, x): (String, u64)) -> u64 {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .expect("the log opens");
    f.write_all(format!("{x}\n").as_bytes()).expect("logged");
    if x == 3 {
        std::process::abort();
    }
    x
}

fn fail(msg: String) -> u64 {
    panic!("{msg}")
}

fn clamp(x: i64, lo: i64, hi: i64) -> i64 {
    x.clamp(lo, hi)
}

/// A worker state built once per local worker process of a serving rank.
fn offset(base: u64) -> u64 {
    base
}

fn add_offset(state: &mut u64, x: u64) -> u64 {
    *state + x
}

fn greet(_: ()) {}

fn main() -> mproc::Result<()> {
    // What the MPI flavor does not carry to its ranks is refused, before MPI starts.
    let refused = mproc::Pool::builder().initializer(greet, ()).mpi().build();
    let kind = refused.map(|_| ()).unwrap_err().kind();
    assert_eq!(kind, mproc::ErrorKind::Unsupported);

    // The local pool's builder, switched to MPI: two worker processes on every serving rank.
    let pool: mproc::Pool = mproc::Pool::builder()
        .processes(2)
        .worker_state(offset, 1000)
        .mpi()
        .build()?;
    println!(
        "mpi pool: {} serving ranks, {} worker processes",
        pool.ranks(),
        pool.processes()
    );

    let squares = pool.map(square, 0..100u64)?;
    assert_eq!(squares, (0..100u64).map(square).collect::<Vec<_>>());
    println!(
        "map: sum of squares 0..100 = {}",
        squares.iter().sum::<u64>()
    );

    let pending = pool.apply_async(square, 12);
    println!("apply_async: 12^2 = {}", pending.get()?);
    println!("apply: {}", pool.apply(whereami, ())?);
    let places = pool.map_chunked(whereami, vec![(); 2 * pool.processes()], 1)?;
    let mut places: Vec<String> = places.into_iter().map(|p| format!("[{p}]")).collect();
    places.sort();
    places.dedup();
    println!("ran on: {}", places.join(" "));

    // Large messages both ways at once (past MPI's eager limit): 16 x 4 MiB there and back.
    let big: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 4 << 20]).collect();
    let back = pool.map_chunked(reverse, big, 1)?;
    assert!(
        back.iter()
            .enumerate()
            .all(|(i, v)| v.len() == 4 << 20 && v[0] == i as u8)
    );
    println!("large: {} MiB there and back", back.len() * 4 * 2);

    let err = pool.apply(abort_now, ()).expect_err("the task aborts");
    let status = err.exit_status().expect("a worker death");
    println!("abort: failed alone: {err} (signal {:?})", status.signal());

    let err = pool.apply(segfault, ()).expect_err("the task segfaults");
    let status = err.exit_status().expect("a worker death");
    println!("segfault: failed alone (signal {:?})", status.signal());

    let err = pool
        .apply(fail, "boom".to_string())
        .expect_err("the task panics");
    println!(
        "panic: failed alone: {:?}",
        err.remote_panic().map(|p| p.message())
    );

    // One fate per item across ranks too: item 3 aborts in the middle of its chunk of 10; the
    // map fails with that death, and every other item ran exactly once.
    let log = std::env::temp_dir().join(format!("mproc-mpi-fate-{}", std::process::id()));
    let path = log.to_string_lossy().into_owned();
    let items: Vec<(String, u64)> = (0..20).map(|x| (path.clone(), x)).collect();
    let err = pool
        .map_chunked(abort_at_3_logged, items, 10)
        .expect_err("item 3 aborts");
    assert!(err.exit_status().is_some(), "{err}");
    let ran = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    for x in 0..20u64 {
        let runs = ran.lines().filter(|l| l.parse() == Ok(x)).count();
        assert_eq!(runs, 1, "item {x} ran {runs} times");
    }
    println!("per item: item 3 of a chunk of 10 failed alone ({err}); 19 others ran once");

    let firsts: Vec<u64> = pool
        .imap(square, 1u64..)
        .take(5)
        .collect::<mproc::Result<_>>()?;
    println!("imap over an endless input: {firsts:?}");

    // The same iterators and calls as a local pool's.
    let mut it = pool.imap(square, 0..10u64);
    assert_eq!(it.size_hint(), (10, Some(10)));
    let first = it.next_timeout(std::time::Duration::from_secs(60));
    assert_eq!(first.map(|r| r.ok()), Some(Some(0)));
    assert_eq!(it.by_ref().count(), 9);
    assert!(it.next().is_none(), "fused");
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..50u64)
        .collect::<mproc::Result<_>>()?;
    unordered.sort_unstable();
    assert_eq!(unordered, (0..50u64).map(square).collect::<Vec<_>>());
    // A named function goes to `starmap` in a closure (see `StarArgs`; clippy's suggestion
    // does not compile).
    #[allow(clippy::redundant_closure)]
    let clamped = pool.starmap(|x, lo, hi| clamp(x, lo, hi), [(5, 0, 3), (-1, 0, 3)])?;
    assert_eq!(clamped, [3, 0]);
    let handles: Vec<_> = (0..4u64).map(|x| pool.apply_async(square, x)).collect();
    let done = mproc::as_completed(handles).count();
    assert_eq!(pool.map_with_state(add_offset, [1u64, 2])?, [1001, 1002]);
    let queue: mproc::Queue<u64> = mproc::Queue::new()?;
    let refused = pool.apply(|q: mproc::Queue<u64>| q.put(1).is_ok(), queue);
    let kind = refused.map(|_| ()).unwrap_err().kind();
    assert_eq!(kind, mproc::ErrorKind::Unsupported);
    println!(
        "the pool's API over MPI: imap, imap_unordered, starmap of 3, as_completed ({done}), worker state, fds refused ({kind:?})"
    );

    let again = pool.map(square, 0..1000u64)?;
    assert_eq!(again.len(), 1000);
    println!(
        "map after the failures: {} results, job still running",
        again.len()
    );
    let late = pool.map_async(square, 0..100u64);
    pool.close();
    assert!(pool.apply(square, 1).is_err(), "closed");
    pool.join()?;
    assert_eq!(late.get()?.len(), 100);
    println!("close and join: queued work finished first");
    println!("mpi_map: ok");
    Ok(())
}
