//! `Value`, `Array` and `SharedMemory`: Python's `multiprocessing.Value` / `Array` (a counter
//! incremented by several processes under `get_lock()` ends exact; a child's writes are seen
//! by the parent) and `shared_memory.SharedMemory` (attach by name from another process), as
//! the CPython documentation describes them; plus type checks and leak checks.

mod common;

use std::os::fd::AsFd;
use std::process::Command;
use std::sync::RwLock;
use std::time::Duration;

use common::{LIMIT, eventually, open_fds, shm_entries};
use mproc::{Array, Connection, ErrorKind, Process, SharedMemory, StartMethod, Value, pipe};

/// The leak test runs alone (write lock); the others together (read lock).
static FDS: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    FDS.read().unwrap_or_else(|e| e.into_inner())
}

const HELPER_ENV: &str = "MPROC_TEST_SHM_NAME";

#[test]
fn value_and_array_round_trip_between_threads() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let v = Value::new(0u64).unwrap();
    let a = Array::from_slice(&[0i32; 8]).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (v, a) = (v.clone(), a.clone());
            s.spawn(move || {
                for _ in 0..1000 {
                    *v.lock().unwrap() += 1;
                }
                let mut g = a.lock().unwrap();
                g[2 * t] = t as i32 + 1;
                g[2 * t + 1] = -(t as i32 + 1);
            });
        }
    });
    assert_eq!(v.get().unwrap(), 4000);
    assert_eq!(a.to_vec().unwrap(), [1, -1, 2, -2, 3, -3, 4, -4]);
    v.set(7).unwrap();
    assert_eq!(v.clone().get().unwrap(), 7);
    assert_eq!(a.len(), 8);
    assert!(!a.is_empty());
}

#[test]
fn lock_timeout_times_out_while_held() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let v = Value::new([1u8; 3]).unwrap();
    let guard = v.lock().unwrap();
    assert!(!guard.was_abandoned());
    std::thread::scope(|s| {
        s.spawn(|| {
            let err = v.lock_timeout(Duration::from_millis(30)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::TimedOut);
            assert!(v.try_lock().is_none());
        });
    });
    drop(guard);
    assert_eq!(*v.lock_timeout(LIMIT).unwrap(), [1, 1, 1]);
    assert!(v.try_lock().is_some());
}

fn increment((v, n): (Value<u64>, u32)) -> u32 {
    for _ in 0..n {
        let Ok(mut g) = v.lock_timeout(LIMIT) else {
            return 0;
        };
        *g += 1;
    }
    n
}

#[test]
fn four_processes_increment_a_value_exactly() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let v = Value::new(0u64).unwrap();
    let mut kids: Vec<Process<u32>> = (0..4)
        .map(|i| {
            let m = StartMethod::all()[i % StartMethod::all().len()];
            Process::builder()
                .start_method(m)
                .spawn(increment, (v.clone(), 10_000))
                .unwrap()
        })
        .collect();
    for k in &mut kids {
        assert_eq!(k.join_timeout(LIMIT).unwrap(), 10_000);
    }
    assert_eq!(v.get().unwrap(), 40_000);
}

fn fill(a: Array<u64>) -> usize {
    let Ok(mut g) = a.lock_timeout(LIMIT) else {
        return 0;
    };
    for (i, x) in g.iter_mut().enumerate() {
        *x = (i as u64) * (i as u64);
    }
    g.len()
}

#[test]
fn a_worker_writes_into_an_array_and_the_parent_sees_it() {
    let _leaks = common::leak_checked();
    let _g = shared();
    for &m in StartMethod::all() {
        let a = Array::<u64>::new(10_000).unwrap();
        // A view held across the child's run: the child writes into this very memory.
        let before = a.lock().unwrap().as_ptr();
        let mut p = Process::builder()
            .start_method(m)
            .spawn(fill, a.clone())
            .unwrap();
        assert_eq!(p.join_timeout(LIMIT).unwrap(), 10_000, "{m:?}");
        let g = a.lock().unwrap();
        assert_eq!(g.as_ptr(), before, "no copy: the same mapping");
        assert!(
            g.iter().enumerate().all(|(i, &x)| x == (i * i) as u64),
            "{m:?}"
        );
    }
}

fn write_tag((shm, tag): (SharedMemory, u8)) -> usize {
    shm.write(shm.len() - 1, &[tag]).map_or(0, |()| shm.len())
}

#[test]
fn shared_memory_travels_to_a_process() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let shm = SharedMemory::create(1 << 20).unwrap();
    let mut p = Process::spawn(write_tag, (shm.clone(), 0xab)).unwrap();
    assert_eq!(p.join_timeout(LIMIT).unwrap(), 1 << 20);
    let mut b = [0u8];
    shm.read((1 << 20) - 1, &mut b).unwrap();
    assert_eq!(b, [0xab]);
    // SAFETY: the pointer is valid for `len` bytes while `shm` lives; no other process runs.
    let last = unsafe { *shm.as_ptr().add(shm.len() - 1) };
    assert_eq!(last, 0xab);
}

