//! A minimal HTTP/1.1 GET for health checks, over any byte stream.
//!
//! The request is `GET <path> HTTP/1.1`, `Host`, `Connection: close`. The
//! response head must fit in [`MAX_HEAD`] and start with `HTTP/1.`; the body
//! is framed by `Transfer-Encoding: chunked`, `Content-Length` or the close
//! of the connection, and only its first [`BODY_CAP`] bytes are kept: once
//! the cap is reached reading stops (the check is decided on what was read).
//! Redirects are not followed: a 3xx is just a status. The caller bounds the
//! whole exchange with the check's timeout.

use std::io::ErrorKind;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::probe::{Failure, BODY_CAP};

/// Largest response head (status line + headers) accepted.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Largest chunk-size line accepted.
const MAX_LINE: usize = 1024;
const READ_CHUNK: usize = 8 * 1024;

/// The part of a response a check looks at.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    /// The first [`BODY_CAP`] bytes of the decoded body.
    pub(crate) body: Vec<u8>,
}

/// Sends the GET and reads the response; `read_body` false stops after the head.
pub(crate) async fn get<S>(
    stream: &mut S,
    host: &str,
    path: &str,
    read_body: bool,
) -> Result<Response, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: opengslb-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;

    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(READ_CHUNK),
    };
    let head_len = conn.read_head().await?;
    let head = conn.buf.drain(..head_len).collect::<Vec<u8>>();
    let head = parse_head(&head)?;
    if !read_body || matches!(head.status, 100..=199 | 204 | 304) {
        return Ok(Response {
            status: head.status,
            body: Vec::new(),
        });
    }
    let body = match (head.chunked, head.content_length) {
        (true, _) => conn.read_chunked().await?,
        (false, Some(n)) => conn.read_len(n).await?,
        (false, None) => conn.read_to_close().await?,
    };
    Ok(Response {
        status: head.status,
        body,
    })
}

struct Head {
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
}

fn parse_head(head: &[u8]) -> Result<Head, Failure> {
    let text = std::str::from_utf8(head).map_err(|_| Failure::Protocol)?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().ok_or(Failure::Protocol)?;
    let rest = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .ok_or(Failure::Protocol)?;
    let code = rest.get(..3).ok_or(Failure::Protocol)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) || rest.len() > 3 && !rest[3..].starts_with(' ') {
        return Err(Failure::Protocol);
    }
    let status: u16 = code.parse().map_err(|_| Failure::Protocol)?;
    if status < 100 {
        return Err(Failure::Protocol);
    }
    let mut content_length = None;
    let mut chunked = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(Failure::Protocol)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| Failure::Protocol)?;
            if content_length.is_some_and(|m| m != n) {
                return Err(Failure::Protocol);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    Ok(Head {
        status,
        content_length,
        chunked,
    })
}

struct Conn<'a, S> {
    stream: &'a mut S,
    /// Read but not yet consumed.
    buf: Vec<u8>,
}

