//! Large arguments and results (past the 1 MiB spill limit) travel through an anonymous file
//! instead of the socket: they arrive intact, for `Pool` and `Process`, beside handles, and
//! leave no fd or mapping behind in the parent.

mod common;

use mproc::{Pool, Process, Queue};
use serde_bytes::ByteBuf;

const BIG: usize = 3 << 20;

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + i / 977) as u8).collect()
}

fn echo(b: ByteBuf) -> ByteBuf {
    b
}

fn checksum(b: Vec<u8>) -> u64 {
    b.iter().map(|&x| u64::from(x)).sum()
}

/// A large result, or a panic for 0: one chunk can mix both.
fn big_or_panic(n: usize) -> ByteBuf {
    assert!(n > 0, "zero");
    ByteBuf::from(payload(n))
}

fn send_len(args: (Queue<usize>, ByteBuf)) -> usize {
    let (q, b) = args;
    q.put(b.len()).expect("queue put");
    b.len()
}

/// One test, so that no other test's fds change the count.
#[test]
fn large_arguments_arrive_intact() {
    // The first pool starts the fork server, which stays: count fds after it.
    assert_eq!(Pool::new(1).unwrap().apply(checksum, vec![1]).unwrap(), 1);
    let fds_before = common::open_fds();
    let pool = Pool::new(2).unwrap();
    let data = payload(BIG);
    let back = pool.apply(echo, ByteBuf::from(data.clone())).unwrap();
    assert!(back[..] == data[..]);
    let mut p = Process::spawn(echo, ByteBuf::from(data.clone())).unwrap();
    assert!(
        p.join().unwrap()[..] == data[..],
        "a process's large result"
    );
    drop(p);
    // Several chunks, each past the limit, and a plain `Vec<u8>` (one byte at a time).
    let items: Vec<Vec<u8>> = (0..6).map(|k| payload(700_000 + k)).collect();
    let want: Vec<u64> = items.iter().cloned().map(checksum).collect();
    assert_eq!(pool.map_chunked(checksum, items, 2).unwrap(), want);
    // Large results: through a borrowed worker (`apply`, above) and through the supervisor,
    // one per chunk and several in one chunk.
    let sizes = [BIG, 2 << 20, 1 << 20, 5];
    let back = pool.map_chunked(big_or_panic, sizes, 1).unwrap();
    let back2 = pool.map_chunked(big_or_panic, sizes, 4).unwrap();
    for (i, n) in sizes.into_iter().enumerate() {
        assert!(back[i][..] == payload(n)[..], "item {i}");
        assert!(back2[i][..] == payload(n)[..], "item {i}");
    }
    // A chunk whose results mix large values and a panic.
    let mixed = Pool::builder().processes(2).chunksize(3).build().unwrap();
    let got: Vec<_> = mixed.imap(big_or_panic, [BIG, 0, BIG]).collect();
    assert!(got[0].as_ref().unwrap()[..] == payload(BIG)[..]);
    let e = got[1].as_ref().unwrap_err();
    assert_eq!(e.remote_panic().map(|p| p.message()), Some("zero"));
    assert_eq!(got[2].as_ref().unwrap().len(), BIG);
    drop((back, back2, got));
    mixed.close();
    mixed.join().unwrap();
    drop(mixed);
    pool.close();
    pool.join().unwrap();
    drop(pool);
    assert_eq!(common::open_fds(), fds_before, "an fd leaked");
    assert_eq!(common::mapped_regions(), 0, "a mapping leaked");
    many_large_results_hold_no_fd_each();
    a_large_argument_travels_beside_handles();
}

fn a_large_argument_travels_beside_handles() {
    let q: Queue<usize> = Queue::new().unwrap();
    let mut p = Process::spawn(send_len, (q.clone(), ByteBuf::from(payload(BIG)))).unwrap();
    assert_eq!(p.join().unwrap(), BIG);
    assert_eq!(q.get_timeout(common::LIMIT).unwrap(), BIG);
}

/// Results waiting to be decoded (a map's, until its last chunk arrives) keep their mapping,
/// not their file's fd: under a limit of 40 more fds, a map of 100 large results works.
fn many_large_results_hold_no_fd_each() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.apply(checksum, vec![2]).unwrap(), 2); // workers up
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer for the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    let tight = libc::rlimit {
        rlim_cur: (common::open_fds() + 40) as libc::rlim_t,
        rlim_max: old.rlim_max,
    };
    // SAFETY: a valid rlimit for the call; lowering the soft limit only.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &tight) }, 0);
    let got = pool.map_chunked(big_or_panic, vec![(1 << 20) + 4096; 100], 1);
    // SAFETY: as above, restoring the limit read before.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
    let got = got.unwrap();
    assert_eq!(got.len(), 100);
    assert!(got.iter().all(|b| b.len() == (1 << 20) + 4096));
    pool.close();
    pool.join().unwrap();
}
