"""Damaged and hostile inputs, seeded: several hundred mutations of every file kind llmlite reads, each run through the public loader.

Each case must end in one of three ways: an `LLMLiteError` whose message names the damaged file, a load that
gives the same result as the undamaged file (a mutation the format does not care about), or, for a removed
optional field, a load with that field's default. A raw exception from a
dependency, a hang (over `LIMIT` seconds) or a load with a different result is a failure. Mutations of tensor
*data* are not made: safetensors and GGUF carry no checksums, so flipped weight bytes cannot be told from weights.
"""
import json, os, pickle, random, shutil, signal, struct
from collections import Counter, defaultdict
from pathlib import Path
import gguf, pytest, torch
from llmlite.errors import LLMLiteError
from llmlite.loading import load, save_model
from llmlite.models import Config, Decoder
from llmlite.tokenizer import Tokenizer
from llmlite.adapters import add_adapters
from llmlite.peft import save_adapter, read_adapter_config
from llmlite.checkpoints import save_checkpoint, read_checkpoint, load_checkpoint
from llmlite.cli import read_config, Finetune
from test_gguf import write_tiny_gguf

LIMIT = 20          # seconds: past this a case counts as a hang
WRONG = ['abc', None, [], {}, True, -1, 0, 10**12, 1.5, [1, 2], {'a': 1}, '']

class Hang(Exception): pass

def _alarm(*_): raise Hang()

def outcome(run, ref, names) -> str:
    "Run one case: 'refused' (LLMLiteError naming the file), 'same' (loaded, same result), else the failure's kind."
    signal.signal(signal.SIGALRM, _alarm); signal.setitimer(signal.ITIMER_REAL, LIMIT)
    try: got = run()
    except LLMLiteError as e: return 'refused' if any(n in str(e) for n in names) else f'unnamed: {str(e)[:160]}'
    except Hang: return 'hang'
    except Exception as e: return f'raw {type(e).__name__}: {str(e)[:160]}'
    finally: signal.setitimer(signal.ITIMER_REAL, 0)
    try: same = got == ref if not isinstance(ref, torch.Tensor) else torch.equal(got, ref)
    except Exception: same = False
    return 'same' if same else 'loaded different'