impl<S: AsyncRead + Unpin> Conn<'_, S> {
    /// Reads more into `buf`; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> Result<usize, Failure> {
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let n = match self.stream.read(&mut self.buf[len..]).await {
            Ok(n) => n,
            // rustls reports a peer that closes without close_notify this way;
            // for a `Connection: close` exchange that is an ordinary end.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => 0,
            Err(e) => {
                self.buf.truncate(len);
                return Err(io(e));
            }
        };
        self.buf.truncate(len + n);
        Ok(n)
    }

    /// Reads until the end of the head; returns its length (with CRLFCRLF).
    async fn read_head(&mut self) -> Result<usize, Failure> {
        loop {
            // Fail fast on something that is not HTTP at all.
            let probe = self.buf.len().min(5);
            if self.buf[..probe] != b"HTTP/"[..probe] {
                return Err(Failure::Protocol);
            }
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                return Ok(i + 4);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Failure::Protocol);
            }
            if self.fill().await? == 0 {
                return Err(if self.buf.is_empty() {
                    Failure::Io(ErrorKind::UnexpectedEof)
                } else {
                    Failure::Protocol
                });
            }
        }
    }

    /// Body of `Content-Length: n`, capped.
    async fn read_len(&mut self, n: u64) -> Result<Vec<u8>, Failure> {
        let want = usize::try_from(n).unwrap_or(usize::MAX).min(BODY_CAP);
        while self.buf.len() < want {
            if self.fill().await? == 0 {
                return Err(Failure::Io(ErrorKind::UnexpectedEof));
            }
        }
        self.buf.truncate(want);
        Ok(std::mem::take(&mut self.buf))
    }

    /// Body framed by the close of the connection, capped.
    async fn read_to_close(&mut self) -> Result<Vec<u8>, Failure> {
        while self.buf.len() < BODY_CAP {
            if self.fill().await? == 0 {
                break;
            }
        }
        self.buf.truncate(BODY_CAP);
        Ok(std::mem::take(&mut self.buf))
    }

    /// A chunked body, decoded and capped.
    async fn read_chunked(&mut self) -> Result<Vec<u8>, Failure> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let size = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(size)
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .ok_or(Failure::Protocol)?;
            if size == 0 {
                return Ok(body);
            }
            let room = BODY_CAP - body.len();
            let take = usize::try_from(size).unwrap_or(usize::MAX).min(room);
            while self.buf.len() < take {
                if self.fill().await? == 0 {
                    return Err(Failure::Io(ErrorKind::UnexpectedEof));
                }
            }
            body.extend(self.buf.drain(..take));
            if body.len() >= BODY_CAP {
                return Ok(body);
            }
            // The chunk's CRLF.
            if !self.line().await?.is_empty() {
                return Err(Failure::Protocol);
            }
        }
    }

    /// One CRLF-terminated line (without the CRLF), at most [`MAX_LINE`].
    async fn line(&mut self) -> Result<Vec<u8>, Failure> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(Failure::Protocol);
            }
            if self.fill().await? == 0 {
                return Err(Failure::Io(ErrorKind::UnexpectedEof));
            }
        }
    }
}

fn io(e: std::io::Error) -> Failure {
    Failure::Io(e.kind())
}

/// First index of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exchange(reply: &'static [u8], read_body: bool) -> Result<Response, Failure> {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let srv = tokio::spawn(async move {
            let mut req = vec![0u8; 4096];
            let n = server.read(&mut req).await.unwrap();
            server.write_all(reply).await.unwrap();
            drop(server);
            String::from_utf8(req[..n].to_vec()).unwrap()
        });
        let res = get(&mut client, "example.test", "/health", read_body).await;
        let req = srv.await.unwrap();
        assert!(req.starts_with("GET /health HTTP/1.1\r\nHost: example.test\r\n"));
        assert!(req.contains("Connection: close\r\n"));
        res
    }

    #[tokio::test]
    async fn content_length_chunked_and_close_framing() {
        let r = exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
            true,
        )
        .await
        .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
        let r = exchange(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            true,
        )
        .await
        .unwrap();
        assert_eq!(&r.body[..], b"abcde");
        let r = exchange(b"HTTP/1.0 503 Busy\r\nX: y\r\n\r\ndown", true)
            .await
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (503, &b"down"[..]));
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_failures() {
        for reply in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 200OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert_eq!(
                exchange(reply, true).await.unwrap_err(),
                Failure::Protocol,
                "{}",
                String::from_utf8_lossy(reply)
            );
        }
        assert!(matches!(
            exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true).await,
            Err(Failure::Io(ErrorKind::UnexpectedEof))
        ));
        assert!(matches!(
            exchange(b"", true).await,
            Err(Failure::Io(ErrorKind::UnexpectedEof))
        ));
    }

    #[test]
    fn find_works() {
        assert_eq!(find(b"abc\r\n\r\nx", b"\r\n\r\n"), Some(3));
        assert_eq!(find(b"abc", b"zz"), None);
    }
}
