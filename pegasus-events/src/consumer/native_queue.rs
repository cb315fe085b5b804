//! A partition's own librdkafka queue, read several records at a time.
//!
//! # Guarantee
//!
//! Records come out in the order librdkafka queued them (offset order within the
//! partition), one at a time, exactly as [`rdkafka::consumer::base_consumer::PartitionQueue`]
//! hands them out; only the reading is batched. Taking a batch stores no offset: an offset
//! is stored by [`NativeMessage::store_offset`], for the one record the worker finished, so
//! a record taken in a batch and never handled (the worker stopped first) stays
//! uncommitted, and the partition's next owner reads it again. Every message taken is
//! destroyed exactly once: when the worker drops it, or, if never handed out, when the
//! queue is dropped; always before the consumer it came from can be destroyed, since the
//! queue holds the consumer.
//!
//! # Why
//!
//! rdkafka's `PartitionQueue::poll` goes through librdkafka's event API: every record
//! is one call into librdkafka with its own poll bookkeeping and clock reads, one event
//! object, and one reference-counted allocation on the Rust side to hold it.
//! `rd_kafka_consume_batch_queue` takes up to [`BATCH`] records in one call and returns
//! plain message pointers, with no event and no allocation. rdkafka offers no
//! batch read of a split partition queue, so this module splits the queue itself, the way
//! `BaseConsumer::split_partition_queue` does (`rd_kafka_queue_get_partition`, then
//! `rd_kafka_queue_forward` to no queue).
//!
//! # Safety
//!
//! With `wire/byte_headers.rs`, the crate's only `unsafe` code. What it relies on:
//! librdkafka's queues and messages may be used from any thread; a message stays valid
//! until `rd_kafka_message_destroy`, and its key, payload, topic handle and headers with it;
//! and the client (`rd_kafka_t`) outlives every queue and message of it, which holding
//! the consumer's `Arc` ensures. rdkafka's `BorrowedHeaders` is a zero-sized view whose
//! address is librdkafka's headers pointer, the assumption `byte_headers` already states
//! and tests.
#![allow(unsafe_code)]

use std::ffi::{c_void, CString};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedHeaders, Message, OwnedMessage, Timestamp};
use rdkafka::types::RDKafkaRespErr;

/// The most records taken from the queue at once. Enough to spread the queue's lock and
/// clock reads over many records; small enough that the records taken and not yet handled
/// when a worker stops (they are read again by the partition's next owner) stay few.
pub(crate) const BATCH: usize = 64;

/// The callback a queue calls when it becomes non-empty, boxed twice so that a thin
/// pointer to it can travel through librdkafka's `void *` opaque.
type NonEmpty = Box<Box<dyn Fn() + Send + Sync>>;

/// A partition's queue, split from the consumer's, with the records taken from it and not
/// yet handed out.
pub(crate) struct BatchQueue<C: ConsumerContext + 'static> {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// The partition's topic: every record of the queue is of it, so a record's topic is
    /// read from here rather than from librdkafka (a call and a string length each time).
    topic: Arc<str>,
    /// Taken by the last batch read; `batch[next..filled]` are still to be handed out.
    batch: Box<[*mut rdsys::rd_kafka_message_t; BATCH]>,
    filled: usize,
    next: usize,
    /// `filled - next`, for the prefetched-records gauge: records that left librdkafka's
    /// queue (and its `fetchq_cnt`) but were not started.
    waiting: Arc<AtomicUsize>,
    nonempty: Option<NonEmpty>,
    /// Keeps the client alive for as long as the queue and its messages are: dropped
    /// after [`Drop::drop`] destroyed them.
    _consumer: Arc<BaseConsumer<C>>,
}

// SAFETY: librdkafka's queues are thread-safe, and the messages taken are owned by this
// value alone until handed out; nothing here is tied to the thread that created it.
unsafe impl<C: ConsumerContext> Send for BatchQueue<C> {}
// SAFETY: `&self` methods read nothing that another thread could change.
unsafe impl<C: ConsumerContext> Sync for BatchQueue<C> {}

