//! `/api/v1/openapi.json` covers exactly the route table, every operation in it is served, and a
//! real OpenAPI validator accepts it.

use std::{collections::BTreeSet, process::Command};

use reqwest::Method;
use streamgate_web::routes::table::ROUTES;

use crate::server::{python_venv, TestServer};

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
    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|route| (route.verb.name().to_string(), route.pattern.to_string()))
        .collect();
    assert!(table.len() > 30, "{table:?}");
    assert_eq!(documented, table);

    // Every operation is served: the router finds a resource and a route for the method (a
    // handler's own 404 names what is missing; the router's is plain `not_found`).
    for (method, pattern) in &documented {
        let path = pattern.replace('{', "x").replace('}', "");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = server
            .client
            .request(method.clone(), server.url(&path))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert_ne!(status, 405, "{method} {path}");
        if method != Method::HEAD && status == 404 {
            let body: serde_json::Value = response.json().await.unwrap();
            assert_ne!(body["code"], "not_found", "{method} {path}");
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
