"""Lets schemathesis send tus PATCH bodies (application/offset+octet-stream: raw bytes)."""

import schemathesis


@schemathesis.serializer("application/offset+octet-stream")
def offset_octet_stream(ctx, value):
    return value if isinstance(value, bytes) else str(value).encode()


@schemathesis.serializer("text/vtt")
def web_vtt(ctx, value):
    return value if isinstance(value, bytes) else str(value).encode()


# OPTIONS answers with the server's capabilities (tus, CORS preflights) whatever the id, so it is
# no use of a deleted resource (see schemathesis.toml). The per-operation exemption there does not
# reach the checks of the stateful phase, so the check itself skips OPTIONS.
from schemathesis.specs.openapi import checks as _openapi_checks

_openapi_checks._NON_CREATION_METHODS = _openapi_checks._NON_CREATION_METHODS - {"options"}
