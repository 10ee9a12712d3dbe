"""KV-cache compression on SmolLM2-135M-Instruct: accuracy of every strategy at budgets 100/50/25/10 % and cache bits
16/8/4/2 on a seeded RULER-style suite this script makes, cache memory, and decode tokens/s at long context.

The suite (seeded, made here; haystacks of plain English filler sentences):
- niah_single: one "special magic number" for a key, asked back;
- niah_multi: four keys with numbers, one asked back (three distractors);
- vt: a chain of variable assignments (multi-hop), asked which variables hold the value;
- fwe: a list of words drawn from a Zipf-like distribution, asked the three most frequent.
Score per example: the share of the expected answers found in the completion (1/0 for the needles).

Budgets are fractions of each example's sequence (prompt + answer tokens); 100 % at 16 bits is the plain cache (the exactness
tests show every strategy at 100 %/16 bits equals it, so it is run once). "16 bits" is the model's dtype (fp32 on CPU).
`--lengths` are haystack sizes in tokens and `--n` the examples per task and length; the reported run is
`--lengths 1024,2048,4096 --n 2` (24 examples per config) in shards on a quiet 2-core CPU, about an hour. A config whose
row is already in `--out` is skipped, so configs added later extend an earlier run. Rows of a quantized cache record its
`ring` (`CacheConfig.recent`: the latest tokens kept unrounded). Decode speed is timed after one real `--speed-len`-token prefill: the compressed caches
are built from that full cache's state (its sinks and latest tokens), so no second long prefill is needed; a decoding
step's cost does not depend on which tokens are kept.

Usage: python bench/kv_compress.py [--lengths 1024,2048,4096] [--n 2] [--speed-len 8000] [--parts acc,speed] [--shard 0/2] [--out bench/results]
       python bench/kv_compress.py --report   (table, targets and plot from the results)
"""
import argparse, json, os, random, statistics, time
from pathlib import Path
import torch
from llmlite.cache import CacheConfig, quantize_kv, WINDOW
from llmlite.cli import default_model
from llmlite.generate import generate_ids
from llmlite.loading import load

WORDS = ('the grass is green the sky is blue the sun is yellow here we go there and back again a river runs past the old mill '
         'children walk to school while the baker opens his shop farmers talk about rain and prices in the square').split()

def filler(rng, n_words):
    "Plain sentences of common words (the haystack)."
    out = []
    while len(out) < n_words:
        s = rng.sample(WORDS, rng.randint(6, 12)); s[0] = s[0].capitalize()
        out += s[:-1] + [s[-1] + '.']
    return out[:n_words]

def insert(words, pieces, rng):
    "`words` with each sentence of `pieces` inserted at a random depth."
    words = list(words)
    for p in pieces: words.insert(rng.randint(0, len(words)), p)
    return ' '.join(words)

def n_words_for(tok, n_tokens):
    return int(n_tokens / 1.25)   # about 1.25 tokens per filler word with SmolLM2's tokenizer (checked on the made prompts)

def niah(rng, tok, L, k):
    keys = rng.sample(['apple', 'river', 'candle', 'forest', 'silver', 'window', 'garden', 'planet', 'violin', 'marble'], k)
    vals = [str(rng.randint(1000000, 9999999)) for _ in keys]
    hay = insert(filler(rng, n_words_for(tok, L)), [f'The special magic number for {a} is: {v}.' for a, v in zip(keys, vals)], rng)
    i = rng.randrange(k)
    q = f'What is the special magic number for {keys[i]} mentioned in the text? Answer with the number only.'
    return hay, q, f'The special magic number for {keys[i]} mentioned in the text is', [vals[i]]

def vt(rng, tok, L, hops=3):
    names = [''.join(rng.choices('ABCDEFGHIJKLMNOPQRSTUVWXYZ', k=5)) for _ in range(hops + 1)]
    val = str(rng.randint(10000, 99999))
    chain = [f'VAR {names[0]} = {val}.'] + [f'VAR {names[i + 1]} = VAR {names[i]}.' for i in range(hops)]
    words = filler(rng, n_words_for(tok, L))
    cut = sorted(rng.sample(range(len(words)), len(chain)))
    for j, (c, s) in enumerate(zip(cut, chain)): words.insert(c + j, s)
    q = f'Which variables are assigned the value {val}, directly or through other variables? List their names.'
    return ' '.join(words), q, f'The variables assigned the value {val} are:', names

