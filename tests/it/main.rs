//! StreamGate's one integration-test binary: every test runs the real server (real sled, real
//! files, real ffmpeg) on 127.0.0.1 with port 0 and a temporary data directory.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod audit_coverage;
mod auth;
mod auth_abuse;
mod bad_input;
mod cache_ops;
mod chain;
mod checksum;
mod cluster;
mod cluster_coherence;
mod config;
mod connections;
mod creators;
mod e2e;
mod harness;
mod hostile;
mod jobs;
mod media;
mod monitor;
mod openapi;
mod ops;
mod otlp;
mod playback_grants;
mod postgres;
mod progressive;
mod rate_limits;
mod s3;
mod server;
mod shutdown;
mod storage;
mod supervision;
mod tls;
mod trace_context;
mod tus;
mod webhooks;
