//! W3C Trace Context (`traceparent`, `tracestate`) as bytes on the wire: parsed leniently
//! where the recommendation allows it, written strictly, and never trusted in size.
//!
//! Parsing follows the recommendation's rules for a receiver: version `ff` is invalid;
//! version `00` is exactly 55 characters; a later version may be longer, with a `-` after
//! the flags, and is read as far as version `00` defines it. Hex digits are lowercase (as
//! the recommendation and every OpenTelemetry propagator require); an all-zero trace id or
//! parent id is invalid. Surrounding spaces and tabs are ignored. A `tracestate` is kept
//! only beside a valid `traceparent`, and only when it is at most
//! [`MAX_TRACESTATE_BYTES`] of visible ASCII with at most 32 list members; otherwise it is
//! dropped and the `traceparent` still counts.
//!
//! Writing is strict: a `traceparent` or `tracestate` an application gives in
//! [`PublishMetadata`](crate::PublishMetadata) is checked by [`check_outgoing`] before
//! anything is published or stored in the outbox, and refused with
//! [`Error::InvalidTraceContext`](crate::Error::InvalidTraceContext) when it is not valid:
//! a header from us must parse with every other implementation. A `traceparent` is
//! written as version `00`, as [`TraceParent::to_header`] formats it; a `tracestate` must
//! follow the recommendation's list grammar, not only be bounded.

use std::fmt;

/// The longest `tracestate` kept: the recommendation asks vendors to propagate at least
/// 512 characters, and a header from the wire becomes a span attribute, so it is bounded.
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// The most list members a `tracestate` may have (the recommendation's limit).
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A parsed `traceparent`: the trace, the parent span and the flags (bit 0: sampled).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace id; never all zero.
    pub trace_id: [u8; 16],
    /// The parent span's id; never all zero.
    pub span_id: [u8; 8],
    /// The trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// Why a `traceparent` or `tracestate` header was not accepted. The text of each variant
/// is a fixed word, safe as a metric label: it never carries the header's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidTraceContext {
    /// Too short, too long for version `00`, or a later version without `-` after the flags.
    Length,
    /// A `-` missing between the fields.
    Separator,
    /// A character that is not a lowercase hex digit where one is required.
    Hex,
    /// Version `ff`, which the recommendation forbids.
    Version,
    /// An all-zero trace id.
    ZeroTraceId,
    /// An all-zero parent id.
    ZeroSpanId,
    /// A `tracestate` over [`MAX_TRACESTATE_BYTES`], with more than 32 members, or with
    /// characters outside visible ASCII.
    TraceState,
    /// A header value that is not UTF-8 text.
    NotText,
    /// A `tracestate` given to write without a `traceparent`: the recommendation ties the
    /// state to its parent (a receiver ignores one without the other), and the context
    /// written in its place would carry its own.
    TraceStateWithoutTraceParent,
}

impl InvalidTraceContext {
    /// A fixed word for the reason, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidTraceContext::Length => "length",
            InvalidTraceContext::Separator => "separator",
            InvalidTraceContext::Hex => "hex",
            InvalidTraceContext::Version => "version",
            InvalidTraceContext::ZeroTraceId => "zero_trace_id",
            InvalidTraceContext::ZeroSpanId => "zero_span_id",
            InvalidTraceContext::TraceState => "tracestate",
            InvalidTraceContext::NotText => "not_text",
            InvalidTraceContext::TraceStateWithoutTraceParent => "tracestate_without_traceparent",
        }
    }

    /// The reason in words, for error messages: fixed text, never the header's value.
    pub fn describe(self) -> &'static str {
        match self {
            InvalidTraceContext::Length => "wrong length",
            InvalidTraceContext::Separator => "a `-` missing between the fields",
            InvalidTraceContext::Hex => "bad hex (lowercase hex digits are required)",
            InvalidTraceContext::Version => "version ff is forbidden",
            InvalidTraceContext::ZeroTraceId => "an all-zero trace id",
            InvalidTraceContext::ZeroSpanId => "an all-zero parent id",
            InvalidTraceContext::TraceState => {
                "not a list of at most 32 `key=value` members in at most 512 bytes of visible ASCII"
            }
            InvalidTraceContext::NotText => "not UTF-8 text",
            InvalidTraceContext::TraceStateWithoutTraceParent => "given without a traceparent",
        }
    }
}

