"""RFC 9457 problem details: every refusal of the CA's API as ``application/problem+json``.

A :class:`Problem` is an exception that *is* the problem document: handlers raise it,
the exception handlers :func:`install`-ed on the app turn it (and every certwright error,
FastAPI's validation errors, unknown routes, unexpected exceptions) into a response::

    {"type": "https://certwright.dev/problems/token-invalid", "title": "Enrolment token refused",
     "status": 403, "detail": "the enrolment token is not valid"}

Type URIs are ``https://certwright.dev/problems/<slug>`` (RFC 9457 3.1.1: a URI that
identifies the problem type). Extension members (RFC 9457 3.2) appear where they help the
client: ``field`` for a :class:`~certwright.errors.PolicyViolation`, ``errors`` for a
request that failed validation.

What a problem document never contains: the request's values (a body echoed back could
carry the enrolment token), the reason a token was refused beyond its
``public_message`` (an unauthenticated caller must not learn whether a token exists, was
used or expired), or anything about an unexpected exception (500, logged server-side).

=======  ==============================  ==================================================
status   slug                            raised for
=======  ==============================  ==================================================
400      malformed-json                  a body that is not JSON
400      invalid-csr                     :class:`~certwright.errors.InvalidCSRError`
400      invalid-input                   other :class:`~certwright.errors.InvalidInputError`
400      request-refused                 any other :class:`~certwright.errors.CertwrightError`
401      client-certificate-required     an endpoint that needs mTLS, called without a certificate
403      token-invalid                   :class:`~certwright.service.enrollment.TokenError`
403      renewal-refused                 :class:`~certwright.service.enrollment.RenewalError`
403      policy-violation                :class:`~certwright.errors.PolicyViolation` (``field``)
403      peer-refused                    the client certificate is refused (revoked, expired ...)
403      access-denied                   the CA's access policy denies the request
404      not-found                       an unknown route, or a certificate not in the inventory
405      method-not-allowed              a known route with another method
408      request-timeout                 a body slower than ``ServerConfig.request_timeout``
409      conflict                        a duplicate certificate, an ambiguous serial
413      body-too-large                  a body over ``ServerConfig.max_body``
422      invalid-request                 a JSON body or query that fails validation
503      store-unavailable               :class:`~certwright.store.StoreError`
500      internal-error                  anything else (nothing said about it)
=======  ==============================  ==================================================

Example::

    >>> problem = Problem(404, "not-found", "Not found", "no certificate with serial 1f")
    >>> problem.document()["type"]
    'https://certwright.dev/problems/not-found'
    >>> problem_for(PolicyViolation("dns name x.evil not allowed", field="dns")).document()["field"]
    'dns'
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from certwright.errors import (
    CADirectoryError,
    CertwrightError,
    InvalidCSRError,
    InvalidInputError,
    PolicyViolation,
    VerificationError,
)
from certwright.service.enrollment import RenewalError, TokenError
from certwright.store.errors import AmbiguousSerialError, DuplicateCertificateError, StoreError

PROBLEM_BASE = "https://certwright.dev/problems/"
PROBLEM_JSON = "application/problem+json"

logger = logging.getLogger("certwright.server.api")

_STATUS_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("client-certificate-required", "Client certificate required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    413: ("body-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-request", "Invalid request"),
}


class Problem(Exception):
    """An RFC 9457 problem document, raised by the API and answered as-is.

    ``extensions`` are extra members of the document (never ``type``/``title``/``status``/
    ``detail``); ``headers`` go on the response (``Allow`` for a 405, for instance).

    Example::

        raise Problem(403, "access-denied", "Access denied", decision.reason)
    """

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        extensions: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.extensions = dict(extensions or {})
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def document(self) -> dict[str, Any]:
        """The JSON object of the problem (RFC 9457 3)."""
        return {
            **self.extensions,
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }

    def body(self) -> bytes:
        """The document as JSON bytes (what :meth:`response` carries)."""
        return json.dumps(self.document(), ensure_ascii=False, separators=(",", ":")).encode()

    def response(self) -> Response:
        """An ``application/problem+json`` response carrying the document."""
        return Response(self.body(), status_code=self.status, media_type=PROBLEM_JSON, headers=self.headers)


def problem_for(error: BaseException) -> Problem:
    """The problem document answering ``error`` (see the module table).

    Example::

        >>> problem_for(TokenError("token 7f used at 10:02")).detail
        'the enrolment token is not valid'
    """
    if isinstance(error, Problem):
        return error
    if isinstance(error, TokenError):
        # Unauthenticated callers learn nothing about the token: not whether it existed.
        return Problem(403, "token-invalid", "Enrolment token refused", error.public_message)
    if isinstance(error, RenewalError):
        return Problem(403, "renewal-refused", "Renewal refused", str(error))
    if isinstance(error, PolicyViolation):
        return Problem(
            403,
            "policy-violation",
            "Not allowed by the profile or the token",
            str(error),
            extensions={"field": error.field},
        )
    if isinstance(error, VerificationError):
        return Problem(403, "peer-refused", "Client certificate refused", error.reason)
    if isinstance(error, InvalidCSRError):
        return Problem(400, "invalid-csr", "Invalid certificate signing request", str(error))
    if isinstance(error, InvalidInputError):
        return Problem(400, "invalid-input", "Invalid input", str(error))
    if isinstance(error, DuplicateCertificateError | AmbiguousSerialError):
        return Problem(409, "conflict", "Conflict", str(error))
    if isinstance(error, StoreError):
        return Problem(
            503,
            "store-unavailable",
            "Inventory unavailable",
            "the inventory database cannot be used now",
            headers={"Retry-After": "1"},
        )
    if isinstance(error, CADirectoryError):
        return Problem(503, "ca-unavailable", "CA unavailable", "the CA cannot issue now")
    if isinstance(error, CertwrightError):
        return Problem(400, "request-refused", "Request refused", str(error))
    return Problem(500, "internal-error", "Internal server error", "the server failed to handle the request")


def status_problem(
    status: int, detail: str | None = None, *, headers: Mapping[str, str] | None = None
) -> Problem:
    """The problem for a bare HTTP status (Starlette's 404/405 and FastAPI's own errors)."""
    slug, title = _STATUS_SLUGS.get(status, ("internal-error" if status >= 500 else "bad-request", ""))
    if not title:
        title = "Internal server error" if status >= 500 else "Bad request"
    return Problem(status, slug, title, detail or title, headers=headers)


def validation_problem(errors: Sequence[Any]) -> Problem:
    """A problem for FastAPI's ``RequestValidationError``: 400 for malformed JSON, else 422.

    The ``errors`` member lists where and what (``loc``, ``msg``), never the input value.
    """
    items = [e for e in errors if isinstance(e, Mapping)]
    if any(e.get("type") == "json_invalid" for e in items):
        return Problem(400, "malformed-json", "Malformed JSON", "the request body is not valid JSON")
    listed = [
        {"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in items[:20]
    ]
    where = "; ".join(f"{'.'.join(i['loc'])}: {i['msg']}" for i in listed[:3])
    return Problem(
        422,
        "invalid-request",
        "Invalid request",
        where or "the request is invalid",
        extensions={"errors": listed},
    )


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` with a problem document.

    Example::

        app = FastAPI()
        install(app)
    """

    async def on_problem(request: Request, exc: Exception) -> Response:
        problem = problem_for(exc)
        if problem.status >= 500:
            logger.error("%s %s failed: %s", request.method, _shown_path(request), exc)
        return problem.response()

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_problem(exc.errors()).response()

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) and exc.status_code != 404 else None
        if exc.status_code == 404 and detail is None:
            detail = f"no such endpoint: {request.method} {_shown_path(request)}"
        return status_problem(exc.status_code, detail, headers=exc.headers).response()

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Starlette's ServerErrorMiddleware logs the traceback and re-raises after this answer.
        return problem_for(exc).response()

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(CertwrightError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def _shown_path(request: Request) -> str:
    path = request.url.path
    # The path is the client's own text: cap it and keep it printable in the answer.
    shown = "".join(c if c.isprintable() else "?" for c in path[:200])
    return shown + ("..." if len(path) > 200 else "")
