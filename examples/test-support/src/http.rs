//! A minimal HTTP/1.1 client for the tests: one request a connection ([`exchange`],
//! [`call`], [`call_with`]), or one connection kept open ([`KeepAlive`]). Every exchange is
//! bounded by [`STEP`].

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::STEP;

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body parsed as JSON; `Value::Null` when empty or not JSON.
    pub body: Value,
    /// The body as text (lossily decoded UTF-8): for what is not JSON, such as `/metrics`.
    pub text: String,
}

impl Answer {
    /// An answer with `content`, the body after the head.
    fn new(head: Head, content: &[u8]) -> Answer {
        Answer {
            status: head.status,
            content_type: head.content_type,
            body: serde_json::from_slice(content).unwrap_or(Value::Null),
            text: String::from_utf8_lossy(content).into_owned(),
        }
    }
}

/// One HTTP/1.1 exchange on a new connection (`Connection: close`): `headers` and `body`
/// as given (a `Content-Length` is added), within [`STEP`]. An `Err` is a transport
/// failure: no connection, or the connection closed before a whole answer (as when the
/// service is killed).
///
/// # Errors
///
/// The transport failure, in words.
pub async fn exchange(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, String> {
    tokio::time::timeout(
        STEP,
        exchange_unbounded(address, method, path, headers, body),
    )
    .await
    .unwrap_or_else(|_| Err(format!("no answer to {method} {path} within {STEP:?}")))
}

async fn exchange_unbounded(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    // A server may answer (413) and close before reading all of a large body: a failed
    // write is not yet a failed exchange, the answer may be there to read.
    let written = stream.write_all(&bytes).await;
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer).await;
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(format!(
            "no whole answer (write: {written:?}, read: {read:?}, {} bytes)",
            answer.len()
        ));
    };
    let head = read_head(&String::from_utf8_lossy(&answer[..end]))?;
    let content = &answer[end + 4..];
    if let Some(length) = head.length {
        if content.len() < length {
            return Err(format!(
                "answer cut short: {} of {length} bytes",
                content.len()
            ));
        }
    }
    Ok(Answer::new(head, content))
}

/// A JSON exchange with `token` as bearer token, as [`call_with`] makes it.
pub async fn call(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let authorization = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .iter()
        .map(|value| ("Authorization", value.as_str()))
        .collect();
    call_with(address, method, path, &headers, body).await
}

/// A JSON exchange with `headers` (a `Content-Type: application/json` is added with a
/// body); fails the test on a transport failure, or when no answer came within [`STEP`].
pub async fn call_with(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let mut headers = headers.to_vec();
    let body = body.map(Value::to_string).unwrap_or_default();
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    exchange(address, method, path, &headers, body.as_bytes())
        .await
        .unwrap_or_else(|failure| panic!("{method} {path}: {failure}"))
}

/// What an answer's head says.
struct Head {
    status: u16,
    content_type: Option<String>,
    /// `Content-Length`, if given.
    length: Option<usize>,
    /// `Connection: close`: the server closes the connection after this answer.
    closes: bool,
}

/// The status line and the headers that matter here, from an answer's head (without the
/// blank line that ends it).
fn read_head(head: &str) -> Result<Head, String> {
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let mut fields = Head {
        status,
        content_type: None,
        length: None,
        closes: false,
    };
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-type") {
                fields.content_type = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("content-length") {
                fields.length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") {
                fields.closes = value.eq_ignore_ascii_case("close");
            }
        }
    }
    Ok(fields)
}

/// The bytes of a JSON request with `token` as bearer token, on a connection kept open.
fn json_request(method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n",
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
    request.into_bytes()
}

/// An HTTP/1.1 connection kept open from one exchange to the next, for a client that sends
/// many requests in a row (the load bench's), so that what it measures is the services'
/// work rather than a TCP handshake per request. The connection is opened at the first
/// exchange, and again after an answer that closed it or a failed exchange. Answers must
/// give their length in `Content-Length`, as the services' JSON answers do.
pub struct KeepAlive {
    address: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl KeepAlive {
    /// A client of the service at `address`; nothing is connected yet.
    pub fn new(address: SocketAddr) -> KeepAlive {
        KeepAlive {
            address,
            stream: None,
        }
    }

    /// A JSON exchange with `token` as bearer token, as [`call`] makes, on this connection,
    /// within [`STEP`]. Nothing is sent again after a failure: a POST may have been handled.
    ///
    /// # Errors
    ///
    /// The transport failure, in words (the connection is then dropped).
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        let request = json_request(method, path, token, body);
        let answer = tokio::time::timeout(STEP, self.exchange(&request))
            .await
            .unwrap_or_else(|_| Err(format!("no answer to {method} {path} within {STEP:?}")));
        if answer.is_err() {
            // Where the stream stands after a failure is unknown: the next exchange opens
            // a new connection.
            self.stream = None;
        }
        answer
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<Answer, String> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(self.address)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                // Requests are small and sent whole: no reason to wait for more to batch.
                stream
                    .set_nodelay(true)
                    .map_err(|e| format!("nodelay: {e}"))?;
                self.stream.insert(BufReader::new(stream))
            }
        };
        stream
            .get_mut()
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let read = stream
                .read_line(&mut line)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if read == 0 {
                return Err(format!("connection closed after {head:?}"));
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let head = read_head(&head)?;
        let length = head
            .length
            .ok_or_else(|| format!("a {} answer without Content-Length", head.status))?;
        let mut content = vec![0; length];
        stream
            .read_exact(&mut content)
            .await
            .map_err(|e| format!("answer cut short: {e}"))?;
        if head.closes {
            self.stream = None;
        }
        Ok(Answer::new(head, &content))
    }
}
