//! A lean HTTP/1.1 keep-alive client for the load generator.
//!
//! The generator shares the machine's cores with the server it measures, so every
//! microsecond it spends per request is taken from the server. A general-purpose client
//! (connection pool, header maps, body streams) cost about 70 µs of CPU per request here,
//! more than a cached Nimbus query costs the server. This client keeps one connection per
//! server per load connection, writes each request with one `write` call, parses the
//! response head with `httparse` and reads exactly the body (`Content-Length` or chunked).
//! It speaks plain HTTP/1.1 to loopback only; anything it does not understand is an error,
//! never a guess.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Response headers parsed at most.
const MAX_HEADERS: usize = 64;

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    /// `host:port`, also the `Host` header.
    pub(crate) authority: String,
    /// Starts with `/`; includes the query string.
    pub(crate) path: String,
}

impl Url {
    pub(crate) fn parse(url: &str) -> Result<Url> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("only http:// URLs are supported: {url}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("no host in {url}");
        }
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Url {
            authority,
            path: path.to_string(),
        })
    }
}

/// One keep-alive connection; reconnects after an error or `Connection: close`.
pub(crate) struct Connection {
    authority: String,
    stream: Option<TcpStream>,
    out: Vec<u8>,
    /// Bytes read but not consumed yet (a response never spans two requests, but a read
    /// may return the head and part of the body together).
    inbuf: Vec<u8>,
    timeout: Duration,
}

/// A response: status and body bytes (valid until the next request).
pub(crate) struct Response<'a> {
    pub(crate) status: u16,
    pub(crate) body: &'a [u8],
}

impl Connection {
    pub(crate) fn new(authority: &str, timeout: Duration) -> Connection {
        Connection {
            authority: authority.to_string(),
            stream: None,
            out: Vec::with_capacity(1024),
            inbuf: Vec::with_capacity(16 * 1024),
            timeout,
        }
    }

    /// Sends one request and reads its whole response. On any error the connection is
    /// dropped (the next request opens a new one).
    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response<'_>> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(method, path, body)).await {
            Ok(Ok((status, start, end, keep_alive))) => {
                if !keep_alive {
                    self.stream = None;
                }
                Ok(Response {
                    status,
                    body: &self.inbuf[start..end],
                })
            }
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(anyhow!(TimedOut(timeout)))
            }
        }
    }

    /// Returns the status, the body's range in `inbuf` and whether the connection stays open.
    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, usize, usize, bool)> {
        self.out.clear();
        self.out.extend_from_slice(method.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        self.out.extend_from_slice(self.authority.as_bytes());
        self.out
            .extend_from_slice(b"\r\naccept: application/json\r\n");
        if let Some(body) = body {
            self.out
                .extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
            self.out
                .extend_from_slice(body.len().to_string().as_bytes());
            self.out.extend_from_slice(b"\r\n\r\n");
            self.out.extend_from_slice(body);
        } else {
            self.out.extend_from_slice(b"\r\n");
        }
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.authority)
                .await
                .with_context(|| format!("connecting to {}", self.authority))?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| anyhow!("no connection"))?;
        stream.write_all(&self.out).await?;
        self.inbuf.clear();
        // The head.
        let (status, head_len, length, keep_alive) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.inbuf)? {
                httparse::Status::Complete(head_len) => {
                    let status = response.code.ok_or_else(|| anyhow!("no status code"))?;
                    let mut length = BodyLength::UntilClose;
                    let mut keep_alive = response.version == Some(1);
                    for header in response.headers.iter() {
                        if header.name.eq_ignore_ascii_case("content-length") {
                            let text = std::str::from_utf8(header.value)?;
                            length = BodyLength::Exact(
                                text.trim()
                                    .parse()
                                    .map_err(|_| anyhow!("bad content-length {text:?}"))?,
                            );
                        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                            if header.value.eq_ignore_ascii_case(b"chunked") {
                                length = BodyLength::Chunked;
                            } else {
                                bail!("unsupported transfer-encoding");
                            }
                        } else if header.name.eq_ignore_ascii_case("connection") {
                            keep_alive = !header.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    // Answers without a body.
                    if status == 204 || status == 304 || (100..200).contains(&status) {
                        length = BodyLength::Exact(0);
                    }
                    break (status, head_len, length, keep_alive);
                }
                httparse::Status::Partial => {
                    if self.inbuf.len() >= MAX_HEAD {
                        bail!("response head over {MAX_HEAD} bytes");
                    }
                    read_more(stream, &mut self.inbuf).await?;
                }
            }
        };
        match length {
            BodyLength::Exact(n) => {
                if n > MAX_BODY {
                    bail!("response body of {n} bytes");
                }
                while self.inbuf.len() < head_len + n {
                    read_more(stream, &mut self.inbuf).await?;
                }
                Ok((status, head_len, head_len + n, keep_alive))
            }
            BodyLength::Chunked => {
                let end = read_chunked(stream, &mut self.inbuf, head_len).await?;
                Ok((status, head_len, end, keep_alive))
            }
            BodyLength::UntilClose => {
                loop {
                    if self.inbuf.len() > head_len + MAX_BODY {
                        bail!("response body over {MAX_BODY} bytes");
                    }
                    if read_some(stream, &mut self.inbuf).await? == 0 {
                        break;
                    }
                }
                Ok((status, head_len, self.inbuf.len(), false))
            }
        }
    }
}

