//! The error rate from a local endpoint the operator names
//! (`agent.predictive.error_rate.endpoint`, see `docs/agent.md`).
//!
//! Every `check_interval` the agent sends `GET PATH` (plain HTTP/1.1,
//! `Connection: close`) to `http://HOST:PORT/PATH` and expects status 200
//! with a JSON body `{"requests": N, "errors": M}`: cumulative counters
//! since the application started (`M ≤ N`, both non-negative integers).
//! The error rate is `100 × Δerrors / Δrequests` between the newest reading
//! and the oldest one still covering `window` (0 when no requests came in).
//! A counter that goes down (the application restarted) starts the window
//! over. An unreachable endpoint, another status, or a body that is not
//! that JSON is an error: logged and counted by the caller, and never a
//! reason to drain.

use std::{collections::VecDeque, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::Instant,
};

/// The largest response read (headers and body).
pub(crate) const MAX_RESPONSE: usize = 64 * 1024;

/// Readings kept at most, whatever the window.
const MAX_SAMPLES: usize = 4096;

/// One reading of the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Requests served since start.
    pub(crate) requests: u64,
    /// Of which failed.
    pub(crate) errors: u64,
}

/// The endpoint and its recent readings.
#[derive(Debug, Clone)]
pub(crate) struct ErrorEndpoint {
    /// `HOST:PORT`.
    hostport: String,
    /// Host header.
    host: String,
    /// Request path.
    path: String,
    samples: VecDeque<(Instant, Counters)>,
}

impl ErrorEndpoint {
    /// The endpoint at `url` (`http://HOST[:PORT][/PATH]`).
    pub(crate) fn new(url: &str) -> Result<Self, String> {
        let (hostport, path) = opengslb_controlplane::config::parse_local_http_url(url)?;
        let host = hostport
            .rsplit_once(':')
            .map_or(hostport.as_str(), |(h, _)| h)
            .to_owned();
        Ok(Self {
            hostport,
            host,
            path,
            samples: VecDeque::new(),
        })
    }

    /// Reads the endpoint (bounded by `timeout`) and returns the error rate
    /// over `window`: `Ok(None)` until two readings exist. On error the
    /// readings are dropped (the window starts over).
    pub(crate) async fn poll(
        &mut self,
        now: Instant,
        window: Duration,
        timeout: Duration,
    ) -> Result<Option<f64>, String> {
        match tokio::time::timeout(timeout, fetch(&self.hostport, &self.host, &self.path)).await {
            Ok(Ok(c)) => Ok(self.record(now, c, window)),
            Ok(Err(e)) => {
                self.samples.clear();
                Err(e)
            }
            Err(_) => {
                self.samples.clear();
                Err(format!(
                    "{}: no answer within {} ms",
                    self.hostport,
                    timeout.as_millis()
                ))
            }
        }
    }

    /// Adds a reading; the error rate over `window` (see the module).
    pub(crate) fn record(&mut self, now: Instant, c: Counters, window: Duration) -> Option<f64> {
        if self
            .samples
            .back()
            .is_some_and(|(_, last)| c.requests < last.requests || c.errors < last.errors)
        {
            // Counters reset: the application restarted.
            self.samples.clear();
        }
        self.samples.push_back((now, c));
        // Keep one reading at or before `now - window` as the baseline.
        while self.samples.len() > 2 && now.saturating_duration_since(self.samples[1].0) >= window {
            self.samples.pop_front();
        }
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
        if self.samples.len() < 2 {
            return None;
        }
        let (_, base) = self.samples.front()?;
        let requests = c.requests - base.requests;
        let errors = c.errors - base.errors;
        if requests == 0 {
            return Some(0.0);
        }
        Some((100.0 * errors as f64 / requests as f64).min(100.0))
    }
}

/// One `GET` of the endpoint.
async fn fetch(hostport: &str, host: &str, path: &str) -> Result<Counters, String> {
    let mut s = tokio::net::TcpStream::connect(hostport)
        .await
        .map_err(|e| format!("{hostport}: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: opengslb-agent\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("{hostport}: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut limited = (&mut s).take(MAX_RESPONSE as u64 + 1);
    limited
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("{hostport}: {e}"))?;
    if buf.len() > MAX_RESPONSE {
        return Err(format!("{hostport}: response over {MAX_RESPONSE} bytes"));
    }
    parse_response(&buf).map_err(|e| format!("{hostport}{path}: {e}"))
}

/// Status 200 and the counters of the body of an HTTP/1.x response.
pub(crate) fn parse_response(raw: &[u8]) -> Result<Counters, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("not an HTTP response")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "not an HTTP response")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err("not an HTTP response".into());
    }
    match parts.next() {
        Some("200") => {}
        Some(code) => return Err(format!("status {code}, expected 200")),
        None => return Err("not an HTTP response".into()),
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    parse_body(&body)
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or("bad chunked body")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            return Err("bad chunked body".into());
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).ok_or("bad chunked body")?;
    }
}

