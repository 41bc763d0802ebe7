"""`multi`'s `calculate_output`: an arithmetic formula over the named graders' scores.

Parsed once with Python's `ast` and checked node by node (numbers, the graders' names, `+ - * /`,
`^` or `**` for a power, unary minus, and a few functions), then evaluated by walking the tree:
nothing is passed to `eval`, so a formula can name nothing else.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Collection, Mapping

from llama_post.errors import InvalidRequestError
from llama_post.graders.templates import GradingError

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


class Formula:
    def __init__(self, text: str, names: Collection[str], field: str) -> None:
        self.field = field
        try:
            # OpenAI's formulas write a power as `^`: read as Python's `**`, whose precedence
            # it has (Python's `^` binds more loosely than `+`)
            self.tree = ast.parse(text.strip().replace("^", "**"), mode="eval").body
        except SyntaxError as e:
            raise self._refuse(f"the formula does not parse: {e.msg}") from e
        self._check(self.tree, set(names))

    def _refuse(self, why: str) -> InvalidRequestError:
        return InvalidRequestError(f"{self.field}: {why}", param=self.field)

    def _check(self, node: ast.expr, names: set[str]) -> None:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise self._refuse(f"{node.value!r} is not a number")
        elif isinstance(node, ast.Name):
            if node.id not in names:
                known = ", ".join(sorted(names))
                raise self._refuse(f"{node.id!r} names no grader (the graders are: {known})")
        elif isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            self._check(node.left, names)
            self._check(node.right, names)
        elif isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
            self._check(node.operand, names)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id not in FUNCTIONS or node.keywords or not node.args:
                allowed = ", ".join(FUNCTIONS)
                raise self._refuse(f"{node.func.id}(...) is not a function here ({allowed})")
            for arg in node.args:
                self._check(arg, names)
        else:
            raise self._refuse(f"{ast.unparse(node)!r} is not allowed in a formula")

    def evaluate(self, scores: Mapping[str, float]) -> float:
        try:
            value = float(self._eval(self.tree, scores))
        except (ArithmeticError, ValueError, TypeError) as e:
            raise GradingError(f"{self.field}: {e}", "formula") from e
        if not math.isfinite(value):
            raise GradingError(f"{self.field}: the formula gave {value}", "formula")
        return value

    def _eval(self, node: ast.expr, scores: Mapping[str, float]) -> float:
        if isinstance(node, ast.Constant):
            assert isinstance(node.value, int | float)  # checked when built
            return float(node.value)
        if isinstance(node, ast.Name):
            return scores[node.id]
        if isinstance(node, ast.BinOp):
            left, right = self._eval(node.left, scores), self._eval(node.right, scores)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError(f"an exponent of {right} is too large")
            return BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp):
            return UNARY[type(node.op)](self._eval(node.operand, scores))
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        return float(FUNCTIONS[node.func.id](*(self._eval(a, scores) for a in node.args)))