impl fmt::Display for InvalidTraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Length of a version-00 `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
pub const TRACEPARENT_LEN: usize = 55;

impl TraceParent {
    /// Parses a `traceparent` header value (see the module docs for what is accepted).
    pub fn parse(value: &[u8]) -> Result<TraceParent, InvalidTraceContext> {
        let value = trim(value);
        if value.len() < TRACEPARENT_LEN {
            return Err(InvalidTraceContext::Length);
        }
        let version = hex_byte(&value[0..2])?;
        if version == 0xff {
            return Err(InvalidTraceContext::Version);
        }
        if version == 0 && value.len() != TRACEPARENT_LEN {
            return Err(InvalidTraceContext::Length);
        }
        if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' {
            return Err(InvalidTraceContext::Length);
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return Err(InvalidTraceContext::Separator);
        }
        let mut trace_id = [0u8; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, byte) in span_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] {
            return Err(InvalidTraceContext::ZeroTraceId);
        }
        if span_id == [0; 8] {
            return Err(InvalidTraceContext::ZeroSpanId);
        }
        Ok(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The header value, version `00`, lowercase: exactly what the recommendation specifies.
    /// Only the sampled bit of the flags is written; the others are not defined by version
    /// `00`.
    pub fn to_header(&self) -> TraceParentText {
        let mut text = [0u8; TRACEPARENT_LEN];
        text[0] = b'0';
        text[1] = b'0';
        text[2] = b'-';
        write_hex(&self.trace_id, &mut text[3..35]);
        text[35] = b'-';
        write_hex(&self.span_id, &mut text[36..52]);
        text[52] = b'-';
        write_hex(&[self.flags & 0x01], &mut text[53..55]);
        TraceParentText(text)
    }

    /// Whether the sampled flag is set.
    pub fn is_sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_header().as_str())
    }
}

/// A `traceparent` formatted on the stack (55 ASCII characters).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceParentText([u8; TRACEPARENT_LEN]);

impl TraceParentText {
    /// The header value.
    pub fn as_str(&self) -> &str {
        // Written from ASCII digits and hyphens only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for TraceParentText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a `tracestate` header value from the wire and returns it trimmed, or why it is
/// dropped. Members are not parsed further here; with the `opentelemetry` feature the
/// OpenTelemetry API parses them when the context is built.
pub fn check_tracestate(value: &[u8]) -> Result<&str, InvalidTraceContext> {
    let value = trim(value);
    if value.len() > MAX_TRACESTATE_BYTES
        || !value
            .iter()
            .all(|b| (0x20..=0x7e).contains(b) || *b == b'\t')
        || value.iter().filter(|b| **b == b',').count() >= MAX_TRACESTATE_MEMBERS
    {
        return Err(InvalidTraceContext::TraceState);
    }
    std::str::from_utf8(value).map_err(|_| InvalidTraceContext::NotText)
}

/// Checks the trace context an application gives to be written (`PublishMetadata`'s
/// `traceparent` and `tracestate`), strictly: the `traceparent` must parse (see the module
/// docs), and the `tracestate`, which needs a `traceparent` beside it, must be bounded as
/// [`check_tracestate`] requires and follow the recommendation's grammar (list members
/// `key=value`, keys lowercase, no duplicate key). On failure, returns the header's name
/// and why.
pub fn check_outgoing(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Result<(), (&'static str, InvalidTraceContext)> {
    const TRACEPARENT: &str = crate::wire::header::TRACEPARENT;
    const TRACESTATE: &str = crate::wire::header::TRACESTATE;
    match (traceparent, tracestate) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err((
            TRACESTATE,
            InvalidTraceContext::TraceStateWithoutTraceParent,
        )),
        (Some(parent), state) => {
            TraceParent::parse(parent.as_bytes()).map_err(|reason| (TRACEPARENT, reason))?;
            match state {
                Some(state) => {
                    check_tracestate_grammar(state).map_err(|reason| (TRACESTATE, reason))
                }
                None => Ok(()),
            }
        }
    }
}

/// The recommendation's `tracestate` grammar (section 3.3.1), on a value already bounded
/// by [`check_tracestate`]: `list-member 0*31( OWS "," OWS list-member )`, where a member
/// is `key "=" value` or empty, and each key appears once.
fn check_tracestate_grammar(value: &str) -> Result<(), InvalidTraceContext> {
    let value = check_tracestate(value.as_bytes())?;
    let invalid = InvalidTraceContext::TraceState;
    let mut keys: [&str; MAX_TRACESTATE_MEMBERS] = [""; MAX_TRACESTATE_MEMBERS];
    let mut count = 0;
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, member_value) = member.split_once('=').ok_or(invalid)?;
        if !is_tracestate_key(key) || !is_tracestate_value(member_value) {
            return Err(invalid);
        }
        if keys[..count].contains(&key) {
            return Err(invalid);
        }
        // check_tracestate allows at most 32 members, so `count` stays in bounds.
        keys[count] = key;
        count += 1;
    }
    Ok(())
}

/// `simple-key` or `tenant-id "@" system-id`.
fn is_tracestate_key(key: &str) -> bool {
    let key = key.as_bytes();
    let rest = |part: &[u8]| {
        part.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
        })
    };
    match key.iter().position(|b| *b == b'@') {
        None => {
            key.len() <= 256 && key.first().is_some_and(u8::is_ascii_lowercase) && rest(&key[1..])
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && tenant
                    .first()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && rest(&tenant[1..])
                && (1..=14).contains(&system.len())
                && system.first().is_some_and(u8::is_ascii_lowercase)
                && rest(&system[1..])
        }
    }
}

/// `0*255(chr) nblk-chr`: printable ASCII without `,` and `=`, not ending in a space.
fn is_tracestate_value(value: &str) -> bool {
    let value = value.as_bytes();
    (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|b| (0x20..=0x7e).contains(b) && *b != b',' && *b != b'=')
        && value.last() != Some(&b' ')
}

fn trim(value: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

fn hex_digit(c: u8) -> Result<u8, InvalidTraceContext> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(InvalidTraceContext::Hex),
    }
}

fn hex_byte(pair: &[u8]) -> Result<u8, InvalidTraceContext> {
    Ok(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?)
}

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_recommendations_example_parses_and_is_written_back_byte_for_byte() {
        let parsed = TraceParent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(parsed.trace_id[0], 0x4b);
        assert_eq!(parsed.span_id[7], 0xb7);
        assert!(parsed.is_sampled());
        assert_eq!(parsed.to_header().as_str(), VALID);
    }

    #[test]
    fn a_later_version_is_read_as_far_as_version_00_defines_it_and_written_as_00() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-adds";
        let parsed = TraceParent::parse(later.as_bytes()).unwrap();
        assert_eq!(
            parsed.to_header().as_str(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "only the sampled bit is written"
        );
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        let padded = format!(" \t{VALID} ");
        assert!(TraceParent::parse(padded.as_bytes()).is_ok());
    }

    #[test]
    fn each_malformed_traceparent_is_refused_with_its_reason() {
        let cases: &[(&str, InvalidTraceContext)] = &[
            ("", InvalidTraceContext::Length),
            (&VALID[..54], InvalidTraceContext::Length),
            (&format!("{VALID}-"), InvalidTraceContext::Length),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                InvalidTraceContext::Length,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                InvalidTraceContext::Version,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                InvalidTraceContext::Separator,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                InvalidTraceContext::Hex,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                InvalidTraceContext::Hex,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                InvalidTraceContext::ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                InvalidTraceContext::ZeroSpanId,
            ),
        ];
        for (value, reason) in cases {
            assert_eq!(
                TraceParent::parse(value.as_bytes()),
                Err(*reason),
                "{value:?}"
            );
        }
        // Multi-byte UTF-8 where hex is expected is refused, never sliced mid-character.
        let wide = "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01";
        assert!(TraceParent::parse(wide.as_bytes()).is_err());
    }

    #[test]
    fn a_context_given_to_write_is_refused_with_its_header_and_reason_unless_valid() {
        use InvalidTraceContext as Why;
        let ok: &[(Option<&str>, Option<&str>)] = &[
            (None, None),
            (Some(VALID), None),
            (Some(VALID), Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")),
            (Some(VALID), Some("tenant1@vendor=v, ,k2=a b")),
        ];
        for (parent, state) in ok {
            assert_eq!(
                check_outgoing(*parent, *state),
                Ok(()),
                "{parent:?} {state:?}"
            );
        }
        let long = "k=".to_owned() + &"v".repeat(600);
        type Case<'a> = (Option<&'a str>, Option<&'a str>, (&'a str, Why));
        let refused: &[Case<'_>] = &[
            (Some(&VALID[..54]), None, ("traceparent", Why::Length)),
            (
                Some("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"),
                None,
                ("traceparent", Why::Hex),
            ),
            (
                Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
                None,
                ("traceparent", Why::ZeroTraceId),
            ),
            (Some("garbage"), Some("k=v"), ("traceparent", Why::Length)),
            (
                None,
                Some("k=v"),
                ("tracestate", Why::TraceStateWithoutTraceParent),
            ),
            (Some(VALID), Some(&long), ("tracestate", Why::TraceState)),
            (
                Some(VALID),
                Some("novalue"),
                ("tracestate", Why::TraceState),
            ),
            (
                Some(VALID),
                Some("Upper=v"),
                ("tracestate", Why::TraceState),
            ),
            (Some(VALID), Some("k=v=w"), ("tracestate", Why::TraceState)),
            (
                Some(VALID),
                Some("k=v,k=w"),
                ("tracestate", Why::TraceState),
            ),
            (Some(VALID), Some("k=v\n"), ("tracestate", Why::TraceState)),
        ];
        for (parent, state, expected) in refused {
            assert_eq!(
                check_outgoing(*parent, *state),
                Err(*expected),
                "{parent:?} {state:?}"
            );
        }
    }

    #[test]
    fn a_tracestate_is_kept_only_when_bounded_visible_ascii() {
        assert_eq!(
            check_tracestate(b" rojo=00f067aa0ba902b7 "),
            Ok("rojo=00f067aa0ba902b7")
        );
        assert_eq!(
            check_tracestate(&vec![b'a'; MAX_TRACESTATE_BYTES + 1]),
            Err(InvalidTraceContext::TraceState)
        );
        let many = vec!["k=v"; 33].join(",");
        assert_eq!(
            check_tracestate(many.as_bytes()),
            Err(InvalidTraceContext::TraceState)
        );
        assert_eq!(
            check_tracestate(b"k=v\n"),
            Err(InvalidTraceContext::TraceState)
        );
    }
}
