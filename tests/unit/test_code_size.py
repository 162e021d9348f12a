"""Functions that fit on a screen (at most 60 lines) and modules under 450 lines: every module of
the package."""

import ast
from pathlib import Path

import pytest

LIBMGSAVE = Path(__file__).resolve().parents[2] / "libmgsave"
MEASURED = sorted(LIBMGSAVE.rglob("*.py"))
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450


@pytest.mark.parametrize("module", MEASURED, ids=lambda path: str(path.relative_to(LIBMGSAVE)))
def test_functions_fit_on_a_screen_and_the_module_is_small(module):
    text = module.read_text()
    assert len(text.splitlines()) < MAX_MODULE_LINES
    long = {f"{node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES}
    assert not long
