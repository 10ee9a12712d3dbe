"""Edit nbs/*.ipynb cells in place with a quick read-modify-write (other helpers edit other cells of the same notebooks).

Usage from Python (run with /work/main/.venv/bin/python):
    import sys; sys.path.insert(0, 'scripts'); from nbedit import *
    show('nbs/09_learner.ipynb')                       # list cells: index, id, type, first line
    src('nbs/09_learner.ipynb', 'b7938719')            # source of a cell (by id, or by a unique substring of its source)
    replace('nbs/09_learner.ipynb', 'b7938719', new_source)          # replace a cell's source
    insert('nbs/09_learner.ipynb', after='b7938719', source=s, kind='code'|'markdown')  # new cell after a cell (None: at the end)
    delete('nbs/09_learner.ipynb', 'b7938719')
Each call re-reads the notebook from disk and writes it back at once, so never hold a notebook in memory across calls.
New notebooks: create(path, [('markdown', text), ('code', text), ...]).
After editing: .venv/bin/nbdev-export && .venv/bin/nbdev-clean --fname nbs/<your notebook>.ipynb
"""
import json, os, uuid
from pathlib import Path

def _load(p): return json.loads(Path(p).read_text())
def _save(p, nb):
    p = Path(p); t = p.with_name(f'.{p.name}.{os.getpid()}.tmp')
    t.write_text(json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + '\n'); os.replace(t, p)
def _find(nb, key):
    hits = [i for i, c in enumerate(nb['cells']) if c.get('id') == key]
    if not hits: hits = [i for i, c in enumerate(nb['cells']) if key in ''.join(c['source'])]
    if len(hits) != 1: raise KeyError(f"{key!r}: {len(hits)} matching cells")
    return hits[0]
def _cell(kind, source):
    lines = source.splitlines(keepends=True)
    c = dict(cell_type=kind, id=uuid.uuid4().hex[:8], metadata={}, source=lines)
    if kind == 'code': c.update(execution_count=None, outputs=[])
    return c
def show(p):
    for i, c in enumerate(_load(p)['cells']):
        first = ''.join(c['source']).split('\n')[0][:100]
        print(f"{i:3} {c.get('id')} {c['cell_type'][:4]} {first}")
def src(p, key):
    nb = _load(p); return ''.join(nb['cells'][_find(nb, key)]['source'])
def replace(p, key, source):
    nb = _load(p); i = _find(nb, key); nb['cells'][i]['source'] = source.splitlines(keepends=True); _save(p, nb)
def insert(p, after=None, source='', kind='code'):
    nb = _load(p); c = _cell(kind, source)
    i = len(nb['cells']) if after is None else _find(nb, after) + 1
    nb['cells'].insert(i, c); _save(p, nb); return c['id']
def delete(p, key):
    nb = _load(p); del nb['cells'][_find(nb, key)]; _save(p, nb)
def create(p, cells):
    nb = dict(cells=[_cell(k, s) for k, s in cells], metadata=dict(kernelspec=dict(display_name='python3', language='python', name='python3')), nbformat=4, nbformat_minor=5)
    _save(p, nb)