/// The helper process: only does something when re-executed with `HELPER_ENV` set. Opens the
/// shared memory by name and writes a greeting into it.
#[test]
fn helper_opens_shared_memory_by_name() {
    let _leaks = common::leak_checked();
    let Some(name) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let shm = SharedMemory::open(name.to_str().expect("utf-8 name")).expect("open by name");
    let mut first = [0u8; 4];
    shm.read(0, &mut first).expect("read");
    assert_eq!(&first, b"ping");
    shm.write(4, b"pong").expect("write");
}

#[test]
fn shared_memory_is_opened_by_name_from_an_unrelated_process() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let shm = SharedMemory::create(4096).unwrap();
    shm.write(0, b"ping").unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["helper_opens_shared_memory_by_name", "--exact", "--quiet"])
        .env(HELPER_ENV, shm.name())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = None;
    let done = eventually(LIMIT, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the helper did not finish");
    }
    assert!(status.unwrap().success());
    let mut out = [0u8; 4];
    shm.read(4, &mut out).unwrap();
    assert_eq!(&out, b"pong");
}

#[test]
fn shared_memory_access_is_bounds_checked() {
    let _leaks = common::leak_checked();
    let _g = shared();
    assert_eq!(
        SharedMemory::create(0).unwrap_err().kind(),
        ErrorKind::Usage
    );
    let shm = SharedMemory::create(100).unwrap();
    assert_eq!(shm.len(), 100);
    assert!(shm.write(96, &[1; 4]).is_ok());
    assert_eq!(shm.write(97, &[1; 4]).unwrap_err().kind(), ErrorKind::Usage);
    assert_eq!(
        shm.read(usize::MAX, &mut [0; 2]).unwrap_err().kind(),
        ErrorKind::Usage
    );
    let e = SharedMemory::open("/proc/1/fd/999999#00000000000000a1").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(io_kind(&e), Some(std::io::ErrorKind::NotFound), "{e}");
    // Not names `name()` gives: a bare fd path (it could not say which segment it means),
    // another path, garbage.
    for bad in [
        "/proc/self/fd/3",
        "/proc/self/exe",
        "/proc/1/fd/3#12",
        "/proc/x/fd/3#0000000000000001",
        "shm",
    ] {
        assert_eq!(
            SharedMemory::open(bad).unwrap_err().kind(),
            ErrorKind::Usage,
            "{bad}"
        );
    }
}

/// The `io::ErrorKind` under an `Io` error.
fn io_kind(e: &mproc::Error) -> Option<std::io::ErrorKind> {
    std::error::Error::source(e)?
        .downcast_ref::<std::io::Error>()
        .map(|io| io.kind())
}

/// The `/proc/PID/fd/FD` part of a name.
fn fd_path(name: &str) -> &str {
    name.split_once('#').expect("a name has an id").0
}

