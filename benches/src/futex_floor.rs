//! The floor of blocking fan-out on this machine: no transport at all, just
//! one shared page of stamps and one futex word, woken the way shm-bus wakes
//! its readers. Any futex-based transport pays at least this.
//!
//! The producer stores a record's two stamps in slot `seq % SLOTS`,
//! publishes `seq + 1` with a Release store, bumps the futex word and wakes
//! every waiter (`FUTEX_WAKE`, all of them, shared: readers are other
//! processes). A reader loads the word, then the published count; with
//! nothing new it sleeps in `FUTEX_WAIT` while the word still holds what it
//! loaded, so a bump between its load and its sleep makes the wait return
//! at once. Records are not copied: only the stamps travel.
//!
//! The stamps are a ring of [`SLOTS`] records (6.5 s at the fan-out
//! benchmark's 10,000 records/s); the producer never waits, so a reader
//! that falls that far behind finds a newer record in its slot, which the
//! harness reports as a lost record.
//!
//! This is the only module of this crate with `unsafe` code: turning words
//! of the shared mapping into atomics.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rustix::thread::futex;

use crate::{Consume, Publish, STALL_TIMEOUT, Stamps};

/// Records the stamp ring holds.
pub const SLOTS: usize = 1 << 16;
/// Byte offsets in the shared file.
const WORD: usize = 0;
const PUBLISHED: usize = 64;
const STAMPS: usize = 128;
const FILE_SIZE: usize = STAMPS + SLOTS * 16;
/// Longest single sleep: the reader re-checks at least this often.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// The shared file, mapped read-write by every party.
#[derive(Debug)]
struct Shared {
    map: memmap2::MmapRaw,
}

impl Shared {
    fn map(file: &File) -> io::Result<Self> {
        let map = memmap2::MmapOptions::new().map_raw(file)?;
        if map.len() < FILE_SIZE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "futex floor file too short"));
        }
        Ok(Self { map })
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0 && offset + 8 <= self.map.len());
        // SAFETY: in bounds (asserted) of a mapping that `self` keeps alive
        // for the returned lifetime; 8-aligned (the mapping is page aligned
        // and `offset` a multiple of 8); every party accesses these words
        // only as atomics, so no non-atomic access races with this one.
        unsafe { &*self.map.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn word(&self) -> &AtomicU32 {
        const { assert!(WORD + 4 <= FILE_SIZE) };
        // SAFETY: as in `u64_at`: `WORD` is in bounds (the length was
        // checked in `map`) and 4-aligned, and only accessed atomically.
        unsafe { &*self.map.as_ptr().add(WORD).cast::<AtomicU32>() }
    }

    fn slot(&self, seq: u64) -> (&AtomicU64, &AtomicU64) {
        let at = STAMPS + (seq as usize % SLOTS) * 16;
        (self.u64_at(at), self.u64_at(at + 8))
    }

    fn published(&self) -> &AtomicU64 {
        self.u64_at(PUBLISHED)
    }
}

/// The producer end: creates the shared file at `path`.
#[derive(Debug)]
pub struct FloorPublisher {
    shared: Shared,
}

impl FloorPublisher {
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        file.set_len(FILE_SIZE as u64)?;
        Ok(Self { shared: Shared::map(&file)? })
    }
}

impl Publish for FloorPublisher {
    fn publish(&mut self, record: &[u8]) {
        let stamps = Stamps::read(record);
        let (head, tail) = self.shared.slot(stamps.head);
        // Relaxed: published by the Release store of the count below.
        head.store(stamps.head, Ordering::Relaxed);
        tail.store(stamps.tail, Ordering::Relaxed);
        // Release: pairs with the reader's Acquire load of the count.
        self.shared.published().store(stamps.head + 1, Ordering::Release);
        // Release: orders the count before the bump a waiter compares.
        self.shared.word().fetch_add(1, Ordering::Release);
        // All waiters: the kernel reads the count as an int, so `u32::MAX`
        // (-1) would wake one. Waking nobody is not an error; other errors
        // cannot be helped here.
        let _ = futex::wake(self.shared.word(), futex::Flags::empty(), i32::MAX as u32);
    }
}

/// A reader end: maps the producer's file.
#[derive(Debug)]
pub struct FloorConsumer {
    shared: Shared,
    next: u64,
    /// Longest single sleep before the reader checks again on its own.
    wait_slice: Duration,
}

