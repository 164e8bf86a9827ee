"""A safe arithmetic-expression evaluator, the text normalisation it shares with answer extraction, and a
canonical printed form of expressions.

The evaluator never calls ``eval``/``exec``: it is a recursive-descent parser over integers, ``+ - * /``
(also ``×`` ``÷`` ``−``) and parentheses, evaluated exactly with :class:`fractions.Fraction`. It rejects
exponentiation (``**`` is a syntax error), overlong input, deep nesting, long literals and huge intermediate
values, so every call finishes in time bounded by ``max_len``.

Used by ``answers.py``, ``arithmetic.py`` and ``countdown.py``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction

_SYMBOLS = str.maketrans({"−": "-", "–": "-", "×": "*", "·": "*", "÷": "/", "：": ":", "，": ","})


def normalise_text(text: str) -> str:
    """Map Unicode decimal digits (e.g. Arabic-Indic ``١٢``) to ASCII and math symbols to ``+-*/``."""
    out = []
    for ch in text:
        if ch.isdecimal() and not ch.isascii():
            out.append(str(unicodedata.decimal(ch, 0)))
        else:
            out.append(ch)
    return "".join(out).translate(_SYMBOLS)


class ExpressionError(ValueError):
    """The text is not an allowed arithmetic expression, or evaluating it is undefined or too large."""


# AST nodes: ("num", int) | ("neg", node) | ("bin", op, left, right)
Node = tuple

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_TOKEN_RE = re.compile(r"\s*(?:(\d+)|([-+*/()]))")


@dataclass(frozen=True)
class ExpressionLimits:
    """Bounds that keep parsing and evaluation cheap on adversarial input.

    Attributes:
        max_len: longest accepted expression in characters.
        max_depth: deepest parenthesis/unary nesting.
        max_digits: longest integer literal.
        max_abs: largest |numerator| or |denominator| of any intermediate value.
        allow_unary_minus: whether ``-3`` / ``-(2+1)`` are allowed.
    """

    max_len: int = 256
    max_depth: int = 32
    max_digits: int = 12
    max_abs: int = 10**18
    allow_unary_minus: bool = True


def _tokenize(text: str, limits: ExpressionLimits) -> list[str]:
    s = normalise_text(text).strip()
    if not s:
        raise ExpressionError("empty expression")
    if len(s) > limits.max_len:
        raise ExpressionError(f"expression longer than {limits.max_len} characters")
    tokens, pos = [], 0
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if m is None:
            if s[pos:].strip() == "":
                break
            raise ExpressionError(f"unexpected character {s[pos]!r} at position {pos}")
        num, sym = m.group(1), m.group(2)
        if num is not None and len(num) > limits.max_digits:
            raise ExpressionError(f"number literal longer than {limits.max_digits} digits")
        tokens.append(num if num is not None else sym)
        pos = m.end()
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ;
    factor := INT | '(' expr ')' | '-' factor"""

    def __init__(self, tokens: list[str], limits: ExpressionLimits) -> None:
        self.tokens, self.pos, self.limits = tokens, 0, limits

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ExpressionError("unexpected end of expression")
        self.pos += 1
        return tok

    def expr(self, depth: int) -> Node:
        node = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            node = ("bin", op, node, self.term(depth))
        return node

    def term(self, depth: int) -> Node:
        node = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            if self.peek() in ("*", "/"):
                raise ExpressionError(f"operator {op}{self.peek()} is not allowed")
            node = ("bin", op, node, self.factor(depth))
        return node

    def factor(self, depth: int) -> Node:
        if depth > self.limits.max_depth:
            raise ExpressionError(f"expression nested deeper than {self.limits.max_depth}")
        tok = self.take()
        if tok.isdigit():
            return ("num", int(tok))
        if tok == "(":
            node = self.expr(depth + 1)
            if self.take() != ")":
                raise ExpressionError("expected ')'")
            return node
        if tok == "-" and self.limits.allow_unary_minus:
            return ("neg", self.factor(depth + 1))
        raise ExpressionError(f"unexpected token {tok!r}")


