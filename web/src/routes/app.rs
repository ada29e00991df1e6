//! The web app: `web/app/` embedded at build time and served from the binary, same origin as the
//! API. `/app/{file}` serves an asset; the app's own paths (`/`, `/watch/{id}`, `/upload`,
//! `/mine`, `/operator`) serve `index.html`, whose script renders the page from the path.
//!
//! These are pages, not API operations, so they stay out of the route table (and the OpenAPI
//! document); `/api/*` and every other unknown path keep the JSON 404.
//!
//! App responses carry their own content security policy (the default one forbids scripts):
//! scripts, styles and connections to this origin only, no inline script; `blob:` media for
//! hls.js's MediaSource (its worker is off, so no worker source is needed) and `data:` media
//! for the empty `<track>` it adds before it renders caption cues.

use actix_web::{
    http::header::{self, HeaderValue},
    web, HttpResponse,
};

use crate::error::ApiError;

pub const APP_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self'; media-src 'self' blob: data:; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Client-side routes that render the app (`{tail}` pages take an id).
pub const PAGES: &[&str] = &["/", "/upload", "/mine", "/operator", "/watch/{id}"];

pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! assets {
    ($($path:literal => $type:expr),* $(,)?) => {
        &[$(Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../app/", $path)),
        }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the app is made of (a test checks this against `web/app/`).
pub const ASSETS: &[Asset] = assets![
    "index.html" => "text/html; charset=utf-8",
    "app.css" => "text/css; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "js/main.js" => JS,
    "js/api.js" => JS,
    "js/ui.js" => JS,
    "js/wallet.js" => JS,
    "js/library.js" => JS,
    "js/watch.js" => JS,
    "js/upload.js" => JS,
    "js/mine.js" => JS,
    "js/operator.js" => JS,
    "vendor/hls.min.mjs" => JS,
    "vendor/tus.min.js" => JS,
];

pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.path == path)
}

fn respond(asset: &Asset) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, asset.content_type))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(APP_CSP),
        ))
        .body(asset.body)
}

async fn page() -> Result<HttpResponse, ApiError> {
    asset("index.html")
        .map(respond)
        .ok_or_else(|| ApiError::not_found("not_found", "no such resource"))
}

async fn file(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    asset(&path)
        .map(respond)
        .ok_or_else(|| ApiError::not_found("not_found", "no such resource"))
}

/// Registers the pages and `/app/{file}`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for pattern in PAGES {
        cfg.service(
            super::table::routed(web::resource(*pattern), pattern)
                .route(web::get().to(page))
                .route(web::head().to(page)),
        );
    }
    const FILES: &str = "/app/{file:.*}";
    cfg.service(
        super::table::routed(web::resource(FILES), FILES)
            .route(web::get().to(file))
            .route(web::head().to(file)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `web/app/` that a browser loads is embedded, and nothing embedded is
    /// missing (the maintenance script and notes are not served).
    #[test]
    fn every_app_file_is_embedded() {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    out.push(path.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("app");
        let mut files = Vec::new();
        walk(&root, &root, &mut files);
        files.retain(|file| !file.ends_with(".sh") && !file.ends_with(".md"));
        files.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.path.to_string()).collect();
        embedded.sort();
        assert_eq!(files, embedded);
    }

    #[test]
    fn the_app_policy_allows_no_inline_script() {
        assert!(APP_CSP.contains("script-src 'self';"));
        assert!(!APP_CSP.contains("unsafe-inline"));
        assert!(!APP_CSP.contains("unsafe-eval"));
    }
}
