//! `bulwark migrate relay` between two files as QEMU's migration devices would back them:
//! frames sent on one side's pages arrive on the other's, both ways, and the relay ends
//! once both streams have ended; with `--fault flip@0` the first buffer arrives changed.

use abi::migration::{BUFFER_OFFSET, BUFFER_SIZE, DATA_REGISTER_OFFSET, DataRegister, MigrationStatus, STATUS_OFFSET};
use bulwark_migrate_pages::FilePage;
use migrate::channel::{ChannelError, MigrationChannel, PageChannel};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One page of a device file, as the SVSM's `BarPage` sees its BAR (here through the
/// file, as the relay does).
mod bulwark_migrate_pages {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    pub struct FilePage {
        pub file: File,
        pub base: u64,
    }

    impl FilePage {
        fn byte(&self, at: usize) -> u8 {
            let mut b = [0u8];
            self.file.read_exact_at(&mut b, self.base + at as u64).unwrap();
            b[0]
        }
        fn put(&self, at: usize, bytes: &[u8]) {
            self.file.write_all_at(bytes, self.base + at as u64).unwrap();
        }
    }

    impl migrate::channel::MigrationPage for FilePage {
        fn read_status(&mut self) -> MigrationStatus {
            MigrationStatus(self.byte(STATUS_OFFSET))
        }
        fn write_status(&mut self, status: MigrationStatus) {
            self.put(STATUS_OFFSET, &[status.0]);
        }
        fn read_data_register(&mut self) -> DataRegister {
            DataRegister(self.byte(DATA_REGISTER_OFFSET))
        }
        fn write_data_register(&mut self, value: DataRegister) {
            self.put(DATA_REGISTER_OFFSET, &[value.0]);
        }
        fn read_buffer(&mut self, buf: &mut [u8; BUFFER_SIZE]) {
            self.file.read_exact_at(buf, self.base + BUFFER_OFFSET as u64).unwrap();
        }
        fn write_buffer(&mut self, buf: &[u8; BUFFER_SIZE]) {
            self.put(BUFFER_OFFSET, buf);
        }
    }
}

/// A device file of `ring` pages per direction, and a channel on it that uses the whole
/// ring from the start.
fn device(dir: &std::path::Path, name: &str, ring: usize) -> (std::path::PathBuf, PageChannel<FilePage, FilePage>) {
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; 2 * ring * 4096]).unwrap();
    let page = |n: usize| FilePage {
        file: std::fs::File::options().read(true).write(true).open(&path).unwrap(),
        base: (n * 4096) as u64,
    };
    let mut channel = PageChannel::with_rings((0..ring).map(page).collect(), (ring..2 * ring).map(page).collect());
    channel.use_ring(ring, ring).unwrap();
    (path, channel)
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect()
}

/// Runs the relay between two fresh device files and sends `to_destination` one way and
/// `to_source` the other; what each side received, and the relay's JSON summary.
fn relay(
    ring: usize,
    fault: Option<&str>,
    to_destination: &[Vec<u8>],
    to_source: &[Vec<u8>],
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, String) {
    let dir = std::env::temp_dir().join(format!(
        "bulwark-relay-test-{}-{ring}-{}",
        std::process::id(),
        fault.unwrap_or("none")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (source_file, mut source) = device(&dir, "source.shm", ring);
    let (destination_file, mut destination) = device(&dir, "destination.shm", ring);
    let mut command = Command::new(env!("CARGO_BIN_EXE_bulwark"));
    command
        .args(["migrate", "relay", "--json", "--timeout", "60", "--source"])
        .arg(&source_file)
        .arg("--destination")
        .arg(&destination_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(fault) = fault {
        command.args(["--fault", fault]);
    }
    let child = command.spawn().unwrap();
    // The relay starts the pages: RUNNING on each side's outbound page.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read(&source_file).unwrap()[0] != MigrationStatus::RUNNING.0 {
        assert!(Instant::now() < deadline, "the relay never started the pages");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (mut out_a, mut out_b) = (to_destination.iter(), to_source.iter());
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let (mut closed_a, mut closed_b) = (false, false);
    while !(closed_a && closed_b && got_a.len() == to_destination.len() && got_b.len() == to_source.len()) {
        assert!(Instant::now() < deadline, "the frames did not arrive");
        for (side, out, closed) in
            [(&mut source, &mut out_a, &mut closed_a), (&mut destination, &mut out_b, &mut closed_b)]
        {
            if side.poll_send().unwrap() {
                match out.next() {
                    Some(f) => side.send(f).unwrap(),
                    None => *closed = side.close().unwrap(),
                }
            }
        }
        for (side, got) in [(&mut destination, &mut got_a), (&mut source, &mut got_b)] {
            match side.receive() {
                Ok(Some(f)) => got.push(f),
                // The other side's stream ended (COMPLETED, relayed).
                Ok(None) | Err(ChannelError::Closed) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the relay ends once both streams have ended");
    let _ = std::fs::remove_dir_all(&dir);
    (got_a, got_b, String::from_utf8(output.stdout).unwrap())
}

#[test]
fn the_relay_carries_frames_both_ways_between_two_device_files() {
    let there = [frame(10, 1), frame(5000, 2)];
    let back = [frame(3000, 3)];
    let (got_there, got_back, summary) = relay(1, None, &there, &back);
    assert_eq!(got_there, there);
    assert_eq!(got_back, back);
    // 1 + 3 buffers one way (5000 bytes are three fragments), 2 the other.
    assert!(summary.contains("\"buffers_source_to_destination\":4"), "{summary}");
    assert!(summary.contains("\"buffers_destination_to_source\":2"), "{summary}");
    assert!(summary.contains("\"finished\":true"), "{summary}");
}

#[test]
fn a_fault_changes_what_the_relay_delivers() {
    let there = [frame(100, 7)];
    let (got_there, _, summary) = relay(1, Some("flip@0"), &there, &[]);
    assert_eq!(got_there.len(), 1);
    let differing: u32 = got_there[0].iter().zip(&there[0]).map(|(a, b)| (a ^ b).count_ones()).sum();
    assert_eq!(differing, 1, "one bit of the fragment flipped (the session's AEAD would refuse it)");
    assert!(summary.contains("\"fault_applied\":true"), "{summary}");
}

/// Files with rings of 8 pages: the relay finds the rings in the files and carries each
/// page to the same place on the other side, so frames written into the pages in turn
/// arrive whole, both ways.
#[test]
fn the_relay_carries_rings_page_by_page() {
    let there = [frame(40_000, 4), frame(1, 5), frame(20_000, 6)];
    let back = [frame(9000, 8)];
    let (got_there, got_back, summary) = relay(8, None, &there, &back);
    assert_eq!(got_there, there);
    assert_eq!(got_back, back);
    // 20 + 1 + 10 fragments one way, 5 the other.
    assert!(summary.contains("\"buffers_source_to_destination\":31"), "{summary}");
    assert!(summary.contains("\"buffers_destination_to_source\":5"), "{summary}");
    assert!(summary.contains("\"ring_pages\":8"), "{summary}");
}