def fwe(rng, tok, L):
    vocab = [''.join(rng.choices('bcdfghjklmnprstvwz', k=2)) + rng.choice('aeiou') + ''.join(rng.choices('bcdfghjklmnprstvwz', k=2)) for _ in range(200)]
    weights = [1 / (i + 1) ** 1.2 for i in range(len(vocab))]
    words = rng.choices(vocab, weights, k=int(L / 2.5))   # ~2.5 tokens per made-up word
    top = [w for w, _ in sorted(((w, words.count(w)) for w in set(words)), key=lambda x: -x[1])[:3]]
    q = 'What are the three most frequently used words in the list above? Answer with the three words.'
    return ' '.join(words), q, 'The three most frequently used words in the list are:', top

TASKS = dict(niah_single=lambda r, t, L: niah(r, t, L, 1), niah_multi=lambda r, t, L: niah(r, t, L, 4), vt=vt, fwe=fwe)
NEW = dict(niah_single=12, niah_multi=12, vt=24, fwe=16)     # answer tokens per task

def suite(tok, lengths, n, seed=0):
    "Examples (task, length, prompt token ids: the chat turn and the start of the answer, expected answers), seeded."
    rng, out = random.Random(seed), []
    for task, make in TASKS.items():
        for L in lengths:
            for _ in range(n):
                ctx, q, primer, ans = make(rng, tok, L)
                text = tok.apply_chat_template([dict(role='user', content=f'{ctx}\n\n{q}')]) + primer
                out.append((task, L, tok.encode(text, special=False), ans))
    return out

def score(text, ans): return sum(a.lower() in text.lower() for a in ans) / len(ans)

def run(model, tok, ids, cfg, new):
    out = torch.stack(list(generate_ids(model, [ids], new, stop_ids=tok.stop_ids, cache=cfg))).flatten().tolist()
    return tok.decode([t for t in out if t not in tok.stop_ids])

def cache_bytes(model, n_tokens, cfg):
    "Bytes the cache allocates for `n_tokens` tokens (keys, values, scales and the compressed cache's positions and scores)."
    kv = model.new_cache(1, n_tokens, config=cfg)
    return kv.nbytes if cfg is not None else sum(t.numel() * t.element_size() for t in kv.k + kv.v)

STRATS = ('window', 'heavy', 'l2', 'random', 'hybrid')
CONFIGS = ([('full', 1.0, 16, None)] + [c for b, bits in ((.25, 4), (.1, 8), (.5, 2)) for c in
           [(s, b, 16, CacheConfig(s, b)) for s in STRATS] + [('full', 1.0, bits, CacheConfig('full', bits=bits))]]   # the 25 % budget first
           + [('full', 1.0, 4, CacheConfig('full', bits=4, group=16)), ('heavy', .25, 4, CacheConfig('heavy', .25, bits=4))]
           + [('full', 1.0, 4, CacheConfig('full', bits=4, recent=0)), ('full', 1.0, 4, CacheConfig('full', bits=4, group=16, recent=0))])   # no unrounded ring

def group(cfg): return cfg.group if cfg is not None and cfg.bits < 16 else None
def ring(cfg): return cfg.recent if cfg is not None and cfg.bits < 16 else None

def window_state(full:dict, n_layers:int, L:int, caps:list, cfg:CacheConfig) -> dict:
    "A compressed cache's state built from a full cache's (sinks + latest tokens of each layer), to time decoding without a second long prefill."
    out = {}
    for i in range(n_layers):
        keep = torch.cat([torch.arange(cfg.sinks), torch.arange(L - caps[i] + cfg.sinks, L)])
        k, v = full[f'k.{i}'][:, :, keep], full[f'v.{i}'][:, :, keep]
        kv = dict(k=k, v=v) if cfg.bits == 16 else {n + x: t for n, y in (('k', k), ('v', v)) for x, t in zip(('', 's', 'z'), quantize_kv(y, cfg.bits, cfg.group))}
        H = k.shape[1]
        if cfg.bits < 16 and cfg.recent:
            R = min(cfg.recent, L); p = torch.arange(L - R, L)
            out |= {f'ring{n}.{i}': full[f'{n}.{i}'][:, :, p[torch.argsort(p % R)]] for n in 'kv'}
        out |= {f'{x}.{i}': t for x, t in kv.items()} | {f'pos.{i}': keep.int().expand(1, H, -1).clone(), f'score.{i}': keep.float().expand(1, H, -1).clone(),
                                                          f'kind.{i}': torch.full((1, H), WINDOW)}
    return out

