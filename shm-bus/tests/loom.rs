//! Loom model checks of the publish / read / gate / lap protocol.
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p shm-bus --test loom --release`
#![cfg(loom)]

use shm_bus::loom_model::{HOT_CAPACITY, HOT_WINDOW, Model, ModelReader, ModelWriter};

/// A lossy reader racing a writer that laps it: every record it accepts is
/// intact, sequence numbers only go up, and from its first record on, seen
/// + lost adds up to what was written (lapped before its first record, a
/// reader started at the oldest one cannot know what it missed there).
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
        let (mut first, mut last, mut seen, mut lost) = (None, None, 0, 0);
        let mut account = |got: shm_bus::loom_model::Got| {
            if let Some(prev) = last {
                assert_eq!(got.seq, prev + 1 + got.lost);
                lost += got.lost;
            }
            first.get_or_insert(got.seq);
            last = Some(got.seq);
            seen += 1;
        };
        for _ in 0..3 {
            if let Some(got) = reader.try_recv() {
                account(got);
            }
        }
        t.join().unwrap();
        // The writer is done: the newest record is still there.
        while let Some(got) = reader.try_recv() {
            account(got);
        }
        assert_eq!(last, Some(4), "the newest record is delivered");
        let first = first.expect("a record");
        assert_eq!(seen + lost, 5 - first, "seen + lost from seq {first} on");
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
            (reader, got)
        });
        let mut sent = 0;
        for _ in 0..3 {
            if writer.try_send() {
                sent += 1;
            } else {
                loom::thread::yield_now();
            }
        }
        let (mut reader, mut got) = t.join().unwrap();
        // Whatever the reader had not read is still there: from its first
        // record on it gets every one, up to the last the writer sent.
        while let Some(g) = reader.try_recv() {
            assert!(g.valid && g.lost == 0);
            got.push(g.seq);
        }
        for w in got.windows(2) {
            assert_eq!(w[1], w[0] + 1, "gated reader skipped a record");
        }
        assert_eq!(
            got.last(),
            Some(&(3 + sent - 1)),
            "the reader ends at the last record sent ({sent} after the first 3)"
        );
    });
}

/// Reads records, each of which must be `next` (then the one after), intact
/// and with nothing lost: `tries` attempts, or until none is published.
fn take_in_order(reader: &mut ModelReader, next: &mut u64, tries: Option<usize>) {
    for _ in 0..tries.unwrap_or(usize::MAX) {
        match reader.try_recv() {
            Some(g) => {
                assert_eq!((g.seq, g.lost, g.valid), (*next, 0, true));
                *next += 1;
            }
            None if tries.is_none() => return,
            None => {}
        }
    }
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
        take_in_order(&mut reader, &mut next, Some(4));
        let sent = t.join().unwrap();
        take_in_order(&mut reader, &mut next, None);
        assert_eq!(next, sent);
    });
}

/// Reads the first two records as they come, then has the writer write two
/// more and start over with the fifth: the reader is left behind the third,
/// in the lap the writer started over from.
fn start_over_with_reader_behind(model: &Model, reader: &mut ModelReader, writer: &mut ModelWriter) {
    for seq in 0..2 {
        assert!(writer.try_send());
        let got = reader.try_recv().expect("published");
        assert_eq!((got.seq, got.lost, got.valid), (seq, 0, true));
    }
    assert!(writer.try_send() && writer.try_send());
    assert!(writer.try_send(), "record 4 starts over");
    assert_eq!(model.hot_window_counts(), (1, 0));
}

/// A gated reader that stalls right after a start-over: the writer skips
/// ahead into the skipped part of the ring instead of stopping after one
/// more record (the reader holds the previous lap's third), and the
/// reader, racing it, gets every record intact and in order.
#[test]
fn gated_reader_behind_a_start_over_keeps_the_skipped_ring() {
    loom::model(|| {
        let model = Model::with_ring(HOT_CAPACITY, HOT_WINDOW);
        let mut reader = model.gated_reader();
        let mut writer = model.writer();
        start_over_with_reader_behind(&model, &mut reader, &mut writer);
        let t = loom::thread::spawn(move || (0..2).filter(|_| writer.try_send()).count());
        let mut next = 2;
        take_in_order(&mut reader, &mut next, Some(3));
        let sent = t.join().unwrap();
        assert_eq!(sent, 2, "the ring had room for two more records");
        take_in_order(&mut reader, &mut next, None);
        assert_eq!(next, 7);
    });
}

/// The same with a registered lossy reader: the writer never waits for it,
/// but skips ahead rather than lapping it, and every record it accepts is
/// intact (the writer fills the inside of the padding the reader has yet
/// to read the header of).
#[test]
fn lossy_reader_behind_a_start_over_is_not_lapped_within_a_ring() {
    loom::model(|| {
        let model = Model::with_ring(HOT_CAPACITY, HOT_WINDOW);
        let mut reader = model.registered_lossy_reader();
        let mut writer = model.writer();
        start_over_with_reader_behind(&model, &mut reader, &mut writer);
        let t = loom::thread::spawn(move || {
            for _ in 0..2 {
                assert!(writer.try_send(), "no gated reader: never full");
            }
        });
        let mut next = 2;
        take_in_order(&mut reader, &mut next, Some(3));
        t.join().unwrap();
        take_in_order(&mut reader, &mut next, None);
        assert_eq!(next, 7);
    });
}

/// Two readers attach at once and both find slot 0 held by a dead reader:
/// both judged it dead under the same owner word, and both try to claim
/// it. The claim compares the whole owner word (state and epoch), so
/// exactly one gets it, even when the other looks only after the winner
/// made the slot GATED again (with a compare on the state alone, that
/// second claim would succeed too: two owners).
#[test]
fn two_readers_taking_over_a_dead_slot_never_both_own_it() {
    loom::model(|| {
        let model = Model::new();
        drop(model.gated_reader()); // its process "dies": the slot stays GATED
        let dead = model.owner();
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let model = model.clone();
                loom::thread::spawn(move || model.try_register_gated(dead).is_some())
            })
            .collect();
        let won: Vec<bool> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(won.iter().filter(|&&w| w).count(), 1, "owners: {won:?}");
        assert_ne!(model.owner(), dead);
    });
}

/// A live gated reader is reaped (judged dead) while it reads and releases
/// a record; a second reader claims the slot and the writer carries on
/// (the ring holds three records, so the fourth needs the first's space).
/// The second reader starts where the first last released (position 0),
/// so even the first reader's stale position swap may succeed on it. Either
/// way no record the second reader accepts was overwritten: it reads every
/// record in order, or it learns that it lost its slot; and the first
/// reader never delivers a record after learning it lost its slot.
#[test]
fn reaped_reader_never_moves_the_next_holders_gate_unnoticed() {
    loom::model(|| {
        let model = Model::new();
        let mut first = model.gated_reader();
        let mut writer = model.writer();
        assert!(writer.try_send());
        let judged = model.owner();
        let t = loom::thread::spawn(move || {
            let got = first.try_recv();
            (got, first.lost_slot(), first.try_recv())
        });
        assert!(model.reap(judged), "nobody else changes the slot");
        let mut second = model.try_register_gated(judged).expect("slot 0 is free");
        let sent = 1 + (0..3).filter(|_| writer.try_send()).count() as u64;
        let (got, first_lost, after) = t.join().unwrap();
        if let Some(got) = got {
            assert_eq!((got.seq, got.lost), (0, 0));
        }
        if first_lost {
            assert_eq!(after, None, "a reader that lost its slot delivered a record");
        }
        let mut next = None;
        while let Some(g) = second.try_recv() {
            assert!(g.valid && g.lost == 0, "{g:?}");
            if let Some(n) = next {
                assert_eq!(g.seq, n, "the second reader skipped a record");
            }
            next = Some(g.seq + 1);
        }
        if !second.lost_slot() {
            assert_eq!(next, Some(sent), "the second reader got every record");
        }
    });
}
