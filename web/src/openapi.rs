//! `GET /api/v1/openapi.json`: the OpenAPI 3 document, generated from the route table
//! ([`crate::routes::table::ROUTES`]) next to the error body and auth schemes the routes share.

use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

use crate::routes::{
    cache::MAX_ADMIN_KEY_CHARS,
    table::{Access, In, Route, ROUTES},
};

pub(crate) async fn document_handler() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

/// The OpenAPI 3.0 document for [`ROUTES`].
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths
            .entry(route.pattern.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(operations) = entry {
            operations.insert(route.verb.name().to_string(), operation(route));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "StreamGate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Upload, transcode to HLS/DASH, stream — optionally gated by NFT ownership."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "session": {"type": "http", "scheme": "bearer", "description": "A session token from /api/v1/auth/login"},
                "admin": {"type": "http", "scheme": "bearer", "description": "The admin token from auth.admin_token"}
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "description": "stable snake_case code"},
                        "message": {"type": "string"}
                    }
                }
            }
        }
    })
}

fn operation(route: &Route) -> Value {
    let mut parameters: Vec<Value> = path_parameters(route.pattern)
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": path_schema(name)}))
        .collect();
    parameters.extend(route.query.iter().map(|param| {
        let (place, required) = match param.place {
            In::Query => ("query", false),
            In::Header => ("header", true),
        };
        json!({"name": param.name, "in": place, "required": required, "schema": (param.schema)()})
    }));
    let (status, content_type) = route.success;
    let success = if content_type.is_empty() {
        json!({"description": "success"})
    } else {
        json!({"description": "success", "content": {content_type: {"schema": {}}}})
    };
    let error = json!({
        "description": "an error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    });
    let mut responses = Map::new();
    responses.insert(status.to_string(), success);
    responses.insert("default".to_string(), error);
    let mut operation = json!({
        "tags": [route.tag],
        "summary": route.summary,
        "operationId": operation_id(route),
        "parameters": parameters,
        "responses": responses,
    });
    let security = match route.access {
        Access::Public => None,
        // Anonymous callers pass ungated media.
        Access::Gated => Some(json!([{}, {"session": []}, {"admin": []}])),
        Access::Session => Some(json!([{"session": []}, {"admin": []}])),
        Access::Admin => Some(json!([{"admin": []}])),
    };
    if let (Some(security), Value::Object(object)) = (security, &mut operation) {
        object.insert("security".to_string(), security);
    }
    if let (Some(body), Value::Object(object)) = (route.body, &mut operation) {
        object.insert(
            "requestBody".to_string(),
            json!({"required": true, "content": {route.body_type: {"schema": body()}}}),
        );
    }
    operation
}

/// A cache key is 1 to 256 characters without control characters; every other path parameter
/// is any segment (an unknown id is a 404).
fn path_schema(name: &str) -> Value {
    if name == "key" {
        json!({"type": "string", "minLength": 1, "maxLength": MAX_ADMIN_KEY_CHARS,
            "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"})
    } else {
        json!({"type": "string"})
    }
}

fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

/// `get /api/v1/media/{media_id}` → `get_api_v1_media_media_id`.
fn operation_id(route: &Route) -> String {
    let mut id = route.verb.name().to_string();
    for part in route.pattern.split(|c: char| !c.is_ascii_alphanumeric()) {
        if !part.is_empty() {
            id.push('_');
            id.push_str(part);
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_unique_and_parameters_come_from_the_path() {
        let mut ids: Vec<String> = ROUTES.iter().map(operation_id).collect();
        ids.sort();
        let before = ids.len();
        ids.dedup();
        assert_eq!(before, ids.len(), "duplicate operation");
        let doc = document();
        let get = &doc["paths"]["/api/v1/media/{media_id}/hls/{rendition}/{segment}"]["get"];
        let names: Vec<&str> = get["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["media_id", "rendition", "segment", "token"]);
    }
}
