"""4-bit decoding on one GPU: tokens/s and achieved memory bandwidth at batch 1 and 16, against the measured copy bandwidth.

A Llama-3-8B-shaped decoder with random bf16 weights made on the GPU, its blocks' linears quantized to NF4 (the embedding and head
stay bf16), generates greedily with `generate_ids` (the user's path: KV cache, one forward per token) after a 128-token prompt.
Bytes per step: every weight byte a step reads (the NF4 codes and scales, the bf16 head, one embedding row per sequence) plus
the KV cache read so far; achieved bandwidth = bytes / step time, against the roofline of a large device-to-device copy
(bytes read + written per second). With `--compile` the blocks are also `torch.compile`d (dynamic shapes: the cache grows) and
the first compiled generation's extra time is reported as the compile time.
`--dry-run`: a tiny model on the CPU, fp32, every step the same.
Usage: python bench/gpu_decode.py --out decode.json [--bs 1 16] [--new 64] [--reps 3] [--compile] [--dry-run]
"""
import argparse, json, os, statistics, sys, time
import torch
from gpu_qlora import config, decoder

def copy_bandwidth(dev, gib=4, reps=10):
    "Measured device copy bandwidth, bytes read + written per second (best of `reps`)."
    n = (gib if dev.type == 'cuda' else 0.25) * 2**30 // 4
    a = torch.empty(int(n), device=dev, dtype=torch.float32); b = torch.empty_like(a)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    b.copy_(a); sync()
    best = min((lambda t: (b.copy_(a), sync(), time.perf_counter() - t)[-1])(time.perf_counter()) for _ in range(reps))
    return 2 * a.numel() * 4 / best

def step_bytes(m, bs, ctx):
    "Bytes one decode step reads: every weight (an embedding row per sequence) and the KV cache of `ctx` tokens."
    from llmlite.quant import QTensor
    tot = 0
    for n, p in m.named_parameters():
        if isinstance(p, QTensor): tot += sum(t.numel() * t.element_size() for t in p.inner.values())
        elif n.startswith('emb.'): tot += bs * p.shape[1] * p.element_size()
        else: tot += p.numel() * p.element_size()
    c = m.cfg
    return tot + bs * c.n_layers * 2 * ctx * c.n_kv_heads * c.head_dim * m.emb.weight.element_size()

def timed(m, bs, prompt, new, dev):
    "Seconds for prefill + `new` greedy tokens, and the prefill alone."
    from llmlite.generate import generate_ids
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    ids = [[(7 * r + 3 * i) % m.cfg.vocab_size for i in range(prompt)] for r in range(bs)]
    sync(); t = time.perf_counter()
    gen = generate_ids(m, ids, max_new_tokens=new)
    next(gen); sync(); t1 = time.perf_counter()   # the first token comes from the prefill
    n = 1 + sum(1 for _ in gen); sync()
    assert n == new, n
    return time.perf_counter() - t, t1 - t

def measure(m, a, dev, prompt, bw):
    out = {}
    for bs in a.bs:
        timed(m, bs, prompt, 4, dev)   # warm-up
        runs = [timed(m, bs, prompt, a.new, dev) for _ in range(a.reps)]
        dec = statistics.median((t - pre) / (a.new - 1) for t, pre in runs)   # per decode step, the prefill taken out
        byt = step_bytes(m, bs, prompt + a.new // 2)
        out[str(bs)] = dict(step_ms=1e3 * dec, tok_s=bs / dec, bytes_per_step=byt, achieved_gbs=byt / dec / 1e9, roofline_frac=byt / dec / bw,
                            prefill_ms=1e3 * statistics.median(pre for _, pre in runs))
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out'); ap.add_argument('--bs', nargs='+', type=int, default=[1, 16]); ap.add_argument('--new', type=int, default=64)
    ap.add_argument('--reps', type=int, default=3); ap.add_argument('--compile', action='store_true'); ap.add_argument('--dry-run', action='store_true')
    a = ap.parse_args()
    if not a.dry_run and not torch.cuda.is_available(): sys.exit('gpu_decode.py needs a CUDA GPU (or --dry-run)')
    from llmlite.quant import quantize
    dev = torch.device('cpu' if a.dry_run else 'cuda')
    dt = torch.float32 if a.dry_run else torch.bfloat16
    cfg, prompt = config(a.dry_run), 16 if a.dry_run else 128
    bw = copy_bandwidth(dev)
    m = quantize(decoder(cfg, dev, dt), 'nf4').eval()
    if dev.type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    res = dict(shape=cfg.name, prompt=prompt, new=a.new, device=torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu', dry_run=a.dry_run,
               copy_gbs=bw / 1e9, load_avg=os.getloadavg(), eager=measure(m, a, dev, prompt, bw))
    if a.compile:
        for b in m.blocks: b.compile(dynamic=True)
        t = time.perf_counter(); timed(m, a.bs[0], prompt, a.new, dev); first = time.perf_counter() - t
        steady = timed(m, a.bs[0], prompt, a.new, dev)[0]
        res['compile_s'] = first - steady
        res['compiled'] = measure(m, a, dev, prompt, bw)
    if dev.type == 'cuda': res['peak_alloc_gib'] = torch.cuda.max_memory_allocated() / 2**30
    res['load_avg_end'] = os.getloadavg()
    if a.out:
        with open(a.out, 'w') as f: json.dump(res, f, indent=1)
    print(f"NF4 decode {res['shape']} on {res['device']}: copy bandwidth {bw / 1e9:.0f} GB/s; load average {res['load_avg'][0]:.1f}")
    print(f"{'mode':9}{'bs':>4}{'tok/s':>10}{'ms/step':>9}{'GB/s':>8}{'roofline':>10}")
    for mode in ('eager', 'compiled'):
        for bs, o in res.get(mode, {}).items():
            print(f"{mode:9}{bs:>4}{o['tok_s']:>10.1f}{o['step_ms']:>9.2f}{o['achieved_gbs']:>8.0f}{100 * o['roofline_frac']:>9.1f}%")
    if 'compile_s' in res: print(f"compile time (first compiled generation minus a steady one): {res['compile_s']:.1f} s")

if __name__ == '__main__': main()
