//! Raw HTTP/1.1 over a stream, for fake devices and for tests that need
//! the bytes themselves.

use std::net::SocketAddr;

pub use drivesec_testkit::net::tls_server_config as fake_server_config;

/// Reads one HTTP head from `s` (None if the connection ended first, or
/// if the head grows past 64 KiB).
pub fn read_head<S: std::io::Read>(s: &mut S) -> Option<String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        if got.len() > 64 * 1024 {
            return None;
        }
        match s.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// Listens on a loopback port and hands every connection, on a thread of
/// its own, to `serve`. Returns the address.
pub fn spawn_server(serve: impl Fn(std::net::TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = std::sync::Arc::new(serve);
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let serve = serve.clone();
            std::thread::spawn(move || serve(tcp));
        }
    });
    addr
}

/// Reads the body that `head` (a request head) declares with its
/// Content-Length, none if absent (None if the connection ended first).
pub fn read_body<S: std::io::Read>(s: &mut S, head: &str) -> Option<Vec<u8>> {
    let len: usize = head
        .to_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap_or(0))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

/// Writes a JSON response with `status` (e.g. "200 OK") and `body` to
/// `s` and flushes; false if that failed.
pub fn write_json<S: std::io::Write + ?Sized>(
    s: &mut S,
    status: &str,
    body: &serde_json::Value,
) -> bool {
    let b = body.to_string();
    let out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
        b.len()
    );
    s.write_all(out.as_bytes()).and_then(|_| s.flush()).is_ok()
}

/// Sends one HTTP/1.1 request on `s` and reads its response (head and
/// Content-Length body), leaving the connection open.
pub fn exchange<S: std::io::Read + std::io::Write>(s: &mut S, head: &str, body: &[u8]) -> String {
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s.flush().unwrap();
    let got = read_head(s).expect("closed mid-head");
    let len: usize = got
        .to_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).unwrap();
    got + &String::from_utf8_lossy(&rest)
}
