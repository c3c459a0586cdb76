//! iceoryx2 as the peer transport, set up to match shm-bus's gated readers:
//! a `publish_subscribe::<[u8]>` service without safe overflow, so a full
//! subscriber buffer makes the publisher retry (`RetryUntilDelivered`)
//! instead of dropping; slice loans; no history. For blocking readers an
//! event service of the same name plus `/wake` carries one notification per
//! record.

use std::error::Error;
use std::time::Instant;

use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;

use crate::{Consume, Publish, STALL_TIMEOUT, Stamps, queue_depth};

type Ipc = ipc::Service;

/// The record and wake-up services of one benchmark channel.
struct Services {
    node: Node<Ipc>,
    records: iceoryx2::service::port_factory::publish_subscribe::PortFactory<Ipc, [u8], ()>,
    wake: iceoryx2::service::port_factory::event::PortFactory<Ipc>,
}

impl Services {
    /// Opens (or creates) the services behind `service` for records of
    /// `size` and up to `readers` subscribers. Both sides call it with the
    /// same arguments, so whichever comes first creates them.
    fn open(service: &str, size: usize, readers: usize) -> Result<Self, Box<dyn Error>> {
        // Quiet its warning that no config file exists: the defaults are
        // what we want.
        set_log_level(LogLevel::Error);
        let node = NodeBuilder::new().create::<Ipc>()?;
        let records = node
            .service_builder(&service.try_into()?)
            .publish_subscribe::<[u8]>()
            .enable_safe_overflow(false)
            .history_size(0)
            .subscriber_max_buffer_size(queue_depth(size))
            .subscriber_max_borrowed_samples(1)
            .max_publishers(1)
            .max_subscribers(readers)
            .open_or_create()?;
        let wake = node
            .service_builder(&format!("{service}/wake").as_str().try_into()?)
            .event()
            .max_notifiers(1)
            .max_listeners(readers)
            .open_or_create()?;
        Ok(Self { node, records, wake })
    }
}

/// An iceoryx2 publisher that loans a slice per record.
#[derive(Debug)]
pub struct IoxPublisher {
    publisher: Publisher<Ipc, [u8], ()>,
    /// Notifies blocking readers after each record.
    notifier: Option<Notifier<Ipc>>,
    // Last: the node outlives its ports.
    _node: Node<Ipc>,
}

impl IoxPublisher {
    /// A publisher of records of `size` to up to `readers` subscribers;
    /// `wake_readers` adds a notification per record for blocking readers.
    pub fn create(
        service: &str,
        size: usize,
        readers: usize,
        wake_readers: bool,
    ) -> Result<Self, Box<dyn Error>> {
        let services = Services::open(service, size, readers)?;
        let publisher = services
            .records
            .publisher_builder()
            .initial_max_slice_len(size)
            .max_loaned_samples(1)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()?;
        let notifier = if wake_readers { Some(services.wake.notifier_builder().create()?) } else { None };
        Ok(Self { publisher, notifier, _node: services.node })
    }
}

impl Publish for IoxPublisher {
    fn publish(&mut self, record: &[u8]) {
        let sample = self.publisher.loan_slice_uninit(record.len()).expect("iceoryx2 loan failed");
        sample.write_from_slice(record).send().expect("iceoryx2 send failed");
        if let Some(notifier) = &self.notifier {
            notifier.notify().expect("iceoryx2 notify failed");
        }
    }
}

/// An iceoryx2 subscriber, with a listener when it waits by blocking.
#[derive(Debug)]
pub struct IoxConsumer {
    subscriber: Subscriber<Ipc, [u8], ()>,
    listener: Option<Listener<Ipc>>,
    _node: Node<Ipc>,
}

impl IoxConsumer {
    /// Subscribes to `service` (see [`IoxPublisher::create`] for the rest).
    pub fn open(service: &str, size: usize, readers: usize, blocking: bool) -> Result<Self, Box<dyn Error>> {
        let services = Services::open(service, size, readers)?;
        let subscriber = services.records.subscriber_builder().buffer_size(queue_depth(size)).create()?;
        let listener = if blocking { Some(services.wake.listener_builder().create()?) } else { None };
        Ok(Self { subscriber, listener, _node: services.node })
    }

    /// Hands the stamps of every record ready now to `on_record`; returns
    /// how many there were.
    fn drain(subscriber: &Subscriber<Ipc, [u8], ()>, on_record: &mut dyn FnMut(Stamps)) -> usize {
        let mut count = 0;
        while let Some(sample) = subscriber.receive().expect("iceoryx2 receive failed") {
            let stamps = Stamps::read(sample.payload());
            drop(sample);
            on_record(stamps);
            count += 1;
        }
        count
    }
}

impl Consume for IoxConsumer {
    fn next_spin(&mut self) -> Stamps {
        let deadline = Instant::now() + STALL_TIMEOUT;
        loop {
            for _ in 0..1024 {
                if let Some(sample) = self.subscriber.receive().expect("iceoryx2 receive failed") {
                    return Stamps::read(sample.payload());
                }
                std::hint::spin_loop();
            }
            assert!(Instant::now() < deadline, "no record for {STALL_TIMEOUT:?}");
        }
    }

    fn drain_blocking(&mut self, on_record: &mut dyn FnMut(Stamps)) {
        let listener = self.listener.as_ref().expect("consumer opened without a listener");
        let deadline = Instant::now() + STALL_TIMEOUT;
        // Wake-ups can be stale (for records an earlier drain took, or with
        // no event at all): sleep until a drain finds records.
        while Self::drain(&self.subscriber, on_record) == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no record for {STALL_TIMEOUT:?}");
            listener.timed_wait(|_| {}, left).expect("iceoryx2 wait failed");
        }
    }
}

/// A service name no other run uses (the services of a crashed run may
/// linger until iceoryx2 cleans them up).
pub fn unique_service_name(what: &str) -> String {
    format!("ringest-bench/{}/{}/{what}", std::process::id(), crate::monotonic_ns())
}
