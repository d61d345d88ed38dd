"""A bound on the request bodies a visitor can make the server read into memory.

Gradio's queue and API routes take JSON of any size, and Starlette reads a JSON body whole before parsing it: one
POST of a few GB would be held in memory by the server of a public Space. `RequestBodyLimit` answers such a request
before reading any byte of its body: a body must state its length (Content-Length; else 411) and stay within
`Settings.max_request_kb` (else 413). The upload route is left to Gradio, which spools each file to disk and bounds
it by `max_file_size` (`Settings.max_upload_mb`); the server framing the body by Content-Length reads no more.
"""

from __future__ import annotations

from typing import Any

from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

UPLOAD_ROUTE = "/upload"  # Gradio's upload route (under its API prefix): multipart, spooled to disk, bounded per file


class RequestBodyLimit:
    """ASGI middleware: refuses a body over `max_bytes`, or one that does not say its length, on every HTTP route but
    the upload, with a one-line message and without reading the body."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        await PlainTextResponse(message, status_code=status)(scope, receive, send)

    def refusal(self, scope: dict[str, Any]) -> tuple[int, str] | None:
        """(status, message) for a request this limit refuses, else None."""
        if scope["path"].endswith(UPLOAD_ROUTE):
            return None
        headers = {name.lower(): value for name, value in scope["headers"]}
        length = headers.get(b"content-length")
        if length is None:
            if b"transfer-encoding" in headers:  # a streamed body of unknown length
                return 411, "a request body must state its length (Content-Length)"
            return None  # no body
        if not length.isdigit():
            return 400, "Content-Length must be a whole number of bytes"
        if int(length) > self.max_bytes:
            return 413, f"a request body may hold at most {self.max_bytes:,} bytes here, this one holds {int(length):,}"
        return None


def request_body_limit(max_bytes: int) -> Middleware:
    """The middleware for `launch(app_kwargs={"middleware": [...]})` (FastAPI's own argument)."""
    return Middleware(RequestBodyLimit, max_bytes=max_bytes)
