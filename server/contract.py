"""The shape the client asked for, kept by a rewrite: ``response_format`` (``json_object``,
``json_schema``; the Responses API's ``text.format`` arrives as it).

The rewrite is asked in the client's format (the format is passed to the engine, which
constrains it where it can: vLLM's structured outputs, llama.cpp's JSON-schema grammar, and the
schema is written into the prompt for those that cannot), then validated against it here. A
rewrite that does not validate is not served: the pipeline blocks instead, so a client's
``parse()`` gets a parsed object or the API's refusal, never malformed JSON.

The validator is the part of JSON Schema that structured outputs use (types, properties,
required, additionalProperties, items, enum, const, anyOf, local ``$ref``), written here to
keep the dependencies small; a keyword it does not know is not checked.
"""

from __future__ import annotations

import json
from typing import Any

from conscience.errors import EngineError
from conscience.review import Conscience, Rewritten

__all__ = ["Invalid", "rewrite_in_format", "schema_of", "validate"]


class Invalid(ValueError):
    """A rewrite that is not what the client's format promises."""


def schema_of(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema a format promises: ``{}`` for any JSON object, None for free text."""
    kind = (response_format or {}).get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")  # type: ignore[union-attr]
        return schema if isinstance(schema, dict) else {}
    return None


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def validate(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> None:
    """Raise ``Invalid`` where ``value`` breaks ``schema``."""
    root = root or schema
    if "$ref" in schema:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise Invalid(f"cannot follow $ref {ref!r}")
        target: Any = root
        for step in ref[2:].split("/"):
            target = target.get(step) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            raise Invalid(f"$ref {ref!r} points nowhere")
        validate(value, target, root)
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is(value, name) for name in names):
            raise Invalid(f"{value!r:.60} is not of type {types}")
    if "enum" in schema and value not in schema["enum"]:
        raise Invalid(f"{value!r:.60} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        raise Invalid(f"{value!r:.60} is not {schema['const']!r}")
    for key in ("anyOf", "oneOf"):
        if key in schema and not any(_valid(value, s, root) for s in schema[key]):
            raise Invalid(f"{value!r:.60} matches none of {key}")
    for sub in schema.get("allOf") or []:
        validate(value, sub, root)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in value:
                raise Invalid(f"missing required property {name!r}")
        for name, item in value.items():
            if name in properties:
                validate(item, properties[name], root)
            elif schema.get("additionalProperties") is False:
                raise Invalid(f"unexpected property {name!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(item, schema["additionalProperties"], root)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            validate(item, schema["items"], root)


def _is(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(name, (object,)))


def _valid(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> bool:
    try:
        validate(value, schema, root)
    except Invalid:
        return False
    return True


async def rewrite_in_format(
    conscience: Conscience,
    messages: list[dict[str, Any]],
    answer: str,
    framework: str,
    response_format: dict[str, Any],
) -> Rewritten:
    """The rewrite, asked in ``response_format`` and checked against it (``Invalid``), with
    the engine's usage of it."""
    schema = schema_of(response_format)
    rule = "Reply with one JSON value and nothing else"
    if schema:
        rule += f", following this JSON schema: {json.dumps(schema)}"

    async def ask(budget: int, answer_chars: int) -> tuple[Any, Any]:
        prompt = conscience.rewrite_prompt(
            messages, answer, framework, budget=budget, answer_chars=answer_chars
        )
        last = prompt[-1]
        prompt[-1] = {**last, "content": f"{last['content']}\n\n{rule}."}
        body = {
            "model": conscience.judge_model,
            "messages": prompt,
            "temperature": conscience.rewrite_temperature,
            "max_tokens": conscience.rewrite_max_tokens,
            "response_format": response_format,
        }
        result = await conscience.client.chat(body)
        message = (result.get("choices") or [{}])[0].get("message") or {}
        return message.get("content") or "", result.get("usage")

    # Within the judge's context (conscience/context.py).
    text, usage = await conscience.fitting(ask)
    if not isinstance(text, str) or not text.strip():
        raise EngineError("the judge returned an empty rewrite")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Invalid(f"the rewrite is not JSON: {exc}") from exc
    if schema is not None:
        validate(value, schema)
    return Rewritten(text, usage if isinstance(usage, dict) else None)
