//! The UDP stage end to end: real datagrams on 127.0.0.1 (and ::1),
//! OS-chosen ports, a private bus per test.
//!
//! Every case runs on both receive paths: io_uring multishot recvmsg
//! (forced, so a kernel without it fails here) and recvmmsg.

// The same cases, compiled once per path, on purpose.
#![allow(clippy::duplicate_mod)]

mod common;

#[path = "cases"]
mod io_uring {
    const RECEIVE_PATH: engine::config::ReceivePathChoice = engine::config::ReceivePathChoice::IoUring;
    mod udp;
}

#[path = "cases"]
mod recvmmsg {
    const RECEIVE_PATH: engine::config::ReceivePathChoice = engine::config::ReceivePathChoice::GlommioRead;
    mod udp;
}
