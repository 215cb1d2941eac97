//! A serving rank is lost mid-map, under `mpirun --enable-recovery`: rank 0 notices its
//! silence, re-runs its tasks on the other ranks, and the map completes.
//!
//! ```text
//! mpirun --enable-recovery -n 4 target/release/examples/mpi_lost_rank
//! ```
//! (Without `--enable-recovery`, Open MPI aborts the whole job when the rank dies.)

use std::time::Duration;

/// Kills the serving rank that runs it (the parent of this worker process) when that is rank
/// 1; elsewhere returns at once.
fn kill_rank_1(_: ()) -> String {
    if std::env::var("OMPI_COMM_WORLD_RANK").as_deref() == Ok("1") {
        let rank = std::os::unix::process::parent_id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &rank])
            .status();
        std::thread::sleep(Duration::from_secs(60)); // dies with its rank
    }
    "survived".to_string()
}

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(5));
    x * x
}

fn main() -> mproc::Result<()> {
    let pool = mproc::Pool::builder()
        .processes(2) // per serving rank
        .max_retries(2)
        .mpi()
        .rank_timeout(Duration::from_secs(3))
        .build()?;
    println!("mpi pool: {} serving ranks", pool.ranks());
    // One task per local worker, so rank 1 surely gets one: that rank dies.
    let killers: Vec<_> = (0..pool.processes())
        .map(|_| pool.apply_async(kill_rank_1, ()))
        .collect();
    let squares = pool.map(slow_square, 0..600u64)?;
    assert_eq!(squares, (0..600u64).map(|x| x * x).collect::<Vec<_>>());
    println!("map: 600 results despite the lost rank");
    for k in killers {
        assert_eq!(k.get()?, "survived");
    }
    println!("the lost rank's tasks were re-run elsewhere");
    println!("mpi_lost_rank: ok");
    Ok(())
}