@torch.no_grad()
def speed(model, tok, L, cfgs, rounds=3, steps=4):
    "Decode tokens/s after an `L`-token prompt, per config: one prefill; rounds alternate between configs; medians and quartiles."
    ids = tok.encode(' '.join(filler(random.Random(1), int(L / 1.1))))[:L]
    n, kv = L + rounds * steps + 1, model.new_cache(1, L + rounds * steps + 1)
    t = time.perf_counter(); x = model(torch.tensor([ids]), cache=kv, last=True)[:, -1].argmax(-1, keepdim=True); pre = time.perf_counter() - t
    full = kv.state()
    caches = {}
    for name, cfg in cfgs:
        c = model.new_cache(1, n, config=cfg)
        c.load(full if cfg is None else window_state(full, model.cfg.n_layers, L, c.caps, cfg), L)
        caches[name] = [c, x.clone(), pre, c.nbytes if cfg is not None else sum(t.numel() * t.element_size() for t in c.k + c.v)]
    res = {n: [] for n in caches}
    for _ in range(rounds):
        for n, c in caches.items():
            t = time.perf_counter()
            for _ in range(steps): c[1] = model(c[1], cache=c[0], last=True)[:, -1].argmax(-1, keepdim=True)
            res[n].append(steps / (time.perf_counter() - t))
    return {n: dict(prefill_s=caches[n][2], bytes=caches[n][3], tok_s=statistics.median(v), q=statistics.quantiles(v, n=4)) for n, v in res.items()}

