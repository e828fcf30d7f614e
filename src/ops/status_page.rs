//! The status page for people: one HTML document with its stylesheet, script and icon, compiled
//! into the binary (`status.html`, `status.css`, `status.js`, `status.svg` beside this file). The script reads
//! `/statusz` every 2 s and draws the fleet; nothing is loaded from anywhere else.
//!
//! Receives a request path (and its `Accept` header for `/`); hands back the asset with a strict
//! Content-Security-Policy (scripts, styles and fetches from this origin only; no inline code,
//! which is why the script and stylesheet are paths of their own) and `Cache-Control: no-store`.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

type Body = tonic::body::Body;

/// The page's document path (`/` serves it too, to a browser).
pub const PAGE_PATH: &str = "/status";

/// Every path of the page: the document and its assets.
pub const PATHS: [&str; 4] = [PAGE_PATH, "/status.js", "/status.css", "/status.svg"];

/// Only this origin's script, style and `fetch`; no inline code, no framing, no forms.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const HTML: &str = include_str!("status.html");
const JS: &str = include_str!("status.js");
const CSS: &str = include_str!("status.css");
/// The tab icon (without one, every browser asks for `/favicon.ico` and logs the 404).
const ICON: &str = include_str!("status.svg");

/// The page's document.
pub fn page() -> http::Response<Body> {
    respond("text/html; charset=utf-8", HTML)
}

/// The asset at `path`, if it is one of the page's.
pub fn asset(path: &str) -> Option<http::Response<Body>> {
    match path {
        PAGE_PATH => Some(page()),
        "/status.js" => Some(respond("text/javascript; charset=utf-8", JS)),
        "/status.css" => Some(respond("text/css; charset=utf-8", CSS)),
        "/status.svg" => Some(respond("image/svg+xml", ICON)),
        _ => None,
    }
}

/// An asset with its security headers.
fn respond(content_type: &'static str, body: &'static str) -> http::Response<Body> {
    let mut resp = http::Response::new(Body::new(http_body_util::Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// Whether a request for `/` comes from a browser (its `Accept` names `text/html`); `curl` and
/// probes, which send `*/*` or nothing, keep the plain-text answer.
pub fn wants_html<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|kind| {
            let mut params = kind.split(';');
            let media = params.next().unwrap_or("").trim();
            let refused = params.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            media.eq_ignore_ascii_case("text/html") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(accept: &[&str]) -> http::Request<()> {
        let mut req = http::Request::get("/");
        for a in accept {
            req = req.header(header::ACCEPT, *a);
        }
        req.body(()).unwrap_or_default()
    }

    #[test]
    fn browsers_get_the_page_at_the_root_and_tools_do_not() {
        let chromium = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
                        image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
        assert!(wants_html(&get(&[chromium])));
        assert!(wants_html(&get(&["application/json", "TEXT/HTML; q=0.5"])));
        assert!(!wants_html(&get(&[])));
        assert!(!wants_html(&get(&["*/*"])));
        assert!(!wants_html(&get(&["text/plain"])));
        assert!(!wants_html(&get(&["text/html;q=0"])));
        assert!(!wants_html(&get(&["text/htmlx"])));
    }

    #[test]
    fn every_asset_carries_the_policy_and_is_not_cached() {
        for (path, kind) in [
            ("/status", "text/html"),
            ("/status.js", "text/javascript"),
            ("/status.css", "text/css"),
            ("/status.svg", "image/svg+xml"),
        ] {
            let Some(resp) = asset(path) else {
                panic!("{path} is not served");
            };
            let h = resp.headers();
            let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            assert!(ct.is_some_and(|ct| ct.starts_with(kind)), "{path}: {ct:?}");
            assert_eq!(
                h.get(header::CONTENT_SECURITY_POLICY),
                Some(&HeaderValue::from_static(CONTENT_SECURITY_POLICY))
            );
            assert_eq!(
                h.get(header::CACHE_CONTROL),
                Some(&HeaderValue::from_static("no-store"))
            );
        }
        assert!(asset("/status.html").is_none());
        assert!(asset("/statusz").is_none());
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_runs_no_inline_code() {
        // The policy would block both; this keeps the files from relying on what it blocks.
        for text in [
            HTML,
            JS,
            CSS,
            &ICON.replace("xmlns=\"http://www.w3.org/2000/svg\"", ""),
        ] {
            for banned in [
                "http://",
                "https://",
                "//cdn",
                "@import",
                "innerHTML",
                "eval(",
            ] {
                assert!(!text.contains(banned), "{banned} in an asset");
            }
        }
        assert!(!HTML.contains("<script>") && !HTML.contains("<style"));
        assert!(!HTML.contains(" style="));
        // No inline event handler (`onclick=` and the like).
        let handler = HTML.match_indices(" on").any(|(i, _)| {
            let rest = &HTML[i + 3..];
            let name = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!handler, "inline event handler in status.html");
        assert!(HTML.contains(r#"<script src="status.js""#));
        assert!(HTML.contains(r#"<link rel="stylesheet" href="status.css">"#));
        assert!(HTML.contains("name=\"viewport\""));
        assert!(HTML.contains(r#"<link rel="icon" href="status.svg""#));
    }
}
