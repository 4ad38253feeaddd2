"""Outbound HTTP from step bodies: a small synchronous client over ``wasi:http``.

    from durable import http

    def charge(order):
        answer = http.post("http://127.0.0.1:8088/charges", json={"cents": order["cents"]})
        return answer.raise_for_status().json()

    @durable.workflow
    def checkout(ctx, order):
        return ctx.step("charge", charge, order)

The host sends a request only while a step executes and only to the
destinations the workflow was granted (``--allow-http HOST[:PORT]``), and
records each request with its step. A completed step is replayed from its
record, so its requests are never sent again; a step cut short by a crash
runs again and sends them again. Every request therefore carries an
``Idempotency-Key`` header, so that a service honouring it recognises the
repeat: the step's idempotency key for its first request, ``KEY/2``,
``KEY/3``... for the next, the same on every attempt of the step.

A workflow that imports this module is built with ``durable-build --http``,
which builds against the ``wasi:http`` of the durable-host it finds.
"""

from __future__ import annotations

import json as _json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ._sdk import PermanentError, StepError, StepRun, current_step

try:
    from componentize_py_types import Err, Ok
    from wit_world.imports import outgoing_handler, streams, types
except ImportError:
    raise ImportError(
        "durable.http needs a component built with outbound HTTP: build the workflow with "
        "`durable-build --http app.py -o app.wasm`"
    ) from None

__all__ = ["IDEMPOTENCY_KEY", "Response", "request", "get", "post", "put", "patch", "delete"]

#: The header that carries the step's idempotency key.
IDEMPOTENCY_KEY = "idempotency-key"

# How much of a body one stream call moves: wasi:io streams take at most
# 4096 bytes per blocking write.
_CHUNK = 4096

_METHODS = {
    "GET": types.Method_Get(),
    "HEAD": types.Method_Head(),
    "POST": types.Method_Post(),
    "PUT": types.Method_Put(),
    "DELETE": types.Method_Delete(),
    "OPTIONS": types.Method_Options(),
    "PATCH": types.Method_Patch(),
}


