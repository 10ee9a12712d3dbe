"The docs build: the test command runs nbdev's processing step on every notebook; here, that the step catches a broken cell, and that no cell mixes imports with other code (the docs step would run such a cell out of context)."
import ast, json, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).parent.parent

def _nb(cells):
    return dict(cells=[dict(cell_type='code', id=f'c{i}', metadata={}, source=s, outputs=[], execution_count=None) for i, s in enumerate(cells)],
                metadata={}, nbformat=4, nbformat_minor=5)

def _proc(tmp, cells):
    "Run `nbdev-proc-nbs` on a project holding one notebook of `cells` (with this repo's nbdev settings)."
    (tmp/'nbs').mkdir(parents=True); (tmp/'llmlite').mkdir()
    shutil.copy(ROOT/'pyproject.toml', tmp); shutil.copy(ROOT/'nbs'/'_quarto.yml', tmp/'nbs')
    (tmp/'nbs'/'demo.ipynb').write_text(json.dumps(_nb(['#| default_exp demo', '#| export\ndef f(): return 1', *cells])))
    return subprocess.run([str(Path(sys.executable).parent/'nbdev-proc-nbs')], cwd=tmp, capture_output=True, text=True, timeout=300)

def test_docs_step_catches_a_broken_cell(tmp_path):
    ok = _proc(tmp_path/'ok', ['import math', 'lin = math.pi', 'lin'])
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = _proc(tmp_path/'bad', ['lin = 1', 'import math\nprint(lin)'])    # the docs step runs a cell with an import, not the cell before it
    assert bad.returncode != 0 and "NameError: name 'lin' is not defined" in bad.stderr, bad.stderr[-2000:]

def _mixed(src:str) -> bool:
    "A cell nbdev's docs step warns about: top-level imports beside other top-level statements."
    if 'nbdev_export()' in src: return False      # the notebook's own export cell, which the docs step skips
    lines = [l for l in src.splitlines() if not l.startswith('#|')]
    if any(l.startswith(('#| export', '#| exporti', '#| exports')) for l in src.splitlines()): return False
    try: body = ast.parse('\n'.join(lines)).body
    except SyntaxError: return False
    imp = [isinstance(n, (ast.Import, ast.ImportFrom)) for n in body]
    return any(imp) and not all(imp)

def test_no_cell_mixes_imports_and_code():
    bad = [f"{p.name} cell {c.get('id')}" for p in sorted((ROOT/'nbs').glob('*.ipynb'))
           for c in json.loads(p.read_text())['cells'] if c['cell_type'] == 'code' and _mixed(''.join(c['source']))]
    assert not bad, f"cells that mix imports and other code (put the imports in a cell of their own): {bad}"