impl<C: ConsumerContext + 'static> BatchQueue<C> {
    /// Splits the queue of `topic`'s `partition` from the consumer's: its records no
    /// longer reach the consumer's main queue. `waiting` is kept at the count of records
    /// taken from it and not yet handed out. `None` if librdkafka has no queue for it (a
    /// partition not assigned) or the name holds a NUL byte.
    pub(crate) fn split(
        consumer: &Arc<BaseConsumer<C>>,
        topic: &Arc<str>,
        partition: i32,
        waiting: Arc<AtomicUsize>,
    ) -> Option<Self> {
        let name = CString::new(&**topic).ok()?;
        // SAFETY: the client is alive (we hold it); librdkafka copies nothing from the
        // name beyond the call. The queue returned is ours to destroy.
        let queue = unsafe {
            rdsys::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                name.as_ptr(),
                partition,
            )
        };
        let queue = NonNull::new(queue)?;
        // SAFETY: `queue` is live; forwarding to no queue keeps its records in it.
        unsafe { rdsys::rd_kafka_queue_forward(queue.as_ptr(), ptr::null_mut()) };
        Some(BatchQueue {
            queue,
            topic: Arc::clone(topic),
            batch: Box::new([ptr::null_mut(); BATCH]),
            filled: 0,
            next: 0,
            waiting,
            nonempty: None,
            _consumer: Arc::clone(consumer),
        })
    }

    /// Calls `wake` (from one of librdkafka's threads) whenever the queue becomes
    /// non-empty.
    pub(crate) fn set_nonempty_callback(&mut self, wake: impl Fn() + Send + Sync + 'static) {
        unsafe extern "C" fn nonempty(_: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
            let wake = opaque.cast::<Box<dyn Fn() + Send + Sync>>();
            // SAFETY: `opaque` is the `NonEmpty` box below, alive until the callback is
            // replaced or disabled (in `drop`), which librdkafka does under the queue's
            // lock, so no call is under way once that returns.
            unsafe { (**wake)() }
        }
        let wake: NonEmpty = Box::new(Box::new(wake));
        // SAFETY: the queue is live; the opaque stays valid as long as it is registered
        // (it is kept in `self.nonempty` until replaced or until `drop` disables it).
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(
                self.queue.as_ptr(),
                Some(nonempty),
                ptr::from_ref::<Box<dyn Fn() + Send + Sync>>(&wake)
                    .cast_mut()
                    .cast(),
            );
        }
        self.nonempty = Some(wake);
    }

    /// The next record of the partition, or the error librdkafka queued in its place;
    /// `None` when the queue is empty. Never waits.
    pub(crate) fn next(&mut self) -> Option<KafkaResult<NativeMessage<'_>>> {
        if self.next == self.filled {
            // SAFETY: the queue is live; `batch` has room for `BATCH` pointers, and every
            // pointer of an earlier batch was handed out (next == filled).
            let read = unsafe {
                rdsys::rd_kafka_consume_batch_queue(
                    self.queue.as_ptr(),
                    0,
                    self.batch.as_mut_ptr(),
                    BATCH,
                )
            };
            // -1 is an error of the call itself (none is documented for a valid queue).
            self.filled = usize::try_from(read).unwrap_or(0).min(BATCH);
            self.next = 0;
            if self.filled == 0 {
                return None;
            }
        }
        let message = NonNull::new(self.batch[self.next]);
        self.batch[self.next] = ptr::null_mut();
        self.next += 1;
        self.waiting
            .store(self.filled - self.next, Ordering::Relaxed);
        let message = message?;
        // Parsed here, once: librdkafka parses a record's headers lazily, writing them into
        // the message, so reading them through a shared reference later must find them
        // parsed (see the `Sync` impl). A record whose headers cannot be parsed has none.
        let mut headers = ptr::null_mut();
        // SAFETY: a message from the batch read, live and not yet shared; the call writes
        // its parsed headers into it and their pointer to `headers`.
        let parsed = unsafe { rdsys::rd_kafka_message_headers(message.as_ptr(), &mut headers) };
        if parsed != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            headers = ptr::null_mut();
        }
        let message = NativeMessage {
            message,
            headers,
            topic: &self.topic,
        };
        // SAFETY: a message from the batch read, live until `message` is dropped.
        let error = unsafe { message.message.as_ref() }.err;
        if error == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Some(Ok(message));
        }
        // The same errors rdkafka's poll returns; the message is destroyed with `message`.
        Some(Err(match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                KafkaError::PartitionEOF(message.partition())
            }
            error => KafkaError::MessageConsumption(error.into()),
        }))
    }
}

impl<C: ConsumerContext + 'static> Drop for BatchQueue<C> {
    fn drop(&mut self) {
        for message in &mut self.batch[self.next..self.filled] {
            if !message.is_null() {
                // SAFETY: taken by the batch read and never handed out.
                unsafe { rdsys::rd_kafka_message_destroy(*message) };
                *message = ptr::null_mut();
            }
        }
        // SAFETY: the queue is live; disabling the callback before the box it points to
        // is dropped (after this body) means librdkafka never calls into freed memory.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

/// A record taken from a [`BatchQueue`], destroyed when dropped. Borrows the queue, so it
/// cannot outlive it (nor, therefore, the consumer).
pub(crate) struct NativeMessage<'q> {
    message: NonNull<rdsys::rd_kafka_message_t>,
    /// The record's headers, parsed when it was taken; null when it has none (or none
    /// librdkafka could parse).
    headers: *mut rdsys::rd_kafka_headers_t,
    /// The queue's topic, the record's.
    topic: &'q str,
}

