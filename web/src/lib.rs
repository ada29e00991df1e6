//! streamgate-web: the HTTP face of StreamGate — routes, DTOs, the error-status table and
//! middleware. The only crate that knows HTTP; it never touches the store.
//!
//! Code map:
//! - [`routes`] — one module per area; handlers extract, `send` a message, map the reply.
//! - [`dto`] — the JSON shapes clients see.
//! - [`error`] — `ApiError`, the one kind → status table.
//! - [`middleware`] — request metrics, trace context and request ids, security headers, CORS,
//!   per-client rate limits, JSON 404/405, a limit on silent request bodies.
//! - [`serve`] — the connection front; [`stall`] — the limit on a client's silent waits.

pub mod dto;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod send_budget;
pub mod serve;
pub mod stall;

use actix_web::web;
pub use streamgate_actors::Actors;

/// Registers every route. The app must carry `web::Data<Actors>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(64 * 1024)
            .error_handler(|error, _| error::ApiError::from_json(&error).into()),
    )
    .app_data(web::QueryConfig::default().error_handler(|error, _| {
        error::ApiError::bad_request("invalid_query", error.to_string()).into()
    }))
    .app_data(web::PathConfig::default().error_handler(|error, _| {
        error::ApiError::bad_request("invalid_path", error.to_string()).into()
    }));
    routes::configure(cfg);
    routes::app::configure(cfg);
}

/// The answer for any path no route matches.
pub async fn not_found() -> Result<actix_web::HttpResponse, error::ApiError> {
    Err(error::ApiError::not_found("not_found", "no such resource"))
}