enum BodyLength {
    Exact(usize),
    Chunked,
    UntilClose,
}

/// A request that took longer than the client's timeout.
#[derive(Debug)]
pub(crate) struct TimedOut(Duration);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no complete answer within {:?}", self.0)
    }
}

impl std::error::Error for TimedOut {}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize> {
    buf.reserve(16 * 1024);
    Ok(stream.read_buf(buf).await?)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    if read_some(stream, buf).await? == 0 {
        bail!("the server closed the connection mid-response");
    }
    Ok(())
}

/// Decodes a chunked body that starts at `buf[start..]` in place: on return
/// `buf[start..end]` holds the body. Trailers are read and dropped.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>, start: usize) -> Result<usize> {
    // `raw` walks the encoded bytes; `end` is where the decoded body ends. Decoded bytes
    // never overtake the encoded ones, so moving them down is safe.
    let mut raw = start;
    let mut end = start;
    loop {
        let line_end = loop {
            if let Some(i) = find_crlf(&buf[raw..]) {
                break raw + i;
            }
            if buf.len() - raw > 1024 {
                bail!("chunk size line too long");
            }
            read_more(stream, buf).await?;
        };
        let line = std::str::from_utf8(&buf[raw..line_end])?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| anyhow!("bad chunk size {size_text:?}"))?;
        raw = line_end + 2;
        if size == 0 {
            // Trailers, each ending in CRLF, then an empty line.
            loop {
                let line_end = loop {
                    if let Some(i) = find_crlf(&buf[raw..]) {
                        break raw + i;
                    }
                    read_more(stream, buf).await?;
                };
                let empty = line_end == raw;
                raw = line_end + 2;
                if empty {
                    return Ok(end);
                }
            }
        }
        if end - start + size > MAX_BODY {
            bail!("response body over {MAX_BODY} bytes");
        }
        while buf.len() < raw + size + 2 {
            read_more(stream, buf).await?;
        }
        if &buf[raw + size..raw + size + 2] != b"\r\n" {
            bail!("chunk not followed by CRLF");
        }
        buf.copy_within(raw..raw + size, end);
        end += size;
        raw += size + 2;
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn urls() -> Result<()> {
        assert_eq!(
            Url::parse("http://127.0.0.1:3210/t/acme")?,
            Url {
                authority: "127.0.0.1:3210".into(),
                path: "/t/acme".into()
            }
        );
        assert_eq!(Url::parse("http://localhost")?.authority, "localhost:80");
        assert_eq!(Url::parse("http://localhost")?.path, "/");
        assert!(Url::parse("https://x").is_err());
        Ok(())
    }

    /// A server answering each request on one connection with the next canned response.
    async fn serve(responses: Vec<&'static [u8]>) -> Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            for response in responses {
                // One request per read is enough for these small requests.
                if socket.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                // Written in two parts to exercise partial reads.
                let (a, b) = response.split_at(response.len() / 2);
                if socket.write_all(a).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                if socket.write_all(b).await.is_err() {
                    return;
                }
            }
        });
        Ok(addr)
    }

    #[tokio::test]
    async fn reads_content_length_and_chunked_bodies_on_one_connection() -> Result<()> {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world",
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\ntrailer: 1\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        ])
        .await?;
        let mut connection = Connection::new(&addr, Duration::from_secs(5));
        let r = connection.send("GET", "/a", None).await?;
        assert_eq!((r.status, r.body), (200, &b"hello world"[..]));
        let r = connection.send("POST", "/b", Some(b"{}")).await?;
        assert_eq!((r.status, r.body), (201, &b"hello world"[..]));
        let r = connection.send("GET", "/c", None).await?;
        assert_eq!((r.status, r.body), (204, &b""[..]));
        let r = connection.send("GET", "/d", None).await?;
        assert_eq!((r.status, r.body), (429, &b"{}"[..]));
        assert!(connection.stream.is_none(), "Connection: close is honoured");
        Ok(())
    }

    #[tokio::test]
    async fn a_connection_closed_mid_response_is_an_error() -> Result<()> {
        let addr = serve(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort"]).await?;
        let mut connection = Connection::new(&addr, Duration::from_secs(5));
        let error = connection
            .send("GET", "/", None)
            .await
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("the server closed the connection mid-response")
        );
        Ok(())
    }
}
