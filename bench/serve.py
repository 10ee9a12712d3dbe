"""Many adapters over one base, batched: SmolLM2-135M-Instruct (the bundled GGUF) with 4 adapters (2 LoRA, 2 DoRA, all
linear layers, trained-looking random weights) and the base, 16 chat prompts, greedy.

1. A mixed-adapter batch (`generate_ids(..., adapter=[name per prompt])`, one batch of 16) against generating per adapter
   in turn (five batches of the prompts of one adapter each); the tokens must agree.
2. `llmlite serve` (in-process uvicorn, the official `openai` client): 16 concurrent clients against the same 16 requests
   sent one at a time.

Rounds alternate the order of the two sides; medians, quartiles and ratios, peak RSS and load averages are printed.
`PYTHONPATH=. python bench/serve.py [--rounds 3] [--tokens 24] [--threads 1] [--quant nf4]`. One thread by default:
on a shared 2-core box two OpenMP threads stall on each other, which measures the scheduler rather than the code."""
import argparse, os, resource, statistics, time
from concurrent.futures import ThreadPoolExecutor
import openai, torch
from llmlite.cli import default_model
from llmlite.loading import load
from llmlite.adapters import add_adapters, adapter_layers
from llmlite.generate import generate_ids, encode_prompt
from llmlite.serve import Engine, serve_app, running

ADS = {'a': ('lora', 16), 'b': ('dora', 16), 'c': ('lora', 8), 'd': ('dora', 8)}
TOPICS = ['the sea', 'a cat', 'rain', 'mountains', 'coffee', 'trains', 'winter', 'a library', 'music', 'bread', 'the moon', 'bicycles',
          'a garden', 'rivers', 'chess', 'the city']

def timed(f):
    t = time.perf_counter(); r = f(); return time.perf_counter() - t, r

def quart(xs):
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"median {q[1]:.2f} s (quartiles {q[0]:.2f}-{q[2]:.2f})"

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--rounds', type=int, default=3); p.add_argument('--tokens', type=int, default=24)
    p.add_argument('--threads', type=int, default=1); p.add_argument('--quant', default='')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"load average at start {os.getloadavg()}, {a.threads} thread(s), {a.tokens} new tokens per prompt, base {a.quant or 'as stored (dequantized fp32)'}", flush=True)
    model, tok = load(default_model(), quant=a.quant or None)
    torch.manual_seed(0)
    for n, (kind, r) in ADS.items():
        add_adapters(model, kind, r=r, alpha=2 * r, name=n)
        with torch.no_grad():
            for lyr in adapter_layers(model).values():
                if n in lyr.lora_b: lyr.lora_b[n].normal_(0, .02)
    model.eval()
    names = [(list(ADS) + [None])[i % 5] for i in range(16)]
    msgs = [[dict(role='user', content=f"Write one sentence about {t}.")] for t in TOPICS]
    ids = [encode_prompt(tok, m) for m in msgs]
    N = a.tokens

    # 1. one mixed batch vs per adapter in turn
    def mixed(): return torch.stack(list(generate_ids(model, ids, N, stop_ids=(), adapter=names)), 1)
    def in_turn():
        out = [None] * 16
        for n in list(ADS) + [None]:
            rows = [i for i in range(16) if names[i] == n]
            toks = torch.stack(list(generate_ids(model, [ids[i] for i in rows], N, stop_ids=(), adapter=[n] * len(rows))), 1)
            for i, t in zip(rows, toks): out[i] = t
        return torch.stack(out)
    tm, tt, same = [], [], []
    for r in range(a.rounds):
        for side in (('mixed', 'turn') if r % 2 == 0 else ('turn', 'mixed')):
            t, toks = timed(mixed if side == 'mixed' else in_turn)
            (tm if side == 'mixed' else tt).append(t)
            if side == 'mixed': tm_toks = toks
            else: tt_toks = toks
        same.append(sum(x.tolist() == y.tolist() for x, y in zip(tm_toks, tt_toks)))
        print(f"  round {r}: mixed batch {tm[-1]:.2f} s, per adapter in turn {tt[-1]:.2f} s, load {os.getloadavg()}", flush=True)
    tot = 16 * N
    print(f"mixed-adapter batch (4 adapters + base, 16 prompts x {N} tokens): {tot / statistics.median(tm):.1f} tok/s, {quart(tm)}")
    print(f"per adapter in turn (5 batches):                  {tot / statistics.median(tt):.1f} tok/s, {quart(tt)}")
    print(f"ratio mixed / in turn: {statistics.median(tt) / statistics.median(tm):.2f}x; rows with equal tokens each round: {same} of 16", flush=True)

    # 2. the server: 16 concurrent clients vs one request at a time
    eng = Engine(model, tok, max_batch=16, max_tokens=N)
    served = ['base' if n is None else n for n in names]
    with running(serve_app(eng)) as url:
        cl = openai.OpenAI(base_url=url, api_key='none', max_retries=0, timeout=600)
        one = lambda i: cl.chat.completions.create(model=served[i], messages=msgs[i], temperature=0, max_tokens=N)
        def seq(): return [one(i) for i in range(16)]
        def conc():
            with ThreadPoolExecutor(16) as ex: return list(ex.map(one, range(16)))
        ts, tc, agree, bsz = [], [], [], []
        for r in range(a.rounds):
            for side in (('conc', 'seq') if r % 2 == 0 else ('seq', 'conc')):
                st = dict(eng.stats)
                t, res = timed(conc if side == 'conc' else seq)
                (tc if side == 'conc' else ts).append(t)
                if side == 'conc': rc, bsz = res, bsz + [(eng.stats['rows'] - st['rows']) / max(1, eng.stats['steps'] - st['steps'])]
                else: rs = res
            agree.append(sum(x.choices[0].message.content == y.choices[0].message.content for x, y in zip(rc, rs)))
            print(f"  round {r}: 16 concurrent {tc[-1]:.2f} s, sequential {ts[-1]:.2f} s, load {os.getloadavg()}", flush=True)
        n = sum(x.usage.completion_tokens for x in rc)
    print(f"server, 16 concurrent clients: {n / statistics.median(tc):.1f} tok/s, {quart(tc)}, mean batch per decode step {statistics.mean(bsz):.1f}")
    print(f"server, one request at a time: {n / statistics.median(ts):.1f} tok/s, {quart(ts)}")
    print(f"ratio concurrent / sequential: {statistics.median(ts) / statistics.median(tc):.2f}x; equal answers each round: {agree} of 16")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB; load average at end {os.getloadavg()}")

if __name__ == '__main__': main()
