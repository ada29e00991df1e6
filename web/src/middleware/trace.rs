//! A request's id, for [`super::observe`].
//!
//! No `tracing` span per request (neither `tracing_actix_web::TracingLogger`'s nor our own):
//! an enabled span costs a registry slot, its fields formatted and enter/exit work on every
//! poll, for every request, and was a third of the monitoring overhead in the load bench.
//! Instead the request's ids are the thread's current
//! [`RequestScope`](streamgate_actors::monitor::traces::RequestScope) while its future is
//! polled, and the log layers read them only when something is logged. A response body is
//! polled outside that scope (a logging body would log without ids; ours don't log). The
//! method, route, status, client and duration are in the request metrics, the trace stats and
//! the OTLP span.

use std::fmt;

use streamgate_actors::monitor::traces;

/// The id of one request (a random UUID), in its log scope and in `x-request-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(uuid::Uuid);

/// Length of the hyphenated form.
pub const REQUEST_ID_LEN: usize = 36;

impl RequestId {
    pub(super) fn from_uuid(uuid: uuid::Uuid) -> Self {
        Self(uuid)
    }

    pub fn uuid(&self) -> uuid::Uuid {
        self.0
    }

    /// The hyphenated form (ASCII hex digits and dashes), without allocating.
    pub fn encode(&self, buffer: &mut [u8; REQUEST_ID_LEN]) {
        let bytes = self.0.as_bytes();
        // Groups of 4, 2, 2, 2 and 6 bytes, dash-separated.
        traces::write_hex(&mut buffer[0..8], &bytes[0..4]);
        traces::write_hex(&mut buffer[9..13], &bytes[4..6]);
        traces::write_hex(&mut buffer[14..18], &bytes[6..8]);
        traces::write_hex(&mut buffer[19..23], &bytes[8..10]);
        traces::write_hex(&mut buffer[24..36], &bytes[10..16]);
        for dash in [8, 13, 18, 23] {
            buffer[dash] = b'-';
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_encode_as_hyphenated_uuids() {
        for _ in 0..1000 {
            let id = RequestId::from_uuid(traces::fast_uuid_v4());
            let mut text = [0; REQUEST_ID_LEN];
            id.encode(&mut text);
            assert_eq!(&text[..], id.to_string().as_bytes());
            assert_eq!(uuid::Uuid::try_parse_ascii(&text).ok(), Some(id.uuid()));
        }
        let fixed = RequestId::from_uuid(uuid::Uuid::from_u128(
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ));
        let mut buffer = [0; REQUEST_ID_LEN];
        fixed.encode(&mut buffer);
        assert_eq!(&buffer, b"01234567-89ab-cdef-fedc-ba9876543210");
    }
}
