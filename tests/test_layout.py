"The layout rules import-linter's layers contract (pyproject.toml) does not cover: no llmlite import inside a function, so nothing dodges the layering; no private name imported from another module."
import ast
from pathlib import Path
import llmlite

SRC = Path(llmlite.__file__).parent

def ours(tree):
    "The `from llmlite... import` / `from . import` statements under `tree`."
    return [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.level or (n.module or '').split('.')[0] == 'llmlite')]

def modules(): return {f.name: ast.parse(f.read_text()) for f in sorted(SRC.glob('*.py'))}

def test_no_llmlite_import_inside_a_function():
    bad = [f"{name}:{n.lineno}" for name, tree in modules().items() for fn in ast.walk(tree)
           if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ours(fn)]
    assert not bad, f"llmlite imports inside functions: {bad}"

def test_no_private_name_across_modules():
    bad = [f"{name}:{n.lineno} {a.name}" for name, tree in modules().items() for n in ours(tree) for a in n.names if a.name.startswith('_')]
    assert not bad, f"private names imported from other modules: {bad}"

def test_the_rules_catch_what_they_are_for():
    tree = ast.parse("def f():\n    from .fsdp import shard\nfrom .quant import _units")
    assert [n.module for n in ours(tree.body[0])] == ['fsdp'] and sorted(a.name for n in ours(tree) for a in n.names) == ['_units', 'shard']