def accuracy(model, tok, lengths, n, cfgs, out):
    "Accuracy of each config in `cfgs` on the suite, one JSON line per config in `out`."
    ex = suite(tok, lengths, n)
    print(f"suite: {len(ex)} examples, prompt tokens {min(len(e[2]) for e in ex)}..{max(len(e[2]) for e in ex)}", flush=True)
    t0 = time.perf_counter()
    done = {(r['strategy'], r['budget'], r['bits'], r['group'], r['ring']) for f in out.parent.glob('acc*.jsonl') for r in map(json.loads, f.read_text().splitlines())}
    for strat, budget, bits, cfg in cfgs:
        if (strat, budget, bits, group(cfg), ring(cfg)) in done: continue     # measured by an earlier (interrupted) run
        acc = {}
        for task, L, ids, ans in ex: acc.setdefault(task, []).append(score(run(model, tok, ids, cfg, NEW[task]), ans))
        r = dict(strategy=strat, budget=budget, bits=bits, group=group(cfg), ring=ring(cfg), acc={k: sum(v) / len(v) for k, v in acc.items()}, mem_4k=cache_bytes(model, 4096, cfg))
        r['mean'] = sum(r['acc'].values()) / len(r['acc'])
        with open(out, 'a') as f: f.write(json.dumps(r) + '\n')
        print(f"{strat:>8} {budget:>4.0%} {bits:>2}b{'' if group(cfg) is None else f'/g{group(cfg)} ring {ring(cfg)}'}  " + '  '.join(f"{k} {v:.2f}" for k, v in r['acc'].items()) +
              f"  mean {r['mean']:.3f}  ({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)

def report(out):
    "The table, the plot and the targets from the shards' results."
    rows = [json.loads(l) for f in sorted(out.glob('acc*.jsonl')) for l in f.read_text().splitlines()]
    key = lambda r: (r['strategy'] != 'full', r['strategy'], -r['budget'], -r['bits'], -(r['group'] or 0), -(r['ring'] or 0))
    rows.sort(key=key)
    full = next(r for r in rows if r['strategy'] == 'full' and r['bits'] == 16)
    f = full['mean']
    print(f"| strategy | budget | bits | " + ' | '.join(TASKS) + " | mean | vs full | cache @4k tokens (MiB) |")
    print('|---|---|---|' + '---|' * (len(TASKS) + 3))
    for r in rows:
        bits = str(r['bits']) + ('' if r['group'] is None else ' (group %d, ring %d)' % (r['group'], r['ring']))
        print(f"| {r['strategy']} | {r['budget']:.0%} | {bits} | " + ' | '.join(f"{r['acc'][k]:.2f}" for k in TASKS) +
              f" | {r['mean']:.3f} | {r['mean'] / f if f else float('nan'):.2f} | {r['mem_4k'] / 2**20:.2f} ({r['mem_4k'] / full['mem_4k']:.3f}x) |")
    best = max((r for r in rows if r['budget'] == .25 and r['bits'] == 16), key=lambda r: r['mean'])
    print(f"\ntarget: best at 25% ({best['strategy']}) keeps {best['mean'] / f:.0%} of full accuracy (>= 90%: {'met' if best['mean'] >= .9 * f else 'MISSED'})")
    for q4 in (r for r in rows if r['strategy'] == 'full' and r['bits'] == 4):
        print(f"target: 4-bit (group {q4['group']}, ring {q4['ring']}) at full budget loses {100 * (f - q4['mean']):.1f} points (<= 1: {'met' if f - q4['mean'] <= .01 else 'MISSED'})")
    sp = out/'speed.json'
    if sp.exists():
        sp = json.loads(sp.read_text())
        for k, v in sp['speed'].items():
            print(f"decode @{sp['len']} {k:>14}: {v['tok_s']:.2f} tok/s (quartiles {', '.join(f'{x:.2f}' for x in v['q'])}), "
                  f"{v['tok_s'] / sp['speed']['full']['tok_s']:.2f}x, cache {v['bytes'] / 2**20:.1f} MiB; load {sp['load']}")
    plot(rows, out/'kv_compress.png')

def main(lengths, n, speed_len, out, shard, parts):
    torch.manual_seed(0)
    torch.set_num_threads(1)     # on a CPU shared by many processes, one thread per process avoids thread-pool stalls
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load(default_model())
    i, k = map(int, shard.split('/'))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, model dtype {model.emb.weight.dtype}, shard {shard}, load {os.getloadavg()}", flush=True)
    if 'acc' in parts: accuracy(model, tok, lengths, n, CONFIGS[i::k], out/f'acc{i}.jsonl')
    if 'speed' in parts:
        sp = speed(model, tok, speed_len, [('full', None), ('window 25%', CacheConfig('window', .25)), ('window 25% 4b', CacheConfig('window', .25, bits=4)),
                                          ('window 25% 4b ring 0', CacheConfig('window', .25, bits=4, recent=0)),
                                          ('heavy 25%', CacheConfig('heavy', .25))])
        (out/'speed.json').write_text(json.dumps(dict(speed=sp, len=speed_len, load=os.getloadavg())))
        print(sp, flush=True)

def plot(rows, path):
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    full = next(r['mean'] for r in rows if r['strategy'] == 'full' and r['bits'] == 16)
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in STRATS:
        pts = [(1.0, full)] + sorted(((r['budget'], r['mean']) for r in rows if r['strategy'] == s and r['bits'] == 16), reverse=True)
        ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker='o', label=s)
    ax.set(xlabel='budget (% of tokens kept per layer)', ylabel='mean accuracy', title='SmolLM2-135M-Instruct, RULER-style suite'); ax.legend()
    fig.tight_layout(); fig.savefig(path, dpi=120)

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--lengths', default='1024,2048,4096')
    ap.add_argument('--n', type=int, default=2)
    ap.add_argument('--speed-len', type=int, default=8000)
    ap.add_argument('--out', default='bench/results')
    ap.add_argument('--parts', default='acc,speed', help='acc (the suite), speed (decode tok/s)')
    ap.add_argument('--shard', default='0/1', help='run configs i, i+n, ... (i/n), to spread the runs over processes')
    ap.add_argument('--report', action='store_true', help='print the table and targets, draw the plot from the results in --out')
    a = ap.parse_args()
    if a.report: report(Path(a.out))
    else: main([int(x) for x in a.lengths.split(',')], a.n, a.speed_len, Path(a.out), a.shard, a.parts.split(','))
