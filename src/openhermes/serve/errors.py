"""Errors in OpenAI's JSON form, and the 400s a request's own content causes."""

from __future__ import annotations

from contextlib import contextmanager

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from openhermes.infer.sequence import ContextWindowError


class APIError(Exception):
    """An error in OpenAI's JSON form: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip(),
                        code="invalid_json")
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "extra_forbidden":
        names = sorted({str(e["loc"][-1]) for e in errors if e.get("type") == "extra_forbidden"})
        return APIError(400, f"unrecognized request argument(s): {', '.join(names)}", param=names[0],
                        code="unknown_parameter")
    param = ".".join(loc) or None
    where = f"'{param}': " if param else ""
    return APIError(400, f"{where}{first.get('msg', 'invalid request')}", param=param, code="invalid_value")


@contextmanager
def prompt_errors(param: str):
    """A prompt that cannot be built is the client's mistake: a 400 naming the field."""
    try:
        yield
    except ContextWindowError as e:
        raise APIError(400, str(e), param=param, code="context_length_exceeded") from None
    except ValueError as e:
        raise APIError(400, str(e), param=param, code="invalid_value") from None
