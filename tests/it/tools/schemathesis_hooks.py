"""Lets schemathesis send tus PATCH bodies (application/offset+octet-stream: raw bytes)."""

import schemathesis


@schemathesis.serializer("application/offset+octet-stream")
def offset_octet_stream(ctx, value):
    return value if isinstance(value, bytes) else str(value).encode()
