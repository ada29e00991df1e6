//! `/api/v1/openapi.json` covers exactly the route table, every operation in it is served, and a
//! real OpenAPI validator accepts it.

use std::{collections::BTreeSet, path::Path, process::Command};

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

/// The document is exact: schemathesis, with every check, against the real server authorized
/// with the admin token, finds no request the server treats otherwise than the document says.
/// What the document cannot say (a wallet signature, a real video, the configured ladder)
/// is allowed, each with its reason, in `tools/schemathesis.toml`.
#[tokio::test]
async fn schemathesis_finds_the_server_as_the_document_says() {
    const ADMIN: &str = "conformance-admin-token-0123456789";
    let server = TestServer::start_with(|config| {
        config.auth.admin_token = ADMIN.into();
        // Thousands of requests from one address: limits would answer most with 429.
        config.rate_limit.enabled = false;
    });
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/tools");
    let python = python_venv().join("bin/python");
    let mut command = Command::new(&python);
    command
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(tools.join("schemathesis.toml"))
        .arg("run")
        .arg(server.url("/api/v1/openapi.json"))
        .args([
            "--checks",
            "all",
            "--max-examples",
            "20",
            "--seed",
            "20261207",
        ])
        .args(["--no-color", "-H"])
        .arg(format!("Authorization: Bearer {ADMIN}"))
        // Registers the tus PATCH body's media type.
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", &tools);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): `bash .ci/test` installs schemathesis",
                python.display()
            )
        });
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found the server and the document apart:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every operation it selected (all of them) was exercised.
    let selected = report
        .lines()
        .find_map(|line| line.trim().strip_prefix("Selected: "))
        .and_then(|counts| counts.split_once('/'))
        .unwrap_or_else(|| panic!("no operation count in {report}"));
    assert_eq!(selected.0, selected.1, "{report}");
    assert!(
        report.contains(&format!("Tested: {}", selected.0)),
        "{report}"
    );
}