/// `{"requests": N, "errors": M}`.
pub(crate) fn parse_body(body: &[u8]) -> Result<Counters, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!("body is not JSON ({e}); expected {{\"requests\": N, \"errors\": M}}")
    })?;
    let field = |name: &str| {
        v.get(name).and_then(serde_json::Value::as_u64).ok_or_else(|| {
            format!("body needs \"{name}\" as a non-negative integer; expected {{\"requests\": N, \"errors\": M}}")
        })
    };
    let c = Counters {
        requests: field("requests")?,
        errors: field("errors")?,
    };
    if c.errors > c.requests {
        return Err(format!(
            "errors ({}) above requests ({})",
            c.errors, c.requests
        ));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `replies` in turn on loopback, one connection each; returns
    /// the URL.
    async fn serve(replies: Vec<Vec<u8>>) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for reply in replies {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut req = [0u8; 1024];
                let n = s.read(&mut req).await.unwrap_or(0);
                assert!(
                    req[..n].starts_with(b"GET /stats HTTP/1.1\r\n"),
                    "{:?}",
                    String::from_utf8_lossy(&req[..n])
                );
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            }
        });
        format!("http://{addr}/stats")
    }

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn chunked(parts: &[&str]) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for p in parts {
            out.extend_from_slice(format!("{:x}\r\n{p}\r\n", p.len()).as_bytes());
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    #[tokio::test]
    async fn rate_from_counter_deltas_over_the_window() {
        let url = serve(vec![
            ok(r#"{"requests": 1000, "errors": 10}"#),
            ok(r#"{"requests": 1100, "errors": 30}"#),
            // Chunked works too.
            chunked(&[r#"{"requests": 13"#, r#"00, "errors": 40}"#]),
        ])
        .await;
        let mut ep = ErrorEndpoint::new(&url).unwrap();
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        let to = Duration::from_secs(2);
        assert_eq!(ep.poll(t0, w, to).await, Ok(None), "one reading: no rate");
        // +100 requests, +20 errors: 20 %.
        let r = ep.poll(t0 + Duration::from_secs(10), w, to).await.unwrap();
        assert_eq!(r, Some(20.0));
        // Since the first: +300, +30 = 10 %.
        let r = ep.poll(t0 + Duration::from_secs(20), w, to).await.unwrap();
        assert_eq!(r, Some(10.0));
    }

    #[test]
    fn window_slides_and_resets_start_over() {
        let mut ep = ErrorEndpoint::new("http://127.0.0.1:9/x").unwrap();
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        let c = |requests, errors| Counters { requests, errors };
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(ep.record(at(0), c(0, 0), w), None);
        assert_eq!(ep.record(at(30), c(100, 50), w), Some(50.0));
        // At 90 s the reading of 30 s is the baseline: +100, +0.
        assert_eq!(ep.record(at(90), c(200, 50), w), Some(0.0));
        // No traffic: 0 %.
        assert_eq!(ep.record(at(100), c(200, 50), w), Some(0.0));
        // A reset starts over.
        assert_eq!(ep.record(at(110), c(5, 5), w), None);
        assert_eq!(ep.record(at(120), c(15, 10), w), Some(50.0));
    }

    #[tokio::test]
    async fn unreachable_and_garbage_are_errors() {
        // A port nothing listens on.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        let mut ep = ErrorEndpoint::new(&format!("http://{dead}/stats")).unwrap();
        let t0 = Instant::now();
        let (w, to) = (Duration::from_secs(60), Duration::from_secs(2));
        assert!(ep.poll(t0, w, to).await.is_err());

        let url = serve(vec![
            ok(r#"{"requests": 10, "errors": 1}"#),
            b"garbage\r\n\r\n".to_vec(),
            ok(r#"{"requests": 20, "errors": 1}"#),
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_vec(),
            ok(r#"{"requests": "many"}"#),
            ok(r#"{"requests": 5, "errors": 9}"#),
            ok(&format!(
                "{{\"requests\": 1, \"errors\": 0, \"pad\": \"{}\"}}",
                "x".repeat(MAX_RESPONSE)
            )),
        ])
        .await;
        let mut ep = ErrorEndpoint::new(&url).unwrap();
        assert_eq!(ep.poll(t0, w, to).await, Ok(None));
        let e = ep.poll(t0, w, to).await.unwrap_err();
        assert!(e.contains("not an HTTP response"), "{e}");
        // The error dropped the first reading: no rate from one reading.
        assert_eq!(ep.poll(t0, w, to).await, Ok(None));
        let e = ep.poll(t0, w, to).await.unwrap_err();
        assert!(e.contains("status 500"), "{e}");
        let e = ep.poll(t0, w, to).await.unwrap_err();
        assert!(e.contains("\"requests\""), "{e}");
        let e = ep.poll(t0, w, to).await.unwrap_err();
        assert!(e.contains("above requests"), "{e}");
        let e = ep.poll(t0, w, to).await.unwrap_err();
        assert!(e.contains("over"), "{e}");
    }

    #[tokio::test]
    async fn a_silent_endpoint_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (_s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let mut ep = ErrorEndpoint::new(&format!("http://{addr}/stats")).unwrap();
        let started = std::time::Instant::now();
        let e = ep
            .poll(
                Instant::now(),
                Duration::from_secs(60),
                Duration::from_millis(200),
            )
            .await
            .unwrap_err();
        assert!(e.contains("no answer"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        hold.abort();
    }

    #[test]
    fn urls_are_checked() {
        assert!(ErrorEndpoint::new("https://127.0.0.1:1/x").is_err());
        assert!(ErrorEndpoint::new("http://").is_err());
        assert!(ErrorEndpoint::new("http://127.0.0.1:0/x").is_err());
        let ep = ErrorEndpoint::new("http://localhost/").unwrap();
        assert_eq!(ep.hostport, "localhost:80");
        assert_eq!(ep.path, "/");
        let ep = ErrorEndpoint::new("http://[::1]:8080").unwrap();
        assert_eq!(
            (ep.hostport.as_str(), ep.path.as_str()),
            ("[::1]:8080", "/")
        );
        assert_eq!(ep.host, "[::1]");
    }
}
