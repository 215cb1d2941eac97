//! Arbitrary bytes from a peer, then a hang-up, into a `Connection`: every outcome must be a
//! message or a clear error; a panic, a hang or an allocation past the limit is a finding.
#![no_main]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mproc::{Connection, ErrorKind};

fuzz_target!(|data: &[u8]| {
    let Ok((ours, mut theirs)) = UnixStream::pair() else {
        return;
    };
    let conn = Connection::<Vec<u32>>::from(ours);
    conn.set_max_message_size(1 << 20).expect("a limit");
    // libFuzzer's default max_len (4096) fits the socket buffer: no reader needed.
    theirs.write_all(data).expect("write");
    drop(theirs);
    loop {
        match conn.recv_timeout(Duration::from_secs(5)) {
            Ok(_) => continue,
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::Closed | ErrorKind::Protocol | ErrorKind::Codec
                    ),
                    "{e}"
                );
                break;
            }
        }
    }
});
