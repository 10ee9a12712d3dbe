"""Load time, peak RSS and greedy decode speed of SmolLM2-135M-Instruct (GGUF) on CPU: llmlite vs transformers.

Each side runs in its own subprocess so peak RSS is not shared; the parent prints both and the ratios.
Usage: python bench/load_generate.py [--tokens 128]
"""
import argparse, json, subprocess, sys, time

PROMPT = [dict(role='user', content='Explain in a paragraph why the sky is blue.')]

def run_llmlite(n):
    from llmlite.core import MemoryMeter
    from llmlite.cli import default_model
    from llmlite.loading import load
    from llmlite.generate import generate_ids
    p = default_model()
    with MemoryMeter() as mem:
        t = time.perf_counter(); model, tok = load(p); load_s = time.perf_counter() - t
    ids = tok.encode_chat(PROMPT)
    list(generate_ids(model, [ids], 4))   # warm-up
    t = time.perf_counter(); out = list(generate_ids(model, [ids], n)); dt = time.perf_counter() - t
    return dict(load_s=load_s, load_peak_mib=(mem.peak - mem.start) / 2**20, tok_s=len(out) / dt, tokens=len(out))

def run_transformers(n):
    from llmlite.core import MemoryMeter
    from llmlite.cli import default_model
    import torch, transformers
    p = default_model()
    with MemoryMeter() as mem:
        t = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32).eval()
        tok = transformers.AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        load_s = time.perf_counter() - t
    ids = torch.tensor([tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False)])
    kw = dict(do_sample=False, pad_token_id=tok.eos_token_id)
    model.generate(ids, max_new_tokens=4, **kw)
    t = time.perf_counter(); out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw); dt = time.perf_counter() - t
    return dict(load_s=load_s, load_peak_mib=(mem.peak - mem.start) / 2**20, tok_s=(out.shape[1] - ids.shape[1]) / dt, tokens=out.shape[1] - ids.shape[1])

if __name__ == '__main__':
    ap = argparse.ArgumentParser(); ap.add_argument('--tokens', type=int, default=128); ap.add_argument('--side')
    a = ap.parse_args()
    if a.side:
        import warnings; warnings.filterwarnings('ignore')
        print(json.dumps(dict(llmlite=run_llmlite, transformers=run_transformers)[a.side](a.tokens))); sys.exit()
    res = {}
    for side in ('llmlite', 'transformers'):
        r = subprocess.run([sys.executable, __file__, '--side', side, '--tokens', str(a.tokens)], capture_output=True, text=True)
        if r.returncode: sys.exit(f"{side} failed:\n{r.stderr[-3000:]}")
        res[side] = json.loads(r.stdout.strip().splitlines()[-1])
    l, t = res['llmlite'], res['transformers']
    print(f"SmolLM2-135M-Instruct Q4_1 GGUF -> fp32, CPU, greedy decode of {a.tokens} tokens")
    print(f"{'':22}{'llmlite':>12}{'transformers':>14}{'ratio':>10}")
    print(f"{'load time (s)':22}{l['load_s']:12.2f}{t['load_s']:14.2f}{t['load_s'] / l['load_s']:9.2f}x faster")
    print(f"{'load peak RSS (MiB)':22}{l['load_peak_mib']:12.0f}{t['load_peak_mib']:14.0f}{t['load_peak_mib'] / l['load_peak_mib']:9.2f}x less")
    print(f"{'decode (tokens/s)':22}{l['tok_s']:12.1f}{t['tok_s']:14.1f}{l['tok_s'] / t['tok_s']:9.2f}x faster")
