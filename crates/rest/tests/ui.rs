//! The web UI's files over a real socket: what `/` and `/assets/<name>` answer
//! (content, types, validators, security headers), that nothing but the embedded
//! table is served, and the access rules (Host check always; no token for the
//! static files, the token for everything else). The page's behaviour in a
//! browser is tested against a real job in crates/cli/tests/web_ui.rs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use flowstate_rest::{
    CheckpointingStatistics, JobDetails, JobOverview, JobService, RestServer, SavepointStatus,
    SavepointTrigger, ServeOptions, ServiceError, serve_with,
};

/// A service with no jobs: the UI's routes never call it.
struct NoJobs;

impl JobService for NoJobs {
    fn jobs(&self) -> Vec<JobOverview> {
        Vec::new()
    }
    fn details(&self, _: &str) -> Result<JobDetails, ServiceError> {
        Err(ServiceError::UnknownJob)
    }
    fn checkpoints(&self, _: &str) -> Result<CheckpointingStatistics, ServiceError> {
        Err(ServiceError::UnknownJob)
    }
    fn trigger_savepoint(&self, _: &str, _: SavepointTrigger) -> Result<String, ServiceError> {
        Err(ServiceError::UnknownJob)
    }
    fn savepoint_status(&self, _: &str, _: &str) -> Result<SavepointStatus, ServiceError> {
        Err(ServiceError::UnknownJob)
    }
    fn cancel(&self, _: &str) -> Result<(), ServiceError> {
        Err(ServiceError::UnknownJob)
    }
}

const TOKEN: &str = "s3cret-token";

/// The files as they are in the repository: what the binary must serve, byte for byte.
const FILES: [(&str, &str, &str); 4] = [
    (
        "/",
        include_str!("../ui/index.html"),
        "text/html; charset=utf-8",
    ),
    (
        "/assets/app.js",
        include_str!("../ui/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "/assets/app.css",
        include_str!("../ui/app.css"),
        "text/css; charset=utf-8",
    ),
    (
        "/assets/favicon.svg",
        include_str!("../ui/favicon.svg"),
        "image/svg+xml",
    ),
];

fn start(token: Option<&str>) -> RestServer {
    let options = ServeOptions {
        token: token.map(str::to_owned),
        ..ServeOptions::default()
    };
    serve_with("127.0.0.1:0", Arc::new(NoJobs), &options).expect("server starts")
}

struct Answer {
    status: u16,
    /// Lower-cased.
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            (n.trim() == name).then_some(v.trim())
        })
    }

    fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "{}\n\n{}", self.head, self.body);
        self
    }

    /// An error answer of the API: `status`, a JSON body.
    fn expect_json_error(&self, status: u16) {
        self.expect(status);
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "{}",
            self.head
        );
        serde_json::from_str::<serde_json::Value>(&self.body).expect("a JSON error body");
    }
}

/// One HTTP/1.1 exchange with `Host: <addr>` and `extra` headers (each ending in CRLF).
fn get(addr: SocketAddr, method: &str, target: &str, extra: &str) -> Answer {
    exchange(
        addr,
        &format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"),
    )
}

