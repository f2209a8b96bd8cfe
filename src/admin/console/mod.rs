//! The console: the operators' web page, served by the admin listener at `GET /` (SPEC
//! "Console and reports"). Its files are embedded in the binary (`include_str!`): no build
//! step, no CDN, nothing fetched from the internet. It holds no data and no token: the page
//! asks for the admin (or read-only viewer) token, keeps it in the tab's `sessionStorage` and
//! sends it as `Authorization: Bearer` to the admin API, which it reads like any other client.
//!
//! Every answer here carries [`CSP`]: scripts and styles only from these files (no inline
//! script, no `eval`), requests only to this origin, no frames.

/// The Content-Security-Policy of every console file.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The embedded file at `path` (as requested on the admin listener), with its content type.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    Some(match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX.as_bytes()),
        "/console/app.js" => ("text/javascript; charset=utf-8", APP_JS.as_bytes()),
        "/console/app.css" => ("text/css; charset=utf-8", APP_CSS.as_bytes()),
        _ => return None,
    })
}
