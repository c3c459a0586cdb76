//! Loom model checks of the publish / read / gate / lap protocol.
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p shm-bus --test loom --release`
#![cfg(loom)]

use shm_bus::loom_model::Model;

/// A lossy reader racing a writer that laps it: every record it accepts is
/// intact, sequence numbers only go up, and seen + lost adds up.
#[test]
fn lossy_reader_never_accepts_a_torn_record() {
    loom::model(|| {
        let model = Model::new();
        let mut reader = model.lossy_reader();
        let mut writer = model.writer();
        let t = loom::thread::spawn(move || {
            for _ in 0..5 {
                assert!(writer.try_send(), "no gated reader: never full");
            }
        });
        // Every record is accounted for: delivered (valid or found
        // overwritten after reading) or counted as lost.
        let mut last = None;
        for _ in 0..3 {
            if let Some(got) = reader.try_recv() {
                if let Some(prev) = last {
                    assert_eq!(got.seq, prev + 1 + got.lost);
                }
                last = Some(got.seq);
            }
        }
        t.join().unwrap();
    });
}

/// A gated reader that registers while the writer is already reclaiming:
/// it never sees an overwritten record and never misses one after its
/// first, and the writer never overwrites what it has not released.
#[test]
fn gated_registration_races_reclaim() {
    loom::model(|| {
        let model = Model::new();
        let mut writer = model.writer();
        // Fill the ring so the next record must reclaim.
        for _ in 0..3 {
            assert!(writer.try_send());
        }
        let m2 = model.clone();
        let t = loom::thread::spawn(move || {
            let mut reader = m2.gated_reader();
            let mut got = Vec::new();
            for _ in 0..2 {
                if let Some(g) = reader.try_recv() {
                    assert!(g.valid && g.lost == 0);
                    got.push(g.seq);
                }
            }
            for w in got.windows(2) {
                assert_eq!(w[1], w[0] + 1, "gated reader skipped a record");
            }
        });
        let mut sent = 0;
        for _ in 0..3 {
            if writer.try_send() {
                sent += 1;
            } else {
                loom::thread::yield_now();
            }
        }
        t.join().unwrap();
        let _ = sent;
    });
}

/// A gated reader registered from the start keeps the writer from lapping
/// it: the writer reports full, and the reader gets every record in order.
#[test]
fn gated_reader_is_lossless() {
    loom::model(|| {
        let model = Model::new();
        let mut reader = model.gated_reader();
        let mut writer = model.writer();
        let t = loom::thread::spawn(move || {
            let mut sent = 0;
            let mut attempts = 0;
            while sent < 4 && attempts < 6 {
                attempts += 1;
                if writer.try_send() {
                    sent += 1;
                } else {
                    loom::thread::yield_now();
                }
            }
            sent
        });
        let mut next = 0;
        for _ in 0..4 {
            if let Some(g) = reader.try_recv() {
                assert_eq!((g.seq, g.lost, g.valid), (next, 0, true));
                next += 1;
            }
        }
        let sent = t.join().unwrap();
        while let Some(g) = reader.try_recv() {
            assert_eq!((g.seq, g.lost, g.valid), (next, 0, true));
            next += 1;
        }
        assert_eq!(next, sent);
    });
}
