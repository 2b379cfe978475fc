//! Requests over a raw TCP socket, byte for byte as given: no client normalises paths or adds
//! headers (security tests).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// The error code of a SPEC §4 error body, or a description of what came instead.
    pub fn code(&self) -> String {
        let v = self.json();
        match v["error"]["code"].as_str() {
            Some(c) if v["error"]["message"].is_string() => c.to_string(),
            _ => format!("<not an error body: {}>", String::from_utf8_lossy(&self.body)),
        }
    }
}

/// One request over its own connection, byte for byte as given (`Host: 127.0.0.1`).
pub fn raw(port: u16, method: &str, path: &str, auth: Option<&str>, extra: &str, body: &[u8]) -> Response {
    raw_host(port, method, path, Some("127.0.0.1"), auth, extra, body)
}

/// [`raw`] with this `Host` header (or none).
pub fn raw_host(
    port: u16,
    method: &str,
    path: &str,
    host: Option<&str>,
    auth: Option<&str>,
    extra: &str,
    body: &[u8],
) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if let Some(h) = host {
        head += &format!("Host: {h}\r\n");
    }
    if let Some(a) = auth {
        head += &format!("Authorization: {a}\r\n");
    }
    head += extra;
    head += &format!("Content-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).expect("write head");
    // The server may answer (413) and close before reading all of a large body.
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP response: {:?}", String::from_utf8_lossy(&buf)));
    let headers = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = headers.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let mut body = buf[split + 4..].to_vec();
    if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = unchunk(&body);
    }
    Response { status, headers, body }
}

pub fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let len = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if len == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + len]);
        b = &b[eol + 4 + len..];
    }
    out
}

pub fn bearer(t: &str) -> Option<String> {
    Some(format!("Bearer {t}"))
}
