"""What every reviewed route does alike at its edges: read and validate the JSON body with
OpenAI-style errors, describe that body in the OpenAPI document, and say the verdict in
headers."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from conscience.server.chat.protocol import ConscienceResult
from conscience.server.errors import ApiError

__all__ = ["conscience_headers", "openapi_body", "parse_body"]

Model = TypeVar("Model", bound=BaseModel)


async def parse_body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body as ``model``, or a 400 naming the first bad field."""
    raw = await request.body()  # its size is bounded as it arrives (server.middleware)
    try:
        # Not json.loads: deep nesting (10 000 "[") is a RecursionError there, and it takes NaN,
        # Infinity and lone surrogates that nothing downstream can encode again. pydantic-core
        # refuses all of them, and invalid UTF-8, with a ValueError (nesting: 200 levels).
        payload = from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = f"{param}: {first['msg']}" if param else first["msg"]
        raise ApiError(400, message, param=param, code="invalid_value") from exc


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined: an OpenAPI document resolves ``#/...``
    from its own root, where pydantic's ``#/$defs/...`` does not exist."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a handler that reads its body itself (to give OpenAI-style
    errors): FastAPI cannot see the model, so it is described here, for clients' generators
    and for the schema-driven fuzz tests."""
    schema = _inline_refs(model.model_json_schema())
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def conscience_headers(result: ConscienceResult) -> dict[str, str]:
    """The verdict and action of a reviewed response, for clients that read only headers."""
    return {
        "X-Conscience-Verdict": result.verdict or "unreviewed",
        "X-Conscience-Action": result.action.value,
    }