def byte_mutations(raw:bytes, head:int, rng, n:int):
    "`n` damaged copies of file bytes `raw` whose first `head` bytes are header: cuts, flipped header bytes, huge numbers, empty, pickle."
    out = [b'', pickle.dumps({'weights': [1, 2, 3]}), raw[:4], raw[:head // 2]]
    while len(out) < n:
        k, b = rng.randrange(4), bytearray(raw)
        if k == 0: b = b[:rng.randrange(1, len(raw))]
        elif k == 1:
            for _ in range(rng.randint(1, 4)): b[rng.randrange(head)] = rng.randrange(256)
        elif k == 2:
            i = rng.randrange(max(1, head - 8)); b[i:i + 8] = struct.pack('<Q', rng.choice([2**63 - 1, 2**40, 10**12, 0, 3]))
        else: b = b + bytes(rng.randrange(1, 64))      # trailing bytes
        out.append(bytes(b))
    return out

def json_mutations(d:dict, rng, n:int):
    "`n` damaged versions (bytes, and whether loading may differ) of JSON object `d`: a key removed (its default may apply), a value of another type, cut text, non-UTF-8, not an object."
    text = json.dumps(d).encode()
    out = [(b, False) for b in (b'', b'[1, 2]', b'"x"', text[:len(text) // 2], b'\xff\xfe' + text, b'{"a": 1, "a": 2}')]
    keys = [k for k in d if not k.startswith('_')]
    kind = lambda v: 'num' if type(v) in (int, float) else type(v).__name__
    while len(out) < n:
        e = dict(d); k = rng.choice(keys)
        if rng.random() < 0.25: del e[k]; out.append((json.dumps(e).encode(), True))
        elif kind(v := rng.choice(WRONG)) != kind(d[k]): e[k] = v; out.append((json.dumps(e).encode(), v is None))   # null: not given
    return out

def special_files(p:Path):
    "A directory and a named pipe in place of file `p`."
    for make in (lambda: p.mkdir(), lambda: os.mkfifo(p)):
        if p.is_dir(): shutil.rmtree(p)
        elif p.exists() or p.is_fifo(): p.unlink()
        make(); yield
    if p.is_dir(): shutil.rmtree(p)
    elif p.exists() or p.is_fifo(): p.unlink()

def _diff(a:bytes, b:bytes) -> str:
    "What a JSON mutation changed (its keys whose values differ), or the length of a byte mutation."
    try: x, y = json.loads(a), json.loads(b)
    except Exception: return f"{len(b)} of {len(a)} bytes"
    if not (isinstance(x, dict) and isinstance(y, dict)): return repr(b[:60])
    return repr({k: y.get(k, '<deleted>') for k in set(x) | set(y) if x.get(k, '<deleted>') != y.get(k, '<deleted>')})[:160]

def cases(path:Path, variants, run, ref, names, counts, fails, kind):
    "Write each variant to `path` (restoring the original after), and record the outcome of `run`."
    orig = path.read_bytes()
    for v in variants:
        v, may_differ = v if isinstance(v, tuple) else (v, False)
        path.write_bytes(v)
        o = outcome(run, ref, names)
        if o == 'loaded different' and may_differ: o = 'default'      # a removed optional field: its default applies
        counts[kind][o.split(':')[0]] += 1
        if o not in ('refused', 'same', 'default'): fails.append(f"{kind}: {o} <- {_diff(orig, v)}")
    for _ in special_files(path):
        o = outcome(run, ref, names); counts[kind][o.split(':')[0]] += 1
        if o not in ('refused', 'same'): fails.append(f"{kind} (not a regular file): {o}")
    path.write_bytes(orig)

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from tokenizers import Tokenizer as Tk, models as tkm, pre_tokenizers
    tk = Tk(tkm.WordLevel({f'w{i}': i for i in range(64)}, unk_token='w0')); tk.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    m = Decoder(Config(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden=64, max_seq_len=32))
    return save_model(m, tmp_path_factory.mktemp('bad')/'tiny', Tokenizer(tk, unk_token='w0', pad_token='w0', eos_token='w63'))

X = torch.arange(8)[None]
def logits(src):
    with torch.no_grad(): return load(src, dtype=torch.float32, device='cpu')[0](X)

def test_bad_inputs(tiny, tmp_path):
    rng, counts, fails = random.Random(0), defaultdict(Counter), []
    st, ref = tiny/'model.safetensors', logits(tiny)
    raw = st.read_bytes(); head = 8 + struct.unpack('<Q', raw[:8])[0]
    cases(st, byte_mutations(raw, head, rng, 90), lambda: logits(tiny), ref, ['model.safetensors', str(tiny)], counts, fails, 'safetensors')
    cases(tiny/'config.json', json_mutations(json.loads((tiny/'config.json').read_text()), rng, 70), lambda: logits(tiny), ref, ['config.json', str(tiny)], counts, fails, 'config.json')
    tok_ref = Tokenizer.from_dir(tiny).encode('w1 w2 w3')
    tok = lambda: Tokenizer.from_dir(tiny).encode('w1 w2 w3')
    cases(tiny/'tokenizer_config.json', json_mutations(json.loads((tiny/'tokenizer_config.json').read_text()), rng, 40), tok, tok_ref, ['tokenizer_config.json'], counts, fails, 'tokenizer_config.json')
    cases(tiny/'tokenizer.json', byte_mutations((tiny/'tokenizer.json').read_bytes(), 200, rng, 25) + json_mutations(json.loads((tiny/'tokenizer.json').read_text()), rng, 15),
          tok, tok_ref, ['tokenizer.json'], counts, fails, 'tokenizer.json')
    g = tmp_path/'tiny.gguf'; write_tiny_gguf(g, gguf.GGMLQuantizationType.F32)
    graw, gref = g.read_bytes(), logits(g)
    cases(g, byte_mutations(graw, 1200, rng, 90), lambda: logits(g), gref, ['tiny.gguf'], counts, fails, 'gguf')
    m, _ = load(tiny, dtype=torch.float32, device='cpu'); add_adapters(m, 'lora', r=4); ad = save_adapter(m, tmp_path/'ad')
    aref = read_adapter_config(ad)
    cases(ad/'adapter_config.json', json_mutations(json.loads((ad/'adapter_config.json').read_text()), rng, 40), lambda: read_adapter_config(ad), aref,
          ['adapter_config.json'], counts, fails, 'adapter_config.json')
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad])
    ck = save_checkpoint(tmp_path/'run', m, opt, 3)
    def resume():    # what a resume restores: the optimizer's state and the random generators' next draws
        load_checkpoint(m, opt, read_checkpoint(ck))
        return [(k, v if not isinstance(v, torch.Tensor) else v.tolist()) for s in opt.state_dict()['state'].values() for k, v in sorted(s.items()) if k == 'step'], torch.rand(3).tolist()
    cref = resume()
    cases(ck/'state.json', json_mutations(json.loads((ck/'state.json').read_text()), rng, 30), resume, cref, ['state.json'], counts, fails, 'state.json')
    toml = tmp_path/'ft.toml'; toml.write_text('steps = 4\nlr = 0.001\nformat = "chat"\nquant = "nf4"\n')
    tref = read_config(toml, Finetune)
    tvars = [b'steps = \n', b'\xff\xfe', b'steps = "abc"\n', b'steps = 0\n', b'steps = -3\n', b'format = "xml"\n', b'stpes = 4\n', b'lr = "high"\n',
             b'quant = 4\n', b'bs = 1.5\n', b'[table]\nx = 1\n', b'steps = true\n', b'show = -1\n', b'eval_n = 0\n']
    cases(toml, tvars, lambda: read_config(toml, Finetune), tref, ['ft.toml'], counts, fails, 'cli config')
    total = Counter()
    for k, c in counts.items(): total.update(c); print(f"{k:22} {dict(c)}")
    print(f"{'all':22} {dict(total)} ({sum(total.values())} cases)")
    assert sum(total.values()) >= 400
    assert not fails, f"{len(fails)} of {sum(total.values())} cases failed:\n" + '\n'.join(fails[:40])

def test_no_loader_unpickles(tiny, tmp_path, monkeypatch):
    "Every reader of a user or checkpoint file, with pickle (and torch.load) made to raise: none of them calls it."
    from llmlite.peft import load_adapter
    from llmlite.generate import make_prefix, save_prefix, load_prefix
    m, tok = load(tiny, dtype=torch.float32, device='cpu'); add_adapters(m, 'lora', r=4); ad = save_adapter(m, tmp_path/'ad')
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad]); ck = save_checkpoint(tmp_path/'run', m, opt, 1)
    g = tmp_path/'tiny.gguf'; write_tiny_gguf(g, gguf.GGMLQuantizationType.F32)
    base, _ = load(tiny, dtype=torch.float32, device='cpu'); pf = save_prefix(make_prefix(base, tok, 'w1 w2 w3'), tmp_path/'p.safetensors', base)
    def no(*a, **k): raise AssertionError('a loader unpickled')
    for mod, name in ((pickle, 'load'), (pickle, 'loads'), (pickle, 'Unpickler'), (torch, 'load')): monkeypatch.setattr(mod, name, no)
    load(tiny); load(g); Tokenizer.from_dir(tiny)
    m2, _ = load(tiny); load_adapter(m2, ad)
    load_checkpoint(m, opt, read_checkpoint(tmp_path/'run'))
    load_prefix(pf, base)

def test_bad_prefix_caches(tiny, tmp_path):
    "Prefix caches with metadata removed or damaged, and with tensors of the wrong size: each refused, naming the file."
    from safetensors.torch import save_file
    from llmlite.formats import SafetensorsFile
    from llmlite.generate import make_prefix, save_prefix, load_prefix
    m, tok = load(tiny, dtype=torch.float32, device='cpu')
    f = SafetensorsFile(save_prefix(make_prefix(m, tok, 'w1 w2 w3 w4'), tmp_path/'p.safetensors', m))
    meta, ts = f.meta, dict(f.items())
    bad = [dict(meta=({k: v for k, v in meta.items() if k != drop})) for drop in meta] + [
           dict(meta=dict(meta, chat='{')), dict(meta=dict(meta, model='[1]')), dict(meta=dict(meta, model='7')), dict(meta=dict(meta, cache='[1, 2]')),
           dict(meta=dict(meta, cache='{"strategy": "nope"}')), dict(ts={k: v for k, v in ts.items() if k != 'ids'}),
           dict(ts={k: v[..., :1].contiguous() if k != 'ids' else v for k, v in ts.items()})]
    outcomes = Counter()
    for i, b in enumerate(bad):
        p = tmp_path/f'bad{i}.safetensors'; save_file(b.get('ts', ts), p, metadata=b.get('meta', meta))
        o = outcome(lambda: load_prefix(p, m), None, [p.name]); outcomes[o] += 1
        if o != "refused": print(i, b.get("meta", {}).keys() if "meta" in b else "ts", o)
    print(dict(outcomes))
    assert outcomes == Counter(refused=len(bad)), outcomes

def data_mutations(recs:list, line, rng, n:int):
    "`n` damaged JSON Lines files (bytes) of records `recs` written with `line(record)`, each of which must be refused."
    rows = [line(r).encode() for r in recs]
    join = lambda rs: b'\n'.join(rs) + b'\n'
    out = [b'', b'\n \n', b'\x00' * 64, pickle.dumps(recs), b'[1, 2]\n']
    while len(out) < n:
        k, rs, i = rng.randrange(5), list(rows), rng.randrange(len(rows))
        if k == 0: rs[i] = rs[i][:rng.randrange(1, len(rs[i]) - 1)]                 # a line cut inside
        elif k == 1: rs[i] = rng.choice([b'[1, 2]', b'"text"', b'null', b'7', b'{'])   # a line that is not an object
        elif k == 2: j = rng.randrange(1, len(rs[i]) - 1); rs[i] = rs[i][:j] + rng.choice([b'\xff', b'\xc3', b'\x80\x80']) + rs[i][j:]   # not UTF-8
        else:                                                                         # a field missing or of the wrong type
            r = json.loads(rs[i]); f = rng.choice(sorted(r))
            if k == 3: del r[f]
            else: r[f] = rng.choice([None, [1, 2], {'a': 1}, True])
            rs[i] = json.dumps(r).encode()
        out.append(join(rs))
    return out

def test_bad_data_files(tiny, tmp_path):
    "Damaged training data of every kind (JSONL prompts and chats, CSV, text, Parquet), through the loaders `finetune` uses: each refused, naming the file."
    import pyarrow as pa, pyarrow.parquet as pq
    from llmlite.data import prompt_data, chat_data, text_data
    rng, counts, fails = random.Random(1), defaultdict(Counter), []
    tok = Tokenizer.from_dir(tiny)
    pairs = [dict(prompt=f'w{i} w{i + 1}', response=f'w{i + 2}') for i in range(1, 9)]
    chats = [dict(messages=[dict(role='user', content=p['prompt']), dict(role='assistant', content=p['response'])]) for p in pairs]
    batch = lambda f: (lambda: f().batch(0)['input_ids'].tolist())
    jl = tmp_path/'pairs.jsonl'; jl.write_text(''.join(json.dumps(p) + '\n' for p in pairs))
    cases(jl, data_mutations(pairs, json.dumps, rng, 40), batch(lambda: prompt_data(jl, tok, seq_len=16, bs=2)), None, [jl.name], counts, fails, 'prompt jsonl')
    cj = tmp_path/'chats.jsonl'; cj.write_text(''.join(json.dumps(c) + '\n' for c in chats))
    roles = [json.dumps(dict(messages=[dict(role=r, content='w1'), dict(role='assistant', content='w2')])).encode() for r in ('', 'User', 'bot', None)] + [
             json.dumps(dict(messages=m)).encode() for m in ([], 'w1', [dict(role='user', content='w1')], [dict(role='assistant', content=3)], [['user', 'w1']])]
    cvars = data_mutations(chats, json.dumps, rng, 25) + [cj.read_bytes() + r + b'\n' for r in roles]
    cases(cj, cvars, batch(lambda: chat_data(cj, tok, seq_len=16, bs=2)), None, [cj.name], counts, fails, 'chat jsonl')
    cs = tmp_path/'pairs.csv'; good = 'prompt,response\n' + ''.join(f"{p['prompt']},{p['response']}\n" for p in pairs)
    cs.write_text(good)
    csvs = [b'', b'prompt,response\n', b'prompt\nw1\n', b'question,answer\nw1,w2\n', (good + '"w1 w2,w3\n').encode(), (good + 'w1,w2,w3\n').encode(),
            (good + 'w1\n').encode(), good.encode()[:20] + b'\xff' + good.encode()[20:], b'\x00' * 32, pickle.dumps(pairs)]
    cases(cs, csvs, batch(lambda: prompt_data(cs, tok, seq_len=16, bs=2)), None, [cs.name], counts, fails, 'prompt csv')
    tx = tmp_path/'doc.txt'; tx.write_text(' '.join(f'w{i % 60}' for i in range(200)))
    cases(tx, [b'', b'\n\n  \n', b'w1 w2 \xff w3', b'\xc3'], batch(lambda: text_data(tx, tok, seq_len=16, bs=2)), None, [tx.name], counts, fails, 'text')
    pqf = tmp_path/'pairs.parquet'; pq.write_table(pa.Table.from_pylist(pairs), pqf); praw = pqf.read_bytes()
    pvars = byte_mutations(praw, len(praw), rng, 16)[:16]
    pq.write_table(pa.Table.from_pylist([dict(prompt=['w1'], response='w2')] * 3), tmp_path/'lists.parquet')
    pq.write_table(pa.Table.from_pylist([dict(question='w1', answer='w2')] * 3), tmp_path/'cols.parquet')
    pvars += [(tmp_path/'lists.parquet').read_bytes(), (tmp_path/'cols.parquet').read_bytes()]
    cases(pqf, [v for v in pvars if v != praw], batch(lambda: prompt_data(pqf, tok, seq_len=16, bs=2)), None, [pqf.name], counts, fails, 'prompt parquet')
    total = Counter()
    for k, c in counts.items(): total.update(c); print(f"{k:16} {dict(c)}")
    print(f"{'all':16} {dict(total)} ({sum(total.values())} cases)")
    assert sum(total.values()) >= 100
    assert not fails, f"{len(fails)} of {sum(total.values())} cases failed:\n" + '\n'.join(fails[:40])