// SAFETY: the message is read-only once consumed, and librdkafka lets any thread read or
// destroy it; this value alone owns it.
unsafe impl Send for NativeMessage<'_> {}
// SAFETY: as above; `&self` methods only read it: the one write librdkafka makes to a
// consumed message on a read (parsing its headers) was done in `BatchQueue::next`, before
// the message was handed out.
unsafe impl Sync for NativeMessage<'_> {}

impl NativeMessage<'_> {
    fn raw(&self) -> &rdsys::rd_kafka_message_t {
        // SAFETY: live until `self` is dropped.
        unsafe { self.message.as_ref() }
    }

    /// Stores the offset after this record (`offset + 1`, the next to read) for the
    /// background commit. Fails with `ERR__STATE` if the partition is no longer assigned.
    pub(crate) fn store_offset(&self) -> KafkaResult<()> {
        let raw = self.raw();
        // SAFETY: `rkt` is the message's topic handle, alive with the message.
        let error = unsafe { rdsys::rd_kafka_offset_store(raw.rkt, raw.partition, raw.offset) };
        if error == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            Ok(())
        } else {
            Err(KafkaError::StoreOffset(error.into()))
        }
    }

    /// A copy of the record that outlives the consumer (for the dead-letter writer).
    pub(crate) fn detach(&self) -> OwnedMessage {
        OwnedMessage::new(
            self.payload().map(<[u8]>::to_vec),
            self.key().map(<[u8]>::to_vec),
            self.topic().to_owned(),
            self.timestamp(),
            self.partition(),
            self.offset(),
            self.headers().map(BorrowedHeaders::detach),
        )
    }
}

impl Drop for NativeMessage<'_> {
    fn drop(&mut self) {
        // SAFETY: taken from a batch read, handed out once, destroyed once.
        unsafe { rdsys::rd_kafka_message_destroy(self.message.as_ptr()) };
    }
}

/// `len` bytes at `data`, or `None` for a null pointer.
///
/// # Safety
/// `data` must be null or point to `len` bytes that live as long as `'a`.
unsafe fn bytes<'a>(data: *mut c_void, len: usize) -> Option<&'a [u8]> {
    // SAFETY: as the caller promises.
    (!data.is_null()).then(|| unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
}

impl Message for NativeMessage<'_> {
    type Headers = BorrowedHeaders;

    fn key(&self) -> Option<&[u8]> {
        let raw = self.raw();
        // SAFETY: the key lives with the message.
        unsafe { bytes(raw.key, raw.key_len) }
    }

    fn payload(&self) -> Option<&[u8]> {
        let raw = self.raw();
        // SAFETY: the payload lives with the message.
        unsafe { bytes(raw.payload, raw.len) }
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        let raw = self.raw();
        // SAFETY: the payload lives with the message, which `&mut self` holds alone; the
        // caller takes on rdkafka's contract for writing into it.
        (!raw.payload.is_null())
            .then(|| unsafe { std::slice::from_raw_parts_mut(raw.payload.cast::<u8>(), raw.len) })
    }

    fn topic(&self) -> &str {
        self.topic
    }

    fn partition(&self) -> i32 {
        self.raw().partition
    }

    fn offset(&self) -> i64 {
        self.raw().offset
    }

    fn timestamp(&self) -> Timestamp {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: the message is live; the call only reads it and writes `kind`.
        let millis = unsafe { rdsys::rd_kafka_message_timestamp(self.message.as_ptr(), &mut kind) };
        match kind {
            _ if millis == -1 => Timestamp::NotAvailable,
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => {
                Timestamp::CreateTime(millis)
            }
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => {
                Timestamp::LogAppendTime(millis)
            }
            _ => Timestamp::NotAvailable,
        }
    }

    fn headers(&self) -> Option<&BorrowedHeaders> {
        if self.headers.is_null() {
            return None;
        }
        // SAFETY: `BorrowedHeaders` is rdkafka's zero-sized view of this very pointer
        // (rdkafka builds it the same way); the headers live as long as the message, and
        // the reference borrows `self`.
        Some(unsafe { &*self.headers.cast::<BorrowedHeaders>() })
    }
}
