//! The TCP client stage end to end, against real servers on 127.0.0.1: a
//! Rust test server, and socat.
//!
//! Every case runs on both receive paths: io_uring multishot recv (forced,
//! so a kernel without it fails here rather than testing the other path
//! twice) and the glommio read path.

// The same cases, compiled once per path, on purpose.
#![allow(clippy::duplicate_mod)]

mod common;

#[path = "cases"]
mod io_uring {
    const RECEIVE_PATH: engine::config::ReceivePathChoice = engine::config::ReceivePathChoice::IoUring;
    mod tcp_client;
}

#[path = "cases"]
mod glommio_read {
    const RECEIVE_PATH: engine::config::ReceivePathChoice = engine::config::ReceivePathChoice::GlommioRead;
    mod tcp_client;
}
