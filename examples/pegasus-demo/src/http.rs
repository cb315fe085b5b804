//! A minimal HTTP/1.1 client for the demo's own calls to the services it started: one
//! request per connection (`Connection: close`), each bounded by [`REQUEST_TIMEOUT`], the
//! answer read whole up to [`MAX_RESPONSE_BYTES`].
//!
//! Why not a client crate: the demo talks only to the two services of this workspace, on
//! loopback, without TLS, redirects or keep-alive; this is all it needs, and it adds no
//! dependency to the build (the tests of the services do the same).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request may take, connection and answer included.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest answer read; `/metrics` of a busy process is the biggest, far below it.
const MAX_RESPONSE_BYTES: u64 = 8 << 20;

/// An answer: its status and its body as text.
#[derive(Clone, Debug)]
pub(crate) struct Response {
    /// The status code, e.g. 201.
    pub(crate) status: u16,
    /// The body, decoded as UTF-8 (lossily: the services answer JSON or text).
    pub(crate) body: String,
}

impl Response {
    /// The body as JSON; `Value::Null` when it is not JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The string at `pointer` (RFC 6901, e.g. `/shipment/id`) in the JSON body.
    pub(crate) fn text_at(&self, pointer: &str) -> Option<String> {
        self.json()
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

impl fmt::Display for Response {
    /// `403 {"error":...}`, the body cut after 300 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body: String = self.body.chars().take(300).collect();
        let more = if body.len() < self.body.len() {
            "..."
        } else {
            ""
        };
        write!(f, "{} {}{more}", self.status, body.trim_end())
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// Connecting, writing or reading failed.
    #[error("{method} http://{address}{path}: {source}")]
    Io {
        /// The request's method.
        method: String,
        /// Where it went.
        address: SocketAddr,
        /// Its path.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("{method} http://{address}{path}: no answer within {} s", REQUEST_TIMEOUT.as_secs())]
    TimedOut {
        /// The request's method.
        method: String,
        /// Where it went.
        address: SocketAddr,
        /// Its path.
        path: String,
    },
    /// The answer was not HTTP/1.1 as expected.
    #[error("{method} http://{address}{path}: malformed answer: {reason}")]
    Malformed {
        /// The request's method.
        method: String,
        /// Where it went.
        address: SocketAddr,
        /// Its path.
        path: String,
        /// What was wrong.
        reason: &'static str,
    },
}

/// Sends `method path` to `address` with an optional bearer token and JSON body, and reads
/// the answer.
pub(crate) async fn call(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<Response, HttpError> {
    let request = encode(address, method, path, token, body);
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut answer)
            .await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(source)) => {
            return Err(HttpError::Io {
                method: method.to_owned(),
                address,
                path: path.to_owned(),
                source,
            })
        }
        Err(_) => {
            return Err(HttpError::TimedOut {
                method: method.to_owned(),
                address,
                path: path.to_owned(),
            })
        }
    };
    decode(&answer).map_err(|reason| HttpError::Malformed {
        method: method.to_owned(),
        address,
        path: path.to_owned(),
        reason,
    })
}

fn encode(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> String {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    request.push_str(&body);
    request
}

/// The status and body of a whole HTTP/1.1 answer, a chunked body decoded.
fn decode(answer: &[u8]) -> Result<Response, &'static str> {
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&answer[..head_end]).map_err(|_| "headers not UTF-8")?;
    let raw_body = &answer[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("no status line")?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(raw_body)?
    } else {
        raw_body.to_vec()
    };
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without its size line")?;
        let size_line = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("a chunk cut short")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("a chunk cut short")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_and_a_chunked_answer_are_decoded() {
        let plain = decode(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}").expect("ok");
        assert_eq!((plain.status, plain.body.as_str()), (201, "{}"));
        let chunked = decode(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .expect("ok");
        assert_eq!((chunked.status, chunked.body.as_str()), (200, "abcde"));
    }

    #[test]
    fn a_malformed_answer_is_an_error_not_a_panic() {
        assert!(decode(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(decode(b"garbage\r\n\r\n").is_err());
        assert!(decode(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(decode(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc").is_err());
    }
}
