//! The web UI: a page at `/` and its assets at `/assets/<name>`, compiled into the
//! binary from the plain HTML, CSS and JavaScript files in `crates/rest/ui/`.
//!
//! Owns the fixed table of embedded files and how they are answered (content type,
//! `ETag`/`If-None-Match`, cache and security headers). A request can only pick an
//! entry of that table by its exact name: nothing here ever touches the filesystem.
//! The page itself talks only to the JSON API of this same server, so this module
//! must not read the [`JobService`](crate::JobService) or know about jobs; and it
//! decides nothing about access (the server's guard does; see
//! [`is_public_asset`] for the one exception it grants).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    /// Its name under `/assets/` (the page is `/`).
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// A strong validator: `"<fnv1a-64 of body>"`, computed at compile time.
    etag: &'static str,
}

/// FNV-1a, 64 bits: a cheap content hash for the validators (not for security).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `"` + 16 lower-case hex digits of `hash` + `"`, as an `ETag` value.
const fn etag_bytes(hash: u64) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! asset {
    ($name:literal, $file:literal, $content_type:literal) => {{
        const BODY: &[u8] = include_bytes!(concat!("../ui/", $file));
        const ETAG: [u8; 18] = etag_bytes(fnv1a(BODY));
        Asset {
            name: $name,
            content_type: $content_type,
            body: BODY,
            etag: match std::str::from_utf8(&ETAG) {
                Ok(etag) => etag,
                Err(_) => panic!("an ETag is ASCII"),
            },
        }
    }};
}

/// The page.
static INDEX: Asset = asset!("index.html", "index.html", "text/html; charset=utf-8");

/// Everything under `/assets/`, by exact name.
static ASSETS: [Asset; 3] = [
    asset!("app.js", "app.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "app.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "favicon.svg", "image/svg+xml"),
];

/// The page's Content-Security-Policy: its own script, style and images only, calls to
/// this server only, never framed (no inline script: the page has none).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The routes of the UI (`GET`/`HEAD` `/` and `/assets/{name}`), to be merged into the
/// API's router (behind its guard).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
}

/// Whether a request for `path` is for the UI's static files, which are served without
/// the bearer token: they are the same in every binary and hold no job data, and a
/// browser cannot attach a token to a page load; every API call the page makes
/// carries the token (the page asks for it). The Host check still applies to them.
pub(crate) fn is_public_asset(path: &str) -> bool {
    path == "/"
        || path
            .strip_prefix("/assets/")
            .is_some_and(|name| ASSETS.iter().any(|asset| asset.name == name))
}

async fn index(headers: HeaderMap) -> Response {
    let mut response = answer(&INDEX, &headers);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => answer(asset, &headers),
        // Turned into the API's JSON error shape by the server's error layer.
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// The file, or 304 when the client's copy is current. `no-cache`: a browser keeps
/// its copy but asks each time (cheap: a 304 with no body), so a new binary on the
/// same port is picked up at once.
fn answer(asset: &Asset, request: &HeaderMap) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(',')
                .any(|tag| matches!(tag.trim(), "*") || tag.trim() == asset.etag)
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, asset.body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_quoted_hex_of_the_content() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(&etag_bytes(0x0123_4567_89ab_cdef), b"\"0123456789abcdef\"");
        assert_ne!(ASSETS[0].etag, ASSETS[1].etag);
    }

    #[test]
    fn only_the_table_s_names_are_public() {
        assert!(is_public_asset("/"));
        assert!(is_public_asset("/assets/app.js"));
        assert!(!is_public_asset("/assets/"));
        assert!(!is_public_asset("/assets/../Cargo.toml"));
        assert!(!is_public_asset("/assets/app.js/"));
        assert!(!is_public_asset("/jobs"));
        assert!(!is_public_asset("/index.html"));
    }
}