@dataclass
class Response:
    """A response, read whole."""

    #: ``POST http://host/path``: the call, as messages name it.
    call: str
    status: int
    #: Header names in lower case, each with its values in order.
    headers: dict[str, list[str]] = field(default_factory=dict)
    content: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of the header ``name`` (any case)."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def text(self) -> str:
        """The body as text (invalid UTF-8 replaced)."""
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body decoded from JSON; a :class:`PermanentError` when it is not JSON."""
        try:
            return _json.loads(self.content)
        except ValueError as e:
            raise PermanentError(
                f"{self.call}: the response ({self.status}) is not JSON: {e}"
            ) from None

    def raise_for_status(self) -> Response:
        """This response if its status is below 400. Otherwise a
        :class:`StepError` (which a retry policy retries) for 408, 409 (the
        same idempotency key is still being served), 429 and 5xx, which a
        later attempt may not meet, and a :class:`PermanentError` for the other
        4xx, which it would. Redirects are not followed."""
        if self.status < 400:
            return self
        message = f"{self.call} answered {self.status}: {self.text[:200].strip()}"
        if self.status in (408, 409, 429) or self.status >= 500:
            raise StepError(message)
        raise PermanentError(message)


def request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    data: bytes | str | None = None,
    idempotency_key: bool = True,
    connect_timeout: float = 10.0,
    timeout: float = 30.0,
) -> Response:
    """Send a request from the step being executed and read the whole response.

    ``json`` sends a value as JSON (with its content type unless one is
    given); ``data`` sends bytes or text. ``timeout`` bounds the wait for the
    response to begin and then between the pieces of its body, in seconds.
    A response of any status is returned: see :meth:`Response.raise_for_status`.

    Raises :class:`PermanentError` outside a step, for a destination the
    workflow was not granted and for a URL that cannot be sent; a plain
    :class:`StepError` (which a retry policy retries) when the service cannot
    be reached or does not answer in time.
    """
    method = method.upper()
    call = f"{method} {_shown(url)}"
    step = current_step()
    if step is None:
        raise PermanentError(
            f"{call} was not sent: outbound HTTP is allowed only inside a step body (the "
            "answer of a request made between steps would not be replayed)"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentError(
            f"{call} was not sent: the URL must be http:// or https:// and name a host"
        )
    fields: list[tuple[str, bytes]] = []
    given = {name.lower() for name in (headers or {})}
    if idempotency_key and IDEMPOTENCY_KEY not in given:
        fields.append((IDEMPOTENCY_KEY, _next_request_key(step).encode()))
    for name, value in (headers or {}).items():
        fields.append((name, str(value).encode()))
    body = _body(json, data, given, fields)
    if body and "content-length" not in given:
        # Without a length the body would go chunked, which not every service reads.
        fields.append(("content-length", str(len(body)).encode()))
    try:
        outgoing = types.OutgoingRequest(types.Fields.from_list(fields))
    except Err as e:
        raise PermanentError(
            f"{call} was not sent: a header is not valid ({_name(e.value)})"
        ) from None
    outgoing.set_method(_METHODS.get(method) or types.Method_Other(method))
    outgoing.set_scheme(types.Scheme_Https() if parts.scheme == "https" else types.Scheme_Http())
    outgoing.set_authority(parts.netloc.rsplit("@", 1)[-1])
    outgoing.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    options = types.RequestOptions()
    options.set_connect_timeout(_nanos(connect_timeout))
    options.set_first_byte_timeout(_nanos(timeout))
    options.set_between_bytes_timeout(_nanos(timeout))
    try:
        outgoing_body = outgoing.body()
        future = outgoing_handler.handle(outgoing, options)
        _write(outgoing_body, body)
        incoming = _await(future)
        return Response(call, incoming.status(), _headers(incoming.headers()), _read(incoming))
    except Err as e:
        raise _failure(call, parts, e.value) from None


def get(url: str, **options: Any) -> Response:
    return request("GET", url, **options)


def post(url: str, **options: Any) -> Response:
    return request("POST", url, **options)


def put(url: str, **options: Any) -> Response:
    return request("PUT", url, **options)


def patch(url: str, **options: Any) -> Response:
    return request("PATCH", url, **options)


def delete(url: str, **options: Any) -> Response:
    return request("DELETE", url, **options)


# The step attempt whose requests are being counted, and how many it sent.
_requests: tuple[str, int, int] = ("", 0, 0)


def _next_request_key(step: StepRun) -> str:
    """The step's idempotency key for its first request, ``KEY/n`` for the
    n-th, counted afresh on each attempt."""
    global _requests
    key, attempt, sent = _requests
    if (key, attempt) != (step.key, step.attempt):
        sent = 0
    sent += 1
    _requests = (step.key, step.attempt, sent)
    return step.idempotency_key if sent == 1 else f"{step.idempotency_key}/{sent}"


def _body(json: Any, data: bytes | str | None, given: set[str], fields: list) -> bytes:
    if json is not None and data is not None:
        raise PermanentError("give a request either json= or data=, not both")
    if json is not None:
        if "content-type" not in given:
            fields.append(("content-type", b"application/json"))
        return _json.dumps(json, separators=(",", ":")).encode()
    if isinstance(data, str):
        return data.encode()
    return bytes(data or b"")


def _write(outgoing_body, body: bytes) -> None:
    stream = outgoing_body.write()
    for start in range(0, len(body), _CHUNK):
        stream.blocking_write_and_flush(body[start : start + _CHUNK])
    # The stream is a child of the body: it must go before the body finishes.
    stream.__exit__(None, None, None)
    types.OutgoingBody.finish(outgoing_body, None)


def _await(future):
    """The response, once the host has it; raises ``Err`` with the error code
    when none came."""
    with future.subscribe() as ready:
        ready.block()
    # Once ready, get() answers Ok(Ok(response)) or Ok(Err(code)): only a
    # function's outermost result is raised by componentize-py.
    answer = future.get()
    future.__exit__(None, None, None)
    if not isinstance(answer, Ok):
        raise Err(types.ErrorCode_InternalError("the response was taken already"))
    if isinstance(answer.value, Err):
        raise answer.value
    return answer.value.value


def _read(incoming) -> bytes:
    body = incoming.consume()
    stream = body.stream()
    chunks = []
    while True:
        try:
            chunks.append(stream.blocking_read(64 * 1024))
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            raise
    stream.__exit__(None, None, None)
    body.__exit__(None, None, None)
    incoming.__exit__(None, None, None)
    return b"".join(chunks)


def _headers(fields) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in fields.entries():
        headers.setdefault(name.lower(), []).append(value.decode("latin-1"))
    fields.__exit__(None, None, None)
    return headers


def _failure(call: str, parts, code: Any) -> StepError:
    """A request's failure, said so that the step's recorded error explains it."""
    if isinstance(code, streams.StreamError_LastOperationFailed):
        return StepError(f"{call}: the connection broke off")
    if isinstance(code, types.ErrorCode_HttpRequestDenied):
        destination = parts.hostname + (f":{parts.port}" if parts.port else "")
        return PermanentError(
            f"{call} was refused by the host: {destination} is not among the workflow's "
            f"HTTP destinations (grant it with --allow-http {destination})"
        )
    if isinstance(code, types.ErrorCode_ConnectionTimeout):
        return StepError(f"{call}: no connection in time")
    if isinstance(
        code, (types.ErrorCode_HttpResponseTimeout, types.ErrorCode_ConnectionReadTimeout)
    ):
        return StepError(f"{call}: no response in time")
    if isinstance(code, types.ErrorCode_ConnectionRefused):
        return StepError(f"{call}: connection refused")
    if isinstance(code, (types.ErrorCode_DnsError, types.ErrorCode_DestinationNotFound)):
        return StepError(f"{call}: the host name does not resolve")
    if isinstance(code, types.ErrorCode_ConnectionTerminated):
        return StepError(f"{call}: the connection broke off")
    if isinstance(
        code, (types.ErrorCode_HttpRequestUriInvalid, types.ErrorCode_HttpRequestMethodInvalid)
    ):
        return PermanentError(f"{call}: {_name(code)}")
    return StepError(f"{call} failed: {_name(code)}")


def _name(code: Any) -> str:
    """``HttpRequestDenied`` for ``ErrorCode_HttpRequestDenied()``."""
    return type(code).__name__.split("_", 1)[-1]


def _nanos(seconds: float) -> int:
    return max(0, int(seconds * 1_000_000_000))


def _shown(url: str) -> str:
    """``url`` without its query, fragment and user, where secrets tend to go."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else f"{host}{parts.path}"
