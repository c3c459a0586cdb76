//! Another local user must not be able to take over, forge or redirect a
//! channel: bus directories are checked before a producer creates files
//! in them, channel files are never opened through symbolic links, and
//! readers attach only to files of owners they trust.
//!
//! Needs root (CI runs as root): the tests create a second user with
//! `useradd` and act as it with `setpriv` or `chown`.

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use shm_bus::{
    AttachError, BusDir, ChannelOptions, ChannelState, CreateError, Event, Producer, Reader, ReaderOptions,
};

const OTHER_USER: &str = "ringest-trust-other";

/// The (uid, gid) of a second local user, created on first use.
fn other_user() -> (u32, u32) {
    static USER: OnceLock<(u32, u32)> = OnceLock::new();
    *USER.get_or_init(|| {
        let id = |flag: &str| {
            let out = Command::new("id").arg(flag).arg(OTHER_USER).output().expect("run id");
            out.status
                .success()
                .then(|| String::from_utf8(out.stdout).unwrap().trim().parse::<u32>().unwrap())
        };
        if id("-u").is_none() {
            let out = Command::new("useradd")
                .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER])
                .output()
                .unwrap_or_else(|e| panic!("these tests need root and useradd (passwd package): {e}"));
            // Another test binary may have created it meanwhile.
            assert!(
                out.status.success() || id("-u").is_some(),
                "these tests need root to create user {OTHER_USER}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (id("-u").unwrap(), id("-g").unwrap())
    })
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn options() -> ChannelOptions {
    ChannelOptions { shards: 1, capacity: 4096, reader_slots: 4, ..Default::default() }
}

/// The reason of an `UntrustedDirectory` error for `path`, or a panic.
fn untrusted_dir(result: Result<Producer, CreateError>, path: &Path) -> String {
    match result {
        Err(CreateError::UntrustedDirectory { path: p, reason }) if p == path => reason,
        Err(e) => panic!("expected an untrusted directory {}, got {e}", path.display()),
        Ok(_) => panic!("created a channel in untrusted directory {}", path.display()),
    }
}

/// The reason of an attach `Untrusted` error for `path`, or a panic.
fn untrusted_file(result: Result<Reader, AttachError>, path: &Path) -> String {
    match result {
        Err(AttachError::Untrusted { path: p, reason }) if p == path => reason,
        Err(e) => panic!("expected untrusted {}, got {e}", path.display()),
        Ok(_) => panic!("attached to untrusted {}", path.display()),
    }
}

/// After a reboot `/dev/shm` is empty: another user may create the bus
/// directory first (here for real, as that user, in a sticky world-writable
/// directory like `/dev/shm`). The producer refuses it instead of writing
/// channels another user can replace.
#[test]
fn a_bus_directory_created_by_another_user_is_refused() {
    let other = other_user();
    let (dir, _) = common::bus();
    let shared = dir.path().join("shm");
    std::fs::create_dir(&shared).unwrap();
    chmod(dir.path(), 0o755);
    chmod(&shared, 0o1777);
    let bus_path = shared.join("ringest");
    let made = Command::new("setpriv")
        .arg(format!("--reuid={}", other.0))
        .arg(format!("--regid={}", other.1))
        .args(["--clear-groups", "mkdir", "-m", "0755"])
        .arg(&bus_path)
        .status()
        .expect("run setpriv (util-linux)");
    assert!(made.success(), "mkdir as {OTHER_USER}");
    let reason =
        untrusted_dir(Producer::create(&BusDir::new(&bus_path), "lidar/packets", options()), &bus_path);
    assert!(reason.contains(&format!("owned by uid {}", other.0)), "{reason}");
    assert!(!bus_path.join("lidar").exists(), "nothing may be created in it");

    // The same for a channel's subdirectory inside our own bus directory.
    let (_dir, bus) = common::bus();
    let sub = bus.path().join("lidar");
    std::fs::create_dir(&sub).unwrap();
    chown(&sub, other);
    let reason = untrusted_dir(Producer::create(&bus, "lidar/packets", options()), &sub);
    assert!(reason.contains("owned by uid"), "{reason}");
}

/// A directory others can write to (without the sticky bit) lets them
/// rename their own files over a channel's: refused, unless the channel's
/// mode grants them write access anyway. Sticky directories are fine.
#[test]
fn a_directory_writable_by_others_is_refused_unless_sticky_or_the_mode_allows_it() {
    let (_dir, bus) = common::bus();
    chmod(bus.path(), 0o777);
    let reason = untrusted_dir(Producer::create(&bus, "open", options()), bus.path());
    assert!(reason.contains("writable by its group"), "{reason}");
    chmod(bus.path(), 0o707);
    let reason = untrusted_dir(Producer::create(&bus, "open", options()), bus.path());
    assert!(reason.contains("writable by other users"), "{reason}");
    // The channel is writable by everyone anyway.
    Producer::create(&bus, "shared", ChannelOptions { mode: 0o666, ..options() }).unwrap();
    chmod(bus.path(), 0o1777);
    Producer::create(&bus, "sticky", options()).unwrap();
    // A symbolic link as a channel's directory is refused too.
    chmod(bus.path(), 0o700);
    std::fs::create_dir(bus.path().join("real")).unwrap();
    symlink(bus.path().join("real"), bus.path().join("link")).unwrap();
    let reason = untrusted_dir(Producer::create(&bus, "link/x", options()), &bus.path().join("link"));
    assert!(reason.contains("symbolic link"), "{reason}");
}

/// Symbolic links planted as a channel's files are never followed: a
/// producer creating the channel replaces the links (the channel they point
/// to is not marked REPLACED), and a reader refuses to attach through one.
#[test]
fn planted_symbolic_links_are_never_followed() {
    let (_dir, bus) = common::bus();
    let victim = Producer::create(&bus, "victim", options()).unwrap();
    victim.shard(0).unwrap().send(1, b"victim's record").unwrap();
    let mut victim_reader =
        Reader::attach(&bus, "victim", ReaderOptions::gated().start(shm_bus::StartAt::Oldest)).unwrap();
    symlink(bus.ring_path("victim"), bus.ring_path("planted")).unwrap();
    symlink(bus.readers_path("victim"), bus.readers_path("planted")).unwrap();

    // A reader does not attach through the links.
    let reason =
        untrusted_file(Reader::attach(&bus, "planted", ReaderOptions::lossy()), &bus.ring_path("planted"));
    assert!(reason.contains("symbolic link"), "{reason}");

    // A producer replaces the links, and leaves the victim alone.
    let planted = Producer::create(&bus, "planted", options()).unwrap();
    assert!(!std::fs::symlink_metadata(bus.ring_path("planted")).unwrap().file_type().is_symlink());
    assert!(!std::fs::symlink_metadata(bus.readers_path("planted")).unwrap().file_type().is_symlink());
    assert_eq!(victim_reader.state(), ChannelState::Live, "the victim was marked replaced");
    planted.shard(0).unwrap().send(1, b"own").unwrap();
    match victim_reader.try_recv().unwrap() {
        Some(Event::Record(s)) => assert_eq!(s.payload(), b"victim's record"),
        other => panic!("{other:?}"),
    }
}

/// Channel files owned by another user (a forged pair in a shared bus
/// directory) are refused by readers unless that user is trusted, and a
/// `.readers` file of another owner than its `.ring` is refused always.
#[test]
fn files_of_an_untrusted_owner_are_refused() {
    let other = other_user();
    let (_dir, bus) = common::bus();
    let producer = Producer::create(&bus, "forged", options()).unwrap();
    producer.shard(0).unwrap().send(1, b"forged record").unwrap();
    chown(&bus.ring_path("forged"), other);
    chown(&bus.readers_path("forged"), other);
    let reason =
        untrusted_file(Reader::attach(&bus, "forged", ReaderOptions::lossy()), &bus.ring_path("forged"));
    assert!(reason.contains(&format!("owned by uid {}", other.0)), "{reason}");
    assert!(matches!(shm_bus::channel_info(&bus, "forged"), Err(AttachError::Untrusted { .. })));

    // The group-read case: a reader that trusts the producer's user (or
    // group) attaches.
    let mut reader = Reader::attach(
        &bus.clone().trust_uid(other.0),
        "forged",
        ReaderOptions::lossy().start(shm_bus::StartAt::Oldest),
    )
    .unwrap();
    match reader.try_recv().unwrap() {
        Some(Event::Record(s)) => assert_eq!(s.payload(), b"forged record"),
        other => panic!("{other:?}"),
    }
    Reader::attach(&bus.clone().trust_gid(other.1), "forged", ReaderOptions::lossy()).unwrap();

    // A `.readers` file swapped in by someone else than the `.ring`'s owner.
    chown(&bus.ring_path("forged"), (0, 0));
    let reason = untrusted_file(
        Reader::attach(&bus.clone().trust_uid(other.0), "forged", ReaderOptions::lossy()),
        &bus.readers_path("forged"),
    );
    assert!(reason.contains("its .ring by uid 0"), "{reason}");
}

/// The Python reader (written from FORMAT.md) makes the same owner check,
/// and follows `RINGEST_BUS_TRUST`.
#[test]
fn the_python_reader_refuses_untrusted_owners_too() {
    let other = other_user();
    let (_dir, bus) = common::bus();
    let producer = Producer::create(&bus, "py", options()).unwrap();
    producer.shard(0).unwrap().send(1, b"record").unwrap();
    chown(&bus.ring_path("py"), other);
    chown(&bus.readers_path("py"), other);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/shm_bus_reader.py");
    let run = |trust: Option<String>| {
        let mut cmd = Command::new("python3");
        cmd.arg(&script).arg("--bus").arg(bus.path()).arg("py").env_remove(shm_bus::TRUST_ENV);
        if let Some(trust) = trust {
            cmd.env(shm_bus::TRUST_ENV, trust);
        }
        cmd.output().unwrap_or_else(|e| panic!("python3 (3.11+) is needed: {e}"))
    };
    let refused = run(None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not trusted") && stderr.contains(&format!("uid {}", other.0)), "{stderr}");
    let trusted = run(Some(format!("12345,{}", other.0)));
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    let trusted = run(Some(format!("g:{}", other.1)));
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));

    // A `.readers` file of another owner than its `.ring` (FORMAT.md §1,
    // §6.9 check 13): refused, even when both owners are trusted.
    chown(&bus.ring_path("py"), (0, 0));
    let refused = run(Some(other.0.to_string()));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("py.readers is not trusted") && stderr.contains("uid 0"), "{stderr}");
}

