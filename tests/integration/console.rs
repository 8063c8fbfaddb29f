//! The console listener over real HTTP/1.1: every response (page, assets, gRPC-Web answers,
//! errors) carries the security headers; gRPC-Web reaches the real services through the
//! same caller authentication as the gRPC port; nothing else of the gRPC port is exposed.
//! The page's behaviour is tested in a real browser (tests/browser).

use std::collections::HashMap;

use casola_auth::{config::ConsoleConfig, console::SECURITY_HEADERS};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{TestServer, test_config};

/// One HTTP/1.1 answer: status, headers (lower-case names), body with chunking undone.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = std::str::from_utf8(&raw[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Sends one request on a fresh connection (`Connection: close`) and reads the answer.
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the console");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of the response head");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[split + 4..];
    let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn assert_security_headers(what: &str, answer: &Answer) {
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(
            answer.headers.get(name).map(String::as_str),
            Some(value),
            "{what}: header {name}"
        );
    }
    let csp = &answer.headers["content-security-policy"];
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
}

async fn console_server() -> (TestServer, std::net::SocketAddr) {
    let mut config = test_config(None);
    config.console = ConsoleConfig {
        enabled: true,
        listen: "127.0.0.1:0".parse().unwrap(),
    };
    let server = TestServer::with_config(config, None).await;
    let addr = server.running.console_addr.expect("console enabled");
    (server, addr)
}

/// One request of the header sweep: a GET, or a gRPC-Web POST of an empty message.
struct Case {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    status: u16,
}

impl Case {
    fn get(what: &'static str, path: &'static str, status: u16) -> Self {
        Self {
            what,
            method: "GET",
            path,
            status,
        }
    }

    fn grpc_web(what: &'static str, path: &'static str, status: u16) -> Self {
        Self {
            what,
            method: "POST",
            path,
            status,
        }
    }
}

/// A gRPC-Web frame of an empty message (WhoAmIRequest, ListScopesRequest).
const EMPTY_MESSAGE_FRAME: [u8; 5] = [0, 0, 0, 0, 0];

#[tokio::test]
async fn every_console_response_carries_the_security_headers() {
    let (server, addr) = console_server().await;
    let grpc_web = [("content-type", "application/grpc-web+proto")];
    let cases = [
        Case::get("page", "/", 200),
        Case::get("script", "/app.js", 200),
        Case::get("style", "/app.css", 200),
        Case::get("icon", "/favicon.svg", 200),
        Case::get("unknown path", "/nope", 404),
        Case::get(
            "gRPC path without gRPC-Web",
            "/casola.auth.v1.TokenService/ListScopes",
            400,
        ),
        Case::grpc_web(
            "gRPC-Web without a token",
            "/casola.auth.v1.TokenService/ListScopes",
            200,
        ),
        Case::grpc_web(
            "a gRPC service the console does not expose",
            "/grpc.health.v1.Health/Check",
            404,
        ),
    ];
    for case in cases {
        let (headers, body): (&[(&str, &str)], &[u8]) = match case.method {
            "POST" => (&grpc_web, &EMPTY_MESSAGE_FRAME),
            _ => (&[], b""),
        };
        let answer = request(addr, case.method, case.path, headers, body).await;
        assert_eq!(answer.status, case.status, "{}", case.what);
        assert_security_headers(case.what, &answer);
    }
    server.running.shutdown().await;
}

#[tokio::test]
async fn the_page_loads_only_its_own_script_and_style() {
    let (server, addr) = console_server().await;
    let page = request(addr, "GET", "/", &[], b"").await;
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains(r#"<script type="module" src="/app.js"></script>"#));
    assert!(html.contains(r#"<link rel="stylesheet" href="/app.css">"#));
    // No inline script or style: the CSP would block them anyway.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(
        !html.contains("<style") && !html.contains("style="),
        "{html}"
    );
    let script = request(addr, "GET", "/app.js", &[], b"").await;
    assert_eq!(
        script.headers["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(script.body.len() > 1000, "the bundle is embedded");
    server.running.shutdown().await;
}

#[tokio::test]
async fn grpc_web_goes_through_caller_authentication() {
    let (server, addr) = console_server().await;
    let grpc_web = ("content-type", "application/grpc-web+proto");
    let path = "/casola.auth.v1.AuthorizationService/WhoAmI";

    let anonymous = request(addr, "POST", path, &[grpc_web], &EMPTY_MESSAGE_FRAME).await;
    // A trailers-only answer: the status is in the headers.
    assert_eq!(
        anonymous.headers.get("grpc-status").map(String::as_str),
        Some("16")
    );

    let bootstrap = server.running.bootstrap_token.as_ref().unwrap().expose();
    let bearer = format!("Bearer {bootstrap}");
    let answer = request(
        addr,
        "POST",
        path,
        &[grpc_web, ("authorization", &bearer)],
        &EMPTY_MESSAGE_FRAME,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-type"], "application/grpc-web+proto");
    // A message frame, then the trailer frame (flag 0x80) with grpc-status 0.
    assert_eq!(answer.body[0], 0, "a message frame first");
    let len = u32::from_be_bytes(answer.body[1..5].try_into().unwrap()) as usize;
    let message = &answer.body[5..5 + len];
    assert!(
        message.windows(5).any(|w| w == b"local"),
        "WhoAmI names the bootstrap token's organisation"
    );
    let trailer = &answer.body[5 + len..];
    assert_eq!(trailer[0], 0x80, "a trailer frame follows");
    let trailer_text = String::from_utf8_lossy(&trailer[5..]).to_ascii_lowercase();
    assert!(trailer_text.contains("grpc-status:0"), "{trailer_text}");
    server.running.shutdown().await;
}

#[tokio::test]
async fn a_disabled_console_binds_nothing() {
    let server = TestServer::memory().await;
    assert_eq!(server.running.console_addr, None);
    server.running.shutdown().await;
}
