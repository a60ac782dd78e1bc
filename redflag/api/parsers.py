"""A JSON parser that answers hostile bodies with 400, never 500."""

from __future__ import annotations

import json
import math
import re

from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

MAX_NESTING = 32
# A decoded string can hold NUL or a lone surrogate only through one of these escapes: the decoder refuses a
# raw NUL (a control character) and UTF-8 decoding refuses an encoded surrogate. Without one in the text, the
# strings need no look (a hit, even a paired surrogate or an escaped backslash, only means a full look).
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(literal: str) -> float:
    # 1e400 would become inf, which no JSON column (PostgreSQL jsonb, SQLite's JSON_VALID) stores.
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"{literal[:20]} is too large for a number")
    return value


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict:
    # Which of two values a parser keeps differs between parsers: refuse rather than guess.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"duplicate key {json.dumps(duplicate[:50])}")
    return obj


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


def _check_depth(value, limit: int) -> None:
    """_inspect's nesting rule alone, one level at a time over the containers (what a clean text needs)."""
    level, depth = [value], 1
    while level:
        below = []
        for item in level:
            children = item.values() if type(item) is dict else item
            if children and depth >= limit:
                raise ParseError(f"JSON nests deeper than {limit} levels.")
            below += [child for child in children if type(child) is dict or type(child) is list]
        level, depth = below, depth + 1


class StrictJSONParser(BaseParser):
    """Not a JSONParser subclass on purpose: DRF reads a JSONParser's body through request.body, which
    applies Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) and answers an HTML 400 above it. The body's
    size was already judged by ApiGuardMiddleware against REDFLAG_MAX_BODY_BYTES; here it is read from
    the request stream, which never yields more than Content-Length.
    """

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("The body is not valid UTF-8.") from None
        try:
            data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                              object_pairs_hook=_object_without_duplicates)
        except RecursionError:
            raise ParseError(f"JSON nests deeper than {MAX_NESTING} levels.") from None
        except ValueError as exc:
            raise ParseError(f"The body is not valid JSON: {exc}") from None
        if _SUSPECT_ESCAPE.search(text):
            _inspect(data, MAX_NESTING)
        elif type(data) is dict or type(data) is list:
            _check_depth(data, MAX_NESTING)
        return data
