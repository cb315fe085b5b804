//! Times as the contract writes them (RFC 3339 UTC, milliseconds) and reads them (any
//! RFC 3339 time), without heap allocation on the common path.

use std::fmt;

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::error::{Error, Result};

/// A fixed-capacity string on the stack, so formatting ids and times allocates nothing.
pub(crate) struct StackStr<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    pub(crate) const fn new() -> Self {
        StackStr {
            bytes: [0; N],
            len: 0,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in, so the prefix is valid UTF-8.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Formats `time` as RFC 3339 in UTC with milliseconds (`2026-01-15T10:30:00.123Z`).
///
/// Every publish writes one, so the digits are placed by hand: `write!` with seven
/// formatted numbers cost several times as much in the publish bench's profile.
pub(crate) fn format_time(time: &DateTime<Utc>) -> StackStr<32> {
    // Years past 9999 do not fit RFC 3339; clamp rather than fail a publish.
    let year = u32::try_from(time.year().clamp(0, 9999)).unwrap_or(0);
    let fields = [
        (year, 4, b'-'),
        (time.month(), 2, b'-'),
        (time.day(), 2, b'T'),
        (time.hour(), 2, b':'),
        (time.minute(), 2, b':'),
        (time.second().min(59), 2, b'.'),
        ((time.nanosecond() % 1_000_000_000) / 1_000_000, 3, b'Z'),
    ];
    let mut out = StackStr::new();
    let mut at = 0;
    for (value, width, separator) in fields {
        let mut rest = value;
        for i in (0..width).rev() {
            out.bytes[at + i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.bytes[at + width] = separator;
        at += width + 1;
    }
    out.len = at;
    out
}

/// `value` in decimal with no leading zeros: the `ce_schemaversion` text, written on every
/// publish without the formatting machinery.
pub(crate) fn decimal(value: u32) -> StackStr<10> {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut out = StackStr::new();
    let len = digits.len() - start;
    out.bytes[..len].copy_from_slice(&digits[start..]);
    out.len = len;
    out
}

/// The record's timestamp (create or log-append time), the time of an event that carries
/// none; the Unix epoch when the record has no timestamp either.
pub(super) fn record_time<M: rdkafka::message::Message>(message: &M) -> DateTime<Utc> {
    message
        .timestamp()
        .to_millis()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_default()
}

/// A time as the design's .NET services may write `OccurredAt`: RFC 3339, or a date and
/// time without an offset (a .NET `DateTime` of unspecified kind), taken as UTC.
pub(super) fn parse_time_loosely(name: &'static str, value: &str) -> Result<DateTime<Utc>> {
    parse_time(name, value).or_else(|error| {
        chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
            .map(|naive| naive.and_utc())
            .map_err(|_| error)
    })
}

pub(super) fn parse_time(name: &'static str, value: &str) -> Result<DateTime<Utc>> {
    if let Some(time) = parse_utc_time_fast(value.as_bytes()) {
        return Ok(time);
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| Error::MalformedHeader {
            header: name,
            reason: "not an RFC 3339 time".to_owned(),
        })
}

/// Parses the shape this library (and most CloudEvents SDKs) writes,
/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, without chrono's general RFC 3339 parser, which costs
/// a noticeable share of decoding a record. Anything else returns `None` and goes through
/// chrono.
fn parse_utc_time_fast(text: &[u8]) -> Option<DateTime<Utc>> {
    fn digits(text: &[u8], from: usize, len: usize) -> Option<u32> {
        text.get(from..from + len)?.iter().try_fold(0u32, |acc, b| {
            b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
        })
    }
    if text.len() < 20 || text[text.len() - 1] != b'Z' {
        return None;
    }
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, sep)| text[at] != sep) {
        return None;
    }
    let year = i32::try_from(digits(text, 0, 4)?).ok()?;
    let (month, day) = (digits(text, 5, 2)?, digits(text, 8, 2)?);
    let (hour, minute, second) = (
        digits(text, 11, 2)?,
        digits(text, 14, 2)?,
        digits(text, 17, 2)?,
    );
    let nanos = match text.len() - 20 {
        0 => 0,
        fraction_len @ 2..=10 if text[19] == b'.' => {
            let digits_len = fraction_len - 1;
            digits(text, 20, digits_len)? * 10u32.pow(9 - digits_len as u32)
        }
        _ => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(year, month, day)?;
    let time = chrono::NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(date.and_time(time).and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_time_parser_agrees_with_chrono_and_declines_other_shapes() {
        for text in [
            "2026-01-15T10:30:00Z",
            "2026-01-15T10:30:00.1Z",
            "2026-01-15T10:30:00.123Z",
            "2026-01-15T10:30:00.123456Z",
            "2026-01-15T10:30:00.123456789Z",
            "2024-02-29T23:59:59.999Z",
        ] {
            let chrono = DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc);
            assert_eq!(parse_utc_time_fast(text.as_bytes()), Some(chrono), "{text}");
        }
        for text in [
            "2026-01-15T10:30:00+02:00",
            "2026-01-15 10:30:00Z",
            "2026-02-30T10:30:00Z",
            "2026-01-15T10:30:00.Z",
            "2026-01-15T25:30:00Z",
            "2026-01-15T10:30:00.1234567890Z",
            "20260115T103000Z",
        ] {
            assert_eq!(parse_utc_time_fast(text.as_bytes()), None, "{text}");
        }
        let offset = parse_time("ce_time", "2026-01-15T12:30:00+02:00").unwrap();
        assert_eq!(
            offset,
            parse_time("ce_time", "2026-01-15T10:30:00Z").unwrap()
        );
    }

    #[test]
    fn written_times_match_chrono_to_the_millisecond_across_years_and_fields() {
        use chrono::SecondsFormat;
        for text in [
            "0000-01-01T00:00:00Z",
            "0001-02-03T04:05:06.007Z",
            "1999-12-31T23:59:59.999999999Z",
            "2026-01-15T10:30:00.123456Z",
            "9999-12-31T23:59:59.999Z",
        ] {
            let time = DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc);
            assert_eq!(
                format_time(&time).as_str(),
                time.to_rfc3339_opts(SecondsFormat::Millis, true),
                "{text}"
            );
        }
        let far = DateTime::<Utc>::MAX_UTC;
        assert!(format_time(&far).as_str().starts_with("9999-"));
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_milli_opt(23, 59, 59, 1_500)
            .unwrap()
            .and_utc();
        assert_eq!(format_time(&leap).as_str(), "2016-12-31T23:59:59.500Z");
    }

    #[test]
    fn schema_versions_are_plain_decimal() {
        for value in [1, 9, 10, 42, 1_000_000, u32::MAX] {
            assert_eq!(decimal(value).as_str(), value.to_string());
        }
    }

    #[test]
    fn written_times_read_back_exactly_to_the_millisecond() {
        let time = DateTime::parse_from_rfc3339("2026-01-15T10:30:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let written = format_time(&time);
        assert_eq!(written.as_str(), "2026-01-15T10:30:00.123Z");
        let read = parse_time("ce_time", written.as_str()).unwrap();
        assert_eq!(read.timestamp_millis(), time.timestamp_millis());
    }
}
