"""A JSON parser that answers hostile bodies with 400, never 500."""

from __future__ import annotations

import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_NESTING = 32


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _inspect(value, limit: int) -> None:
    """Refuse nesting deeper than ``limit``, NUL characters and lone surrogates (PostgreSQL text holds neither).

    Iterative, so a hostile body cannot exhaust the stack.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise ParseError(f"JSON nests deeper than {limit} levels.")
        if isinstance(item, str):
            if "\x00" in item:
                raise ParseError("Strings may not contain NUL (\\u0000) characters.")
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ParseError("Strings may not contain unpaired surrogate escapes (\\ud800-\\udfff).") from None
        elif isinstance(item, dict):
            stack.extend((key, depth + 1) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("The body is not valid UTF-8.") from None
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            raise ParseError(f"JSON nests deeper than {MAX_NESTING} levels.") from None
        except ValueError as exc:
            raise ParseError(f"The body is not valid JSON: {exc}") from None
        _inspect(data, MAX_NESTING)
        return data