/// Entry point of the child that reads as the other user (see below);
/// returns at once in a normal test run.
#[test]
fn read_only_child_entry() {
    let Ok(bus) = std::env::var("SHM_BUS_TRUST_CHILD_BUS") else { return };
    let opts = ReaderOptions::lossy().start(shm_bus::StartAt::Oldest);
    let mut reader = Reader::attach(&BusDir::new(bus), "ro", opts).unwrap();
    println!("ATTACHED");
    let mut got = Vec::new();
    loop {
        match reader.recv_timeout(common::PATIENCE).unwrap() {
            Some(Event::Record(s)) => got.push(String::from_utf8_lossy(s.payload()).into_owned()),
            Some(Event::Ended) => break,
            other => panic!("{other:?}"),
        }
    }
    println!("GOT {}", got.join(","));
}

/// A lossy reader needs only read access to both files (FORMAT.md §1): a
/// user who may not write `.readers` attaches without a slot, never writes
/// the file, and polls for new records instead of waiting on the futex.
#[test]
fn a_lossy_reader_without_write_access_to_readers_polls() {
    let other = other_user();
    let (_dir, bus) = common::bus();
    chmod(bus.path(), 0o755);
    let producer = Producer::create(&bus, "ro", ChannelOptions { mode: 0o644, ..options() }).unwrap();
    let mut writer = producer.shard(0).unwrap();
    writer.send(1, b"a").unwrap();
    writer.send(1, b"b").unwrap();
    // Readable by everyone, writable by nobody else.
    chmod(&bus.readers_path("ro"), 0o644);
    let before = std::fs::read(bus.readers_path("ro")).unwrap();
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={}", other.0))
        .arg(format!("--regid={}", other.1))
        .arg("--clear-groups")
        .arg(std::env::current_exe().unwrap())
        .args(["read_only_child_entry", "--exact", "--nocapture"])
        .env("SHM_BUS_TRUST_CHILD_BUS", bus.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run setpriv (util-linux)");
    // "c" is sent once the reader runs: it must poll to see it.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("ATTACHED") {
        line.clear();
        if std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() == 0 {
            panic!(
                "the child ended before it attached: {}",
                std::io::read_to_string(child.stderr.take().unwrap()).unwrap()
            );
        }
    }
    writer.send(1, b"c").unwrap();
    producer.end();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = rest;
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("GOT a,b,c"), "{stdout}");
    assert_eq!(std::fs::read(bus.readers_path("ro")).unwrap(), before, "the reader wrote .readers");
}
