//! `/api/v1/openapi.json` covers exactly the routes the server registers, and a real OpenAPI
//! validator accepts it.

use std::{collections::BTreeSet, path::Path, process::Command};

use crate::server::{python_venv, TestServer};

/// (method, path) of every route registered in `web/src/` (`web::resource` under an optional
/// `web::scope`, with its `.route(web::get()…)` / `web::method(Method::X)` lines). Resources
/// in a route file's `fn configure_item` live under `routes::MEDIA_ITEM_SCOPE`.
fn registered_routes() -> BTreeSet<(String, String)> {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/src");
    let item_scope = quoted_after(
        &std::fs::read_to_string(web.join("routes/mod.rs")).unwrap(),
        "MEDIA_ITEM_SCOPE: &str =",
    )
    .unwrap();
    let mut files = vec![web.join("openapi.rs")];
    for entry in std::fs::read_dir(web.join("routes")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let mut routes = BTreeSet::new();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        let scope = if file.ends_with("mod.rs") {
            String::new()
        } else {
            quoted_after(&source, "web::scope(").unwrap_or_default()
        };
        let item_routes_at = source.find("fn configure_item(").unwrap_or(source.len());
        let mut rest = source.as_str();
        while let Some(start) = rest.find("web::resource(") {
            let at = source.len() - rest.len() + start;
            rest = &rest[start + "web::resource(".len()..];
            let prefix = if at > item_routes_at {
                &item_scope
            } else {
                &scope
            };
            let path = format!("{prefix}{}", quoted_after(rest, "").unwrap());
            let block_end = rest.find("web::resource(").unwrap_or(rest.len());
            let block = &rest[..block_end];
            for method in ["get", "post", "put", "patch", "delete", "head"] {
                if block.contains(&format!("web::{method}()")) {
                    routes.insert((method.to_string(), path.clone()));
                }
            }
            if block.contains("Method::OPTIONS") {
                routes.insert(("options".to_string(), path.clone()));
            }
        }
    }
    routes
}

/// The first string literal after `marker` in `text`.
fn quoted_after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    let open = text[at..].find('"')? + at + 1;
    let close = text[open..].find('"')? + open;
    Some(text[open..close].to_string())
}

#[tokio::test]
async fn the_document_covers_every_route_and_validates() {
    let server = TestServer::start();
    let (status, document) = server.get_json("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.0.3");
    let mut documented = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let registered = registered_routes();
    assert!(
        registered.len() > 30,
        "the scan found the routes: {registered:?}"
    );
    let missing: Vec<_> = registered.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&registered).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}"
    );
    assert!(stale.is_empty(), "documented but not served: {stale:?}");

    // Every documented GET without parameters is really served (not 404/405).
    for (method, path) in &documented {
        if method == "get" && !path.contains('{') {
            let status = server.get(path).await.status().as_u16();
            assert!(![404, 405].contains(&status), "{path}: {status}");
        }
    }

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&document).unwrap()).unwrap();
    let python = python_venv().join("bin/python");
    let output = Command::new(&python)
        .args([
            "-c",
            "import json, sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')",
        ])
        .arg(file.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): `bash .ci/test` installs openapi-spec-validator", python.display()));
    assert!(
        output.status.success(),
        "openapi-spec-validator rejected the document: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