/// What the fd path of a name leads to now.
fn link(name: &str) -> String {
    std::fs::read_link(fd_path(name))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn a_stale_name_is_not_found_never_another_segment() {
    let _leaks = common::leak_checked();
    // Alone: no other test may take the fd number in between.
    let _g = FDS.write().unwrap_or_else(|e| e.into_inner());
    let old = SharedMemory::create(64).unwrap();
    old.write(0, b"old").unwrap();
    let name = old.name();
    assert!(SharedMemory::open(&name).is_ok());
    drop(old);

    // The next segment takes the fd number the name points at.
    let new = SharedMemory::create(64).unwrap();
    new.write(0, b"new").unwrap();
    assert_eq!(
        fd_path(&new.name()),
        fd_path(&name),
        "the fd number was reused"
    );
    assert_ne!(new.name(), name, "but the name differs");
    let e = SharedMemory::open(&name).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert_eq!(io_kind(&e), Some(std::io::ErrorKind::NotFound), "{e}");
    assert!(e.to_string().contains("stale"), "{e}");
    let mut b = [0u8; 3];
    SharedMemory::open(&new.name())
        .unwrap()
        .read(0, &mut b)
        .unwrap();
    assert_eq!(&b, b"new", "the new name still opens the new segment");
    drop(new);

    // Another kind of object in that fd: stale too.
    let q = mproc::Queue::<u8>::new().unwrap();
    assert!(link(&name).contains("memfd:mproc-Queue"), "{}", link(&name));
    let e = SharedMemory::open(&name).unwrap_err();
    assert_eq!(
        io_kind(&e),
        Some(std::io::ErrorKind::NotFound),
        "a queue: {e}"
    );
    drop(q);

    // A file that is not mproc's at all (a pipe): refused without being opened.
    let (tx, rx) = pipe::<u8>().unwrap();
    assert!(link(&name).starts_with("socket:"), "{}", link(&name));
    let e = SharedMemory::open(&name).unwrap_err();
    assert_eq!(
        io_kind(&e),
        Some(std::io::ErrorKind::NotFound),
        "a pipe: {e}"
    );
    tx.send(&5).unwrap();
    assert_eq!(
        rx.recv_timeout(LIMIT).unwrap(),
        5,
        "the pipe is undisturbed"
    );
    drop((tx, rx));

    // Nothing in the fd: stale.
    let e = SharedMemory::open(&name).unwrap_err();
    assert_eq!(
        io_kind(&e),
        Some(std::io::ErrorKind::NotFound),
        "no fd: {e}"
    );
}

#[test]
fn a_handle_decoded_as_another_type_is_an_error() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let (tx, rx) = pipe::<Value<u64>>().unwrap();
    let as_u32 = Connection::<Value<u32>>::from(rx.as_fd().try_clone_to_owned().unwrap());
    tx.send(&Value::new(3).unwrap()).unwrap();
    let err = as_u32.recv_timeout(LIMIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Codec, "{err}");
    assert!(err.to_string().contains("u32"), "{err}");

    let (tx, rx) = pipe::<Array<u16>>().unwrap();
    let as_value = Connection::<Value<u16>>::from(rx.as_fd().try_clone_to_owned().unwrap());
    tx.send(&Array::new(3).unwrap()).unwrap();
    let err = as_value.recv_timeout(LIMIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Codec, "{err}");

    // Outside a message, a handle refuses to serialize instead of writing a meaningless fd.
    let (tx, rx) = pipe::<SharedMemory>().unwrap();
    tx.send(&SharedMemory::create(8).unwrap()).unwrap();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap().len(), 8);
}

#[test]
fn shared_objects_leave_nothing_behind() {
    let _leaks = common::leak_checked();
    let _g = FDS.write().unwrap_or_else(|e| e.into_inner());
    // Warm up what lives as long as the process (the spawner, the fork server).
    let v = Value::new(0u64).unwrap();
    Process::spawn(increment, (v, 1))
        .unwrap()
        .join_timeout(LIMIT)
        .unwrap();
    let (fds, shm) = (open_fds(), shm_entries());
    for _ in 0..3 {
        let v = Value::new(0u64).unwrap();
        let a = Array::<u64>::new(100).unwrap();
        let s = SharedMemory::create(1000).unwrap();
        let _by_name = SharedMemory::open(&s.name()).unwrap();
        let mut p = Process::spawn(increment, (v.clone(), 5)).unwrap();
        assert_eq!(p.join_timeout(LIMIT).unwrap(), 5);
        let mut p = Process::spawn(fill, a.clone()).unwrap();
        assert_eq!(p.join_timeout(LIMIT).unwrap(), 100);
        let mut p = Process::spawn(write_tag, (s.clone(), 1)).unwrap();
        assert_eq!(p.join_timeout(LIMIT).unwrap(), 1000);
        assert_eq!(v.get().unwrap(), 5);
    }
    assert_eq!(open_fds(), fds, "no fd leaked");
    assert_eq!(shm_entries(), shm, "nothing in /dev/shm");
}

fn hold_and_hang((v, ready): (Value<u64>, Connection<u8>)) {
    let Ok(mut g) = v.lock_timeout(LIMIT) else {
        return;
    };
    *g = 99; // half of an update the parent will have to check
    let _ = ready.send(&1);
    // Wait for the SIGKILL, never past the test's limit.
    let _ = ready.recv_timeout(LIMIT);
}

#[test]
fn a_value_locked_by_a_killed_process_is_handed_over_as_abandoned() {
    let _leaks = common::leak_checked();
    let _g = shared();
    for &m in StartMethod::all() {
        let v = Value::new(0u64).unwrap();
        let (ours, theirs) = pipe::<u8>().unwrap();
        let p = Process::builder()
            .start_method(m)
            .spawn(hold_and_hang, (v.clone(), theirs))
            .unwrap();
        assert_eq!(ours.recv_timeout(LIMIT).unwrap(), 1, "{m:?}");
        p.kill().unwrap();
        let g = v.lock_timeout(LIMIT).unwrap();
        assert!(g.was_abandoned(), "{m:?}");
        assert_eq!(*g, 99);
        drop(g);
        assert!(
            !v.lock_timeout(LIMIT).unwrap().was_abandoned(),
            "{m:?}: reported once"
        );
    }
}
