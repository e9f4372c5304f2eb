"""The quality engineer's reject rule on the sizes of defect regions (edgekd/region_sizes.py).

A line rejects by size ("scratch longer than 2 mm", "spot larger than 0.5 mm2"), not by anomaly score. With a scale
(`--mm-per-px 0.05`, or a known width: `--mm-per-px 40mm=800px`) every region carries its area, length and width in
millimetres; `--reject-if "area_mm2 > 0.5 or length_mm > 2"` then decides, after the anomaly decision, which
defective parts are rejected: a part is rejected when any of its regions meets the rule.

The rule is parsed here, never evaluated as Python: comparisons of a size with a number, joined by and / or / not and
parentheses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from edgekd.errors import EdgekdError
from edgekd.region_sizes import MM_FIELDS, PIXEL_FIELDS

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}
_TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)|(?P<op>>=|<=|>|<)|(?P<paren>[()])|"
                    r"(?P<word>[A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class RejectRule:
    text: str
    test: Callable[[dict], bool]

    @classmethod
    def parse(cls, text: str, has_scale: bool) -> "RejectRule":
        """The rule, or one line saying what is wrong with it (before the model loads)."""
        tokens = _tokens(text)
        parser = _Parser(text, tokens)
        test = parser.expression()
        if parser.position != len(tokens):
            parser.fail(f"unexpected '{tokens[parser.position][1]}'")
        if not has_scale and (needs := sorted(parser.fields & set(MM_FIELDS))):
            raise EdgekdError(f"--reject-if '{text}' uses {', '.join(needs)}, which need a scale: add --mm-per-px "
                              "(e.g. 0.05, or 40mm=800px), or use the pixel sizes " + ", ".join(PIXEL_FIELDS))
        return cls(text, test)

    def rejects(self, sizes: dict[str, float]) -> bool:
        return bool(self.test(sizes))


def _bad(text: str, why: str) -> EdgekdError:
    return EdgekdError(f"--reject-if '{text}': {why}; write comparisons of {', '.join(MM_FIELDS + PIXEL_FIELDS)} with "
                       "numbers, joined by and / or / not, e.g. 'area_mm2 > 0.5 or length_mm > 2'")


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            if not text[position:].strip():
                break
            raise _bad(text, f"cannot read '{text[position:].strip()}'")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    """expression := term ('or' term)*; term := factor ('and' factor)*;
    factor := 'not' factor | '(' expression ')' | FIELD OP NUMBER"""

    def __init__(self, text: str, tokens: list[tuple[str, str]]):
        self.text, self.tokens, self.position, self.fields = text, tokens, 0, set()

    def fail(self, why: str):
        raise _bad(self.text, why)

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> tuple[str, str]:
        token = self._peek()
        if token is None:
            self.fail("it ends too early")
        self.position += 1
        return token

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token is not None and token[0] == "word" and token[1].lower() == word:
            self.position += 1
            return True
        return False

    def expression(self) -> Callable[[dict], bool]:
        parts = [self.term()]
        while self._keyword("or"):
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else (lambda sizes: any(part(sizes) for part in parts))

    def term(self) -> Callable[[dict], bool]:
        parts = [self.factor()]
        while self._keyword("and"):
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else (lambda sizes: all(part(sizes) for part in parts))

    def factor(self) -> Callable[[dict], bool]:
        if self._keyword("not"):
            inner = self.factor()
            return lambda sizes: not inner(sizes)
        kind, value = self._take()
        if kind == "paren" and value == "(":
            inner = self.expression()
            if self._take() != ("paren", ")"):
                self.fail("a '(' is not closed")
            return inner
        if kind != "word" or value not in MM_FIELDS + PIXEL_FIELDS:
            self.fail(f"'{value}' is not a size")
        kind_op, op = self._take()
        if kind_op != "op":
            self.fail(f"'{value}' needs a comparison (>, >=, <, <=), not '{op}'")
        kind_number, number = self._take()
        if kind_number != "number":
            self.fail(f"'{value} {op}' needs a number, not '{number}'")
        self.fields.add(value)
        compare, limit = _COMPARE[op], float(number)
        return lambda sizes: compare(sizes[value], limit)
