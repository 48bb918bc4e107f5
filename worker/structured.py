"""Structured output for llama.cpp: JSON schemas it can enforce, and tool calls.

llama.cpp constrains generation with a GBNF grammar built from a JSON schema. The
converter enforces only part of JSON Schema; a schema that uses anything else is refused
with the keyword named, so that an answer never silently fails its schema. Integer
ranges, which the converter ignores, become enums when they are small enough.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

from xb.core.protocol import Tool, ToolCall
from xb.worker.backend import BackendError

TOOL_INSTRUCTIONS = (
    "You can call functions. To call one, answer with only a JSON object of the form "
    '{"name": <function name>, "arguments": <object>}. The functions:\n'
)

# Keywords the grammar enforces, and annotations that constrain nothing.
_ENFORCED = {
    "type",
    "format",
    "$ref",
    "oneOf",
    "anyOf",
    "allOf",
    "const",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "pattern",
    "minLength",
    "maxLength",
    "$defs",
    "definitions",
}
_ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "default", "examples"}
_RANGE_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
MAX_ENUM_RANGE = 1000


def prepare_schema(schema: Any, where: str = "schema") -> Any:
    """``schema`` in the form the grammar converter enforces; raises ``BackendError``."""
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, dict):
        raise BackendError(f"{where} is not a JSON schema object")
    out = dict(schema)
    if any(key in out for key in _RANGE_KEYS):
        out = _range_as_enum(out, where)
    for key in out:
        if key not in _ENFORCED and key not in _ANNOTATIONS:
            raise BackendError(
                f"JSON schema keyword '{key}' at {where} cannot be enforced while generating; "
                "remove it or validate the answer yourself"
            )
    for key in ("properties", "$defs", "definitions"):
        if isinstance(out.get(key), dict):
            out[key] = {k: prepare_schema(v, f"{where}.{key}.{k}") for k, v in out[key].items()}
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(out.get(key), list):
            out[key] = [prepare_schema(v, f"{where}.{key}[{i}]") for i, v in enumerate(out[key])]
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = prepare_schema(out[key], f"{where}.{key}")
    return out


def _range_as_enum(schema: dict[str, Any], where: str) -> dict[str, Any]:
    if schema.get("type") != "integer":
        raise BackendError(
            f"numeric bounds at {where} can only be enforced on integers; remove them"
        )
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if low is None or high is None:
        raise BackendError(f"an integer range at {where} needs both a lower and an upper bound")
    low = int(low) + (1 if "exclusiveMinimum" in schema else 0)
    high = int(high) - (1 if "exclusiveMaximum" in schema else 0)
    if high - low >= MAX_ENUM_RANGE or high < low:
        raise BackendError(
            f"the integer range at {where} has {high - low + 1} values; at most "
            f"{MAX_ENUM_RANGE} can be enforced"
        )
    rest = {k: v for k, v in schema.items() if k not in _RANGE_KEYS and k != "type"}
    return {**rest, "enum": list(range(low, high + 1))}


# llama.cpp's JSON grammars let a number's exponent run to 16 digits: "1e999999" is JSON
# text, but no double holds it, so it parses as Infinity and is written back as
# "Infinity", which is not JSON. Two exponent digits keep every number finite.
_NUMBER_RULE = (
    'number ::= "-"? ([0-9] | [1-9] [0-9]{{0,15}}) ("." [0-9]{{1,16}})? '
    "([eE] [-+]? [0-9]{{1,2}})? {space}"
)


def strict_numbers(gbnf: str) -> str:
    """``gbnf`` with its JSON number rule replaced by one that only allows finite numbers."""
    lines = gbnf.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("number ::="):
            lines[index] = _NUMBER_RULE.format(space=line.split()[-1])  # its whitespace rule
    return "\n".join(lines)


def schema_gbnf(schema: Any) -> str:
    """The grammar for a prepared JSON schema, with strict numbers."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return strict_numbers(json_schema_to_gbnf(json.dumps(schema)))


def openai_tool(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": json.loads(tool.parameters),
        },
    }


def with_tool_instructions(
    messages: list[dict[str, str]], tools: list[Tool]
) -> list[dict[str, str]]:
    """The messages with a system message that lists the tools and how to call them."""
    note = TOOL_INSTRUCTIONS + "\n".join(json.dumps(openai_tool(t)["function"]) for t in tools)
    if messages and messages[0]["role"] == "system":
        note = messages[0]["content"] + "\n\n" + note
        messages = messages[1:]
    return [{"role": "system", "content": note}, *messages]


def call_schema(tools: list[Tool], choice: str) -> dict[str, Any]:
    """The JSON schema that every allowed tool call matches."""
    if choice not in ("auto", "required"):
        tools = [t for t in tools if t.name == choice]
        if not tools:
            raise BackendError(f"tool_choice names {choice!r}, which is not a tool")
    options = []
    for tool in tools:
        arguments = json.loads(tool.parameters) or {"type": "object"}
        options.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": tool.name},
                    "arguments": prepare_schema(arguments, f"tool {tool.name!r} parameters"),
                },
                "required": ["name", "arguments"],
            }
        )
    return options[0] if len(options) == 1 else {"anyOf": options}


def parse_call(text: str, tools: list[Tool]) -> tuple[ToolCall, ...]:
    """The tool call ``text`` holds, or nothing when it is not one."""
    try:
        value = json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python reads
        return ()
    names = {t.name for t in tools}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return ()
    if value["name"] not in names:
        return ()
    arguments = value.get("arguments", {})
    return (ToolCall(f"call_{uuid.uuid4().hex[:24]}", value["name"], json.dumps(arguments)),)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # Python's json reads NaN and Infinity


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is too large for a JSON number")
    return number