def parse_expression(text: str, limits: ExpressionLimits = ExpressionLimits()) -> Node:
    """Parse an arithmetic expression into a small tuple AST; raises :class:`ExpressionError`."""
    parser = _Parser(_tokenize(text, limits), limits)
    node = parser.expr(0)
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected token {parser.peek()!r} after the expression")
    return node


def evaluate(node: Node, limits: ExpressionLimits = ExpressionLimits()) -> Fraction:
    """Exact value of a parsed expression; raises :class:`ExpressionError` on ÷0 or oversized values."""
    kind = node[0]
    if kind == "num":
        value = Fraction(node[1])
    elif kind == "neg":
        value = -evaluate(node[1], limits)
    else:
        op, a, b = node[1], evaluate(node[2], limits), evaluate(node[3], limits)
        if op == "+":
            value = a + b
        elif op == "-":
            value = a - b
        elif op == "*":
            value = a * b
        else:
            if b == 0:
                raise ExpressionError("division by zero")
            value = a / b
    if abs(value.numerator) > limits.max_abs or value.denominator > limits.max_abs:
        raise ExpressionError("intermediate value too large")
    return value


def safe_eval(text: str, limits: ExpressionLimits = ExpressionLimits()) -> Fraction:
    """Parse and evaluate ``text`` exactly (never ``eval``); raises :class:`ExpressionError`."""
    return evaluate(parse_expression(text, limits), limits)


def numbers_in(node: Node) -> list[int]:
    """The integer literals of an expression, left to right."""
    if node[0] == "num":
        return [node[1]]
    if node[0] == "neg":
        return numbers_in(node[1])
    return numbers_in(node[2]) + numbers_in(node[3])


def _signed_terms(node: Node, op_pos: str, op_neg: str, positive: bool = True) -> list[tuple[bool, Node]]:
    """Flatten a chain of ``op_pos``/``op_neg`` (``+``/``-`` or ``*``/``/``) into (positive?, operand) pairs."""
    if node[0] == "bin" and node[1] in (op_pos, op_neg):
        right_sign = positive if node[1] == op_pos else not positive
        return _signed_terms(node[2], op_pos, op_neg, positive) + _signed_terms(
            node[3], op_pos, op_neg, right_sign
        )
    return [(positive, node)]


def _prec(node: Node) -> int:
    return _PREC[node[1]] if node[0] == "bin" else 3


def canonical_expression(node: Node, commutative: bool = True) -> str:
    """Whitespace-free string of an expression with minimal parentheses; it has the same exact value.

    With ``commutative``, each ``+``/``-`` chain is rewritten as sorted added terms followed by sorted
    subtracted terms (``a-(b-c)`` → ``a+c-b``), and each ``*``/``/`` chain as sorted factors followed by
    sorted divisors (``a/(b/c)`` → ``a*c/b``), so ``"7 + (5+3)"`` and ``"3+5+7"`` both print ``"3+5+7"``.
    The result is a fixed point: canonicalising it again gives the same string.
    """
    kind = node[0]
    if kind == "num":
        return str(node[1])
    if kind == "neg":
        inner = canonical_expression(node[1], commutative)
        return f"-({inner})" if node[1][0] == "bin" else f"-{inner}"
    op, left, right = node[1], node[2], node[3]
    if commutative:
        level = _PREC[op]
        pos_op, neg_op = ("+", "-") if level == 1 else ("*", "/")
        pos: list[str] = []
        neg: list[str] = []
        for positive, child in _signed_terms(node, pos_op, neg_op):
            s = canonical_expression(child, commutative)
            if _prec(child) <= level:  # only possible for a sum inside a product
                s = f"({s})"
            (pos if positive else neg).append(s)
        # the chain's leftmost operand is always positive, so ``pos`` is never empty
        return pos_op.join(sorted(pos)) + "".join(neg_op + s for s in sorted(neg))
    ls = canonical_expression(left, commutative)
    rs = canonical_expression(right, commutative)
    if _prec(left) < _PREC[op]:
        ls = f"({ls})"
    if _prec(right) < _PREC[op] or (op in "-/" and _prec(right) == _PREC[op]):
        rs = f"({rs})"
    return f"{ls}{op}{rs}"