impl FloorConsumer {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Self { shared: Shared::map(&file)?, next: 0, wait_slice: WAIT_SLICE })
    }

    fn take(&mut self, until: u64, on_record: &mut dyn FnMut(Stamps)) {
        while self.next < until {
            let (head, tail) = self.shared.slot(self.next);
            // Relaxed: after the Acquire load of the count that covers it.
            on_record(Stamps { head: head.load(Ordering::Relaxed), tail: tail.load(Ordering::Relaxed) });
            self.next += 1;
        }
    }
}

impl Consume for FloorConsumer {
    fn next_spin(&mut self) -> Stamps {
        // Acquire: pairs with the producer's Release store of the count.
        while self.shared.published().load(Ordering::Acquire) <= self.next {
            std::hint::spin_loop();
        }
        let mut got = None;
        self.take(self.next + 1, &mut |stamps| got = Some(stamps));
        got.expect("one record taken")
    }

    fn drain_blocking(&mut self, on_record: &mut dyn FnMut(Stamps)) {
        let started = std::time::Instant::now();
        loop {
            // Acquire: the count loaded next is at least as new as the bump
            // this value reflects.
            let seen = self.shared.word().load(Ordering::Acquire);
            // Acquire: pairs with the producer's Release store of the count.
            let published = self.shared.published().load(Ordering::Acquire);
            if published > self.next {
                return self.take(published, on_record);
            }
            assert!(started.elapsed() < STALL_TIMEOUT.max(self.wait_slice), "futex floor: no record");
            let timeout = rustix::fs::Timespec {
                tv_sec: self.wait_slice.as_secs() as _,
                tv_nsec: self.wait_slice.subsec_nanos() as _,
            };
            // EAGAIN (the word moved on), EINTR and ETIMEDOUT: check again.
            let _ = futex::wait(self.shared.word(), futex::Flags::empty(), seen, Some(&timeout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether thread `tid` of this process is in `futex(word,
    /// FUTEX_WAIT, ...)` (its `/proc/.../syscall`: number, then arguments).
    fn asleep_in_futex_wait(tid: i32, word: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        const SYS_FUTEX: u32 = 202;
        #[cfg(target_arch = "aarch64")]
        const SYS_FUTEX: u32 = 98;
        const FUTEX_WAIT: u32 = 0;
        let syscall = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
        syscall.starts_with(&format!("{SYS_FUTEX} {word:#x} {FUTEX_WAIT:#x} "))
    }

    /// Every record arrives, in order, at a reader that sleeps between them.
    #[test]
    fn a_blocking_reader_gets_every_stamp_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floor");
        let mut publisher = FloorPublisher::create(&path).unwrap();
        let mut consumer = FloorConsumer::open(&path).unwrap();
        const RECORDS: u64 = 2_000;
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            while (got.len() as u64) < RECORDS {
                consumer.drain_blocking(&mut |stamps| got.push(stamps));
            }
            got
        });
        let mut record = crate::record_template(64);
        for seq in 0..RECORDS {
            Stamps { head: seq, tail: seq * 3 }.write(&mut record);
            publisher.publish(&record);
            if seq % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1)); // let the reader sleep
            }
        }
        let got = reader.join().unwrap();
        let expected: Vec<Stamps> = (0..RECORDS).map(|seq| Stamps { head: seq, tail: seq * 3 }).collect();
        assert_eq!(got, expected);
    }

    /// One publish wakes every sleeping reader, not one of them: with a
    /// minute between the readers' own re-checks, only the wake-up can get
    /// all of them out of their sleep within the test.
    #[test]
    fn one_publish_wakes_every_sleeping_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floor");
        let mut publisher = FloorPublisher::create(&path).unwrap();
        let (done, woken) = std::sync::mpsc::channel();
        let (started, sleepers) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let mut consumer = FloorConsumer::open(&path).unwrap();
            consumer.wait_slice = Duration::from_secs(60);
            let (done, started) = (done.clone(), started.clone());
            std::thread::spawn(move || {
                let word = consumer.shared.word() as *const AtomicU32 as usize;
                started.send((rustix::thread::gettid().as_raw_nonzero().get(), word)).unwrap();
                consumer.drain_blocking(&mut |_| {});
                done.send(()).unwrap();
            });
        }
        // A reader not yet asleep would find the record without a wake-up:
        // wait until all four sleep in FUTEX_WAIT on their word.
        let sleepers: Vec<(i32, usize)> = (0..4).map(|_| sleepers.recv().unwrap()).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !sleepers.iter().all(|&(tid, word)| asleep_in_futex_wait(tid, word)) {
            assert!(std::time::Instant::now() < deadline, "the readers never went to sleep");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut record = crate::record_template(64);
        Stamps { head: 0, tail: 0 }.write(&mut record);
        publisher.publish(&record);
        for reader in 0..4 {
            woken
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("reader {reader} slept on"));
        }
    }
}