fn exchange(addr: SocketAddr, request: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("read the answer");
    let text = String::from_utf8(bytes).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

#[test]
fn the_page_and_its_assets_are_served_as_they_are_in_the_repository() {
    let server = start(None);
    let addr = server.local_addr();
    for (path, content, content_type) in FILES {
        let answer = get(addr, "GET", path, "");
        answer.expect(200);
        assert_eq!(
            answer.body, content,
            "{path} differs from the repository's file"
        );
        assert_eq!(answer.header("content-type"), Some(content_type), "{path}");
        assert_eq!(answer.header("cache-control"), Some("no-cache"), "{path}");
        assert_eq!(
            answer.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        let etag = answer.header("etag").expect("an ETag");
        assert!(
            etag.len() == 18 && etag.starts_with('"') && etag.ends_with('"'),
            "{etag}"
        );

        // The validator: the same tag, no body; another tag, the file.
        let again = get(addr, "GET", path, &format!("If-None-Match: {etag}\r\n"));
        again.expect(304);
        assert!(again.body.is_empty(), "a 304 has no body");
        assert_eq!(again.header("etag"), Some(etag));
        get(addr, "GET", path, "If-None-Match: \"0000000000000000\"\r\n").expect(200);

        let head = get(addr, "HEAD", path, "");
        head.expect(200);
        assert!(head.body.is_empty(), "HEAD has no body");
    }
}

#[test]
fn the_page_is_locked_down_and_loads_nothing_from_elsewhere() {
    let server = start(None);
    let page = get(server.local_addr(), "GET", "/", "");
    page.expect(200);
    let csp = page.header("content-security-policy").expect("a CSP");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "CSP without {directive}: {csp}");
    }
    assert_eq!(page.header("x-frame-options"), Some("deny"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    // Every file it references is one of ours, and no file names another server
    // (the only URL is SVG's namespace, an identifier, never fetched).
    for asset in ["/assets/app.js", "/assets/app.css", "/assets/favicon.svg"] {
        assert!(
            page.body.contains(&format!("\"{asset}\"")),
            "the page does not load {asset}"
        );
    }
    for (path, content, _) in FILES {
        let mut rest = content;
        while let Some(at) = rest.find("http") {
            let url = &rest[at..];
            assert!(
                url.starts_with("http://www.w3.org/2000/svg")
                    || !url.starts_with("http:") && !url.starts_with("https:"),
                "{path} names another server: {}",
                &url[..url.len().min(60)]
            );
            rest = &rest[at + 4..];
        }
        // No inline script or handler: the CSP would block it.
        if path == "/" {
            assert!(
                !content.contains("<script>") && !content.contains(" onclick="),
                "inline script in the page"
            );
        }
    }
}

#[test]
fn nothing_but_the_embedded_table_is_served() {
    let server = start(None);
    let addr = server.local_addr();
    for target in [
        "/assets/nope.js",
        "/assets/",
        "/assets/app.js/",
        "/assets/app.js/x",
        "/assets/../Cargo.toml",
        "/assets/..%2fCargo.toml",
        "/assets/%2e%2e/%2e%2e/Cargo.toml",
        "/assets/APP.JS",
        "/index.html",
        "/ui/app.js",
        "/app.js",
    ] {
        get(addr, "GET", target, "").expect_json_error(404);
    }
    // The UI is read-only.
    get(
        addr,
        "POST",
        "/",
        "Content-Type: application/json\r\nContent-Length: 2\r\n",
    )
    .expect_json_error(405);
}

#[test]
fn with_a_token_the_static_files_need_none_and_the_api_still_does() {
    let server = start(Some(TOKEN));
    let addr = server.local_addr();
    for (path, _, _) in FILES {
        get(addr, "GET", path, "").expect(200);
    }
    // Not a file of the table: the token rule, as for any other route.
    get(addr, "GET", "/assets/nope.js", "").expect_json_error(401);
    get(addr, "GET", "/jobs", "").expect_json_error(401);
    get(
        addr,
        "GET",
        "/jobs",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    )
    .expect(200);
}

#[test]
fn the_host_check_applies_to_the_page() {
    let server = start(None);
    let addr = server.local_addr();
    let answer = exchange(
        addr,
        "GET / HTTP/1.1\r\nHost: evil.example:80\r\nConnection: close\r\n\r\n",
    );
    answer.expect_json_error(403);
    let answer = exchange(
        addr,
        &format!(
            "GET /assets/app.js HTTP/1.1\r\nHost: attacker.test:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        ),
    );
    answer.expect_json_error(403);
    get(addr, "GET", "/", "").expect(200);
    exchange(
        addr,
        &format!(
            "GET / HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        ),
    )
    .expect(200);
}
