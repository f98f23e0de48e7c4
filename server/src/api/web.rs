//! The built-in web page (`GET /`): three files compiled into the binary
//! (`server/web/`), served with a strict content security policy. The page
//! reads only the public API, with the key its user signs in with.
//!
//! Assets are named by a hash of their contents (`/ui/<version>/app.js`),
//! so a browser caches them for good and a new build's page asks for new
//! names; the page itself is never cached.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");

/// Scripts, styles and requests from this origin only: no inline script,
/// no CDN, nothing sent elsewhere.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The assets' version: the first 12 hex digits of a hash of both.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hash = 0xcbf2_9ce4_8422_2325u64; // FNV-1a
    for b in APP_JS.bytes().chain(APP_CSS.bytes()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{:012x}", hash & 0xffff_ffff_ffff)
});

static PAGE: LazyLock<String> = LazyLock::new(|| INDEX.replace("{{version}}", &VERSION));

/// `GET /` and `GET /ui/<version>/<asset>`, open to anyone: the page asks
/// for a key before it shows anything.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/ui/{version}/{asset}", get(asset))
}

async fn page() -> Response {
    served(PAGE.as_str(), "text/html; charset=utf-8", "no-cache")
}

async fn asset(Path((version, name)): Path<(String, String)>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    if version != *VERSION {
        return StatusCode::NOT_FOUND.into_response();
    }
    served(body, kind, "public, max-age=31536000, immutable")
}

fn served(body: &'static str, kind: &'static str, cache: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, kind),
        (header::CACHE_CONTROL, cache),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_its_assets_by_version_and_has_no_inline_script() {
        assert!(PAGE.contains(&format!("/ui/{}/app.js", *VERSION)));
        assert!(PAGE.contains(&format!("/ui/{}/app.css", *VERSION)));
        assert!(!PAGE.contains("{{version}}"));
        // The CSP forbids inline scripts and styles: the page must not need any.
        assert!(!PAGE.contains("<script>") && !PAGE.contains(" style=\""));
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
    }
}
