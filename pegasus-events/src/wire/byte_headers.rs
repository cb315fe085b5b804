//! Reading a record's headers as bytes, names included.
//!
//! # Guarantee
//!
//! Reading headers never panics, whatever bytes a producer put into a header name or
//! value. Kafka header names are UTF-8 by the protocol's convention only: librdkafka's C
//! API and raw produce requests accept any bytes. rdkafka 0.39's `Headers::try_get`
//! unwraps a name as UTF-8 and panics on anything else, so this crate never calls it on a
//! received record; it reads names and values through librdkafka's own
//! `rd_kafka_header_get_all`, behind the safe [`ByteHeaders`] trait.
//!
//! This is the one module of the crate with `unsafe` code. Its two assumptions are
//! checked by the unit tests below on every build: rdkafka's `BorrowedHeaders` is a
//! zero-sized view whose address is librdkafka's `rd_kafka_headers_t` pointer (rdkafka
//! creates it by casting that pointer), and `rd_kafka_header_get_all` returns a
//! NUL-terminated name and a value of the size it reports, valid while the headers live.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::ptr;

use rdkafka::bindings::{rd_kafka_header_get_all, rd_kafka_headers_t};
use rdkafka::message::{BorrowedHeaders, Headers, OwnedHeaders};
use rdkafka::types::RDKafkaRespErr;

/// One header of a record, as the bytes it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderBytes<'a> {
    /// The header's name, up to its first NUL byte (librdkafka stores names
    /// NUL-terminated).
    pub name: &'a [u8],
    /// The header's value; `None` for a null value (not the same as an empty one).
    pub value: Option<&'a [u8]>,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for rdkafka::message::BorrowedHeaders {}
    impl Sealed for rdkafka::message::OwnedHeaders {}
}

/// Headers readable as bytes: rdkafka's [`BorrowedHeaders`] (a record from a consumer)
/// and [`OwnedHeaders`] (a detached record). Sealed: these are the header types of
/// rdkafka's two message types.
pub trait ByteHeaders: Headers + sealed::Sealed {
    /// The header at `index`, or `None` past the last one.
    fn bytes_at(&self, index: usize) -> Option<HeaderBytes<'_>>;

    /// Every header, in the order they were written.
    fn iter_bytes(&self) -> impl Iterator<Item = HeaderBytes<'_>> {
        (0..self.count()).map_while(move |index| self.bytes_at(index))
    }
}

impl ByteHeaders for BorrowedHeaders {
    fn bytes_at(&self, index: usize) -> Option<HeaderBytes<'_>> {
        // librdkafka casts the index to `int` and checks only the upper bound, so an index
        // past `i32::MAX` would read before the list: bound it here.
        if index >= self.count() {
            return None;
        }
        // rdkafka builds a `&BorrowedHeaders` by casting librdkafka's headers pointer
        // (`BorrowedHeaders::from_native_ptr`), so the reference's address is that pointer.
        let native = ptr::from_ref(self).cast::<rd_kafka_headers_t>();
        let mut name = ptr::null();
        let mut value = ptr::null();
        let mut size = 0usize;
        // SAFETY: `native` is a live `rd_kafka_headers_t` for as long as `self` is
        // borrowed (see above); `index` is below its count (checked above); the call only
        // reads it and writes the three out-pointers, which point to locals.
        let error =
            unsafe { rd_kafka_header_get_all(native, index, &mut name, &mut value, &mut size) };
        if error != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: librdkafka stores each name NUL-terminated inside the headers, which
        // outlive the returned borrow of `self`.
        let name = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = (!value.is_null()).then(|| {
            // SAFETY: `value` points to `size` bytes inside the headers, alive as above.
            unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }
        });
        Some(HeaderBytes { name, value })
    }
}

impl ByteHeaders for OwnedHeaders {
    fn bytes_at(&self, index: usize) -> Option<HeaderBytes<'_>> {
        self.as_borrowed().bytes_at(index)
    }
}

/// `headers` with one more header named `name`, whatever its bytes (rdkafka takes names
/// as `&str` only): for tests that play a client that writes such names.
#[cfg(test)]
pub(crate) fn with_raw_header(
    headers: OwnedHeaders,
    name: &[u8],
    value: Option<&[u8]>,
) -> OwnedHeaders {
    let native = ptr::from_ref(headers.as_borrowed())
        .cast_mut()
        .cast::<rd_kafka_headers_t>();
    let (value_ptr, value_len) = value.map_or((ptr::null(), 0), |v| (v.as_ptr(), v.len()));
    // SAFETY: `native` is the live headers of `headers` (see `bytes_at`); librdkafka
    // copies the name and the value it is given (a null value stays null).
    let error = unsafe {
        rdkafka::bindings::rd_kafka_header_add(
            native,
            name.as_ptr().cast(),
            isize::try_from(name.len()).unwrap_or(isize::MAX),
            value_ptr.cast(),
            isize::try_from(value_len).unwrap_or(isize::MAX),
        )
    };
    assert_eq!(error, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR);
    headers
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Header;

    use super::*;

    #[test]
    fn byte_reading_agrees_with_rdkafkas_own_reader_on_utf8_headers() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "ce_id",
                value: Some("0190a4b2-7c1e-7000-8000-000000000001"),
            })
            .insert(Header::<&[u8]> {
                key: "empty",
                value: Some(b""),
            })
            .insert(Header::<&[u8]> {
                key: "null",
                value: None,
            })
            .insert(Header::<&[u8]> {
                key: "binary",
                value: Some(&[0, 255, 0xc3, 0x28]),
            });
        let ours: Vec<HeaderBytes<'_>> = headers.iter_bytes().collect();
        let theirs: Vec<(&[u8], Option<&[u8]>)> = headers
            .iter()
            .map(|h| (h.key.as_bytes(), h.value))
            .collect();
        assert_eq!(ours.len(), 4);
        assert_eq!(
            ours.iter().map(|h| (h.name, h.value)).collect::<Vec<_>>(),
            theirs
        );
        assert_eq!(ours[1].value, Some(&b""[..]));
        assert_eq!(ours[2].value, None);
        assert_eq!(headers.bytes_at(4), None);
        assert_eq!(headers.bytes_at(usize::MAX), None);
        assert_eq!(OwnedHeaders::new().iter_bytes().count(), 0);
    }

    #[test]
    fn a_header_name_that_is_not_utf8_is_read_as_its_bytes() {
        let headers = OwnedHeaders::new().insert(Header {
            key: "ce_type",
            value: Some("UserCreatedEvent"),
        });
        let name: &[u8] = &[b'c', b'e', 0xff, 0xfe];
        let headers = with_raw_header(headers, name, Some(b"v"));
        let read: Vec<HeaderBytes<'_>> = headers.iter_bytes().collect();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].name, b"ce_type");
        assert_eq!(read[1].name, name);
        assert_eq!(read[1].value, Some(&b"v"[..]));
    }
}
