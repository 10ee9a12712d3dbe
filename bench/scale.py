"""Real scale on this CPU: a Llama-3-8B-shaped checkpoint (random bf16 weights, 16 GB of sharded HF safetensors) loaded,
quantized, exported and fine-tuned by llmlite, beside transformers + bitsandbytes.

The checkpoint is written once (cached, `--dir`, default /work/cache/scale8b) with the SmolLM2 tokenizer (its ids are < the
8B vocab). Every measurement runs in a fresh process (`--job ...`), watched by the parent, which samples the RSS of the
child's whole process tree every 50 ms, records its peak and kills it past `--limit-gb` (reported as the outcome). The child
also reports its own RSS after imports, so peaks are printed both whole and as growth over the imported runtime; `peak_anon_gb` leaves out
file-backed pages (a memory-mapped checkpoint counts in RSS while mapped, though the kernel can drop those pages).
Jobs, in the order `python bench/scale.py` runs them (alternating llmlite and peer loads for `--rounds` rounds):
  load-llmlite nf4|hqq   `llmlite.load(dir, quant=..., dtype='bf16')`: wall time, peak RSS, bytes the model holds
  load-peer              `AutoModelForCausalLM.from_pretrained(dir, quantization_config=BitsAndBytesConfig(load_in_4bit=True,
                         bnb_4bit_quant_type='nf4'), device_map='cpu', dtype=bf16)`
  export                 llmlite NF4 (fp32 compute) logits on a short prompt, then `save_model` (bitsandbytes layout)
  reload                 transformers reads the export: its logits against llmlite's (max abs difference / max abs logit)
  qlora 1|2              QLoRA steps (seq 256, bs 1, LoRA r 16 on all linears, activation checkpointing, `--dtype` compute: bf16
                         by default on a CPU with bf16 dot products (`llmlite.core.native_bf16`), else fp32, where a bf16 matmul whose operands
                         are both untransposed, as in a linear's input gradient, falls back to a scalar loop about 70x slower than
                         fp32) in one process, or 2 FSDP2 ranks (`load(..., shard=True)`), per-rank peak against `llmlite.plan`
                         for the same job, each rank on its share of the cores (`llmlite.dist.launch`). glibc is told to return freed blocks over 64 KiB to the system at once
                         (MALLOC_MMAP_THRESHOLD_), so RSS tracks the live tensors the planner counts: with its adaptive threshold,
                         freed dequantized weights and activations stay resident (measured: +0.08 GiB per fp32 8B-width block)
Usage: python bench/scale.py [--only load|export|reload|qlora] [--rounds 2] [--steps 3] [--limit-gb 18] [--timeout-s S] [--dtype bf16|fp32] [--dir DIR]
"""
import argparse, json, os, signal, statistics, subprocess, sys, time
from pathlib import Path
import psutil

HERE = Path(__file__).resolve().parent
NAME = 'Llama-3-8B'
PROMPT = 'The capital of France is'
GB = 1e9

def write_checkpoint(d:Path, shard_gb:float=2.):
    "Write a `NAME`-shaped HF directory with random bf16 weights (std 0.02, norms 1) as ~`shard_gb` GB safetensors shards."
    import torch
    from safetensors.torch import save_file
    from llmlite.models import Config, Decoder
    from llmlite.hf import config_to_hf, hf_keymap
    from llmlite.formats import write_dir
    from llmlite.tokenizer import Tokenizer
    from llmlite.cli import default_model
    cfg = Config.from_name(NAME)
    with torch.device('meta'): shapes = [(n, p.shape) for n, p in Decoder(cfg).named_parameters()]
    km, groups, cur, size = hf_keymap(cfg), [], [], 0
    for n, s in shapes:
        b = s.numel() * 2
        if cur and size + b > shard_gb * GB: groups.append(cur); cur, size = [], 0
        cur.append((n, s)); size += b
    groups.append(cur)
    names = [f'model-{i + 1:05d}-of-{len(groups):05d}.safetensors' for i in range(len(groups))]
    def write(tmp):
        g = torch.Generator().manual_seed(0)
        for nm, grp in zip(names, groups):
            sd = {km(n): (torch.ones(s) if len(s) == 1 else torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for n, s in grp}
            save_file(sd, tmp/nm, metadata={'format': 'pt'}); del sd
            print(f"wrote {nm}", file=sys.stderr, flush=True)
        idx = dict(metadata=dict(total_size=sum(s.numel() * 2 for n, s in shapes)), weight_map={km(n): nm for nm, grp in zip(names, groups) for n, _ in grp})
        (tmp/'model.safetensors.index.json').write_text(json.dumps(idx, indent=2) + '\n')
        hc = config_to_hf(cfg, torch.bfloat16); hc['architectures'] = ['LlamaForCausalLM']
        (tmp/'config.json').write_text(json.dumps(hc, indent=2) + '\n')
        for f, w in Tokenizer.from_gguf(default_model()).files().items(): w(tmp/f)
    write_dir(d, write)


def model_bytes(model) -> int:
    "Bytes of every parameter and buffer `model` holds (a 4-bit weight: its codes and statistics), each storage counted once."
    seen, n = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        for x in ([getattr(t, k) for k in t.names] if hasattr(t, 'names') else [t]):
            if x.untyped_storage().data_ptr() not in seen: seen.add(x.untyped_storage().data_ptr()); n += x.untyped_storage().nbytes()
    return n

def prompt_ids(d):
    from llmlite.tokenizer import Tokenizer
    return Tokenizer.from_dir(d).encode(PROMPT)

def peer_config(dt):
    import transformers
    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_compute_dtype=dt)

def job_load_llmlite(d, quant):
    from llmlite.core import rss
    from llmlite.loading import load
    base, t = rss(), time.perf_counter()
    model, _ = load(d, quant=quant, dtype='bf16', device='cpu')
    return dict(base=base, secs=time.perf_counter() - t, model_bytes=model_bytes(model))

def job_load_peer(d):
    import torch, transformers
    from llmlite.core import rss
    base, t = rss(), time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(d, quantization_config=peer_config(torch.bfloat16), device_map='cpu', dtype=torch.bfloat16)
    return dict(base=base, secs=time.perf_counter() - t, model_bytes=model.get_memory_footprint())

def job_export(d, out):
    "llmlite's NF4 logits (fp32 compute) on the prompt, then `save_model` of that model to `out`."
    import torch
    from llmlite.core import rss
    from llmlite.loading import load, save_model
    base = rss()
    model, tok = load(d, quant='nf4', dtype='fp32', device='cpu')
    t = time.perf_counter()
    with torch.no_grad(): logits = model(torch.tensor([prompt_ids(d)]))
    fwd = time.perf_counter() - t; t = time.perf_counter()
    save_model(model, out, tok)
    torch.save(logits, Path(out)/'llmlite_logits.pt')   # ours, for `reload` to compare (bench scratch, read back with weights_only)
    return dict(base=base, fwd_secs=fwd, save_secs=time.perf_counter() - t, out_gb=sum(f.stat().st_size for f in Path(out).glob('*.safetensors')) / GB)

def job_reload(d, out):
    "transformers reads the export; its logits on the prompt against llmlite's."
    import torch, transformers
    from llmlite.core import rss
    base, t = rss(), time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(out, device_map='cpu', dtype=torch.float32)
    secs = time.perf_counter() - t
    with torch.no_grad(): theirs = model(torch.tensor([prompt_ids(d)])).logits
    ours = torch.load(Path(out)/'llmlite_logits.pt', weights_only=True)
    ours = getattr(ours, 'logits', ours)
    return dict(base=base, secs=secs, rel=((ours - theirs).abs().max() / theirs.abs().max()).item(), max_abs=theirs.abs().max().item(),
                types=sorted({type(m).__name__ for m in model.modules() if 'Linear' in type(m).__name__}))

SEQ, R = 256, 16

def qlora_rank(d, steps, out, dtype):
    "One rank of the QLoRA job: load (sharded under 2 processes), adapters, checkpointing, `steps` AdamW steps on random tokens."
    import torch
    from llmlite.core import rss, MemoryMeter
    from llmlite.dist import world, rank
    from llmlite.loading import load
    from llmlite.adapters import add_adapters
    from llmlite.models import checkpoint_blocks
    from llmlite.data import lm_loss
    base = rss()
    with MemoryMeter(every=0.05) as mm:
        t = time.perf_counter()
        add = lambda m: add_adapters(m, r=R, alpha=2 * R)
        if world() > 1: model, _ = load(d, quant='nf4', dtype=dtype, device='cpu', shard=True, prepare=add)
        else: model, _ = load(d, quant='nf4', dtype=dtype, device='cpu'); add(model)
        load_secs, load_peak = time.perf_counter() - t, mm.peak
        checkpoint_blocks(model.train())
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        g, times, losses = torch.Generator().manual_seed(0), [], []
        with MemoryMeter(every=0.05) as sm:   # the steps alone: what the planner predicts
            for i in range(steps):
                x = torch.randint(0, 49152, (1, SEQ), generator=g)
                t = time.perf_counter()
                loss = lm_loss(model(x), x); loss.backward(); opt.step(); opt.zero_grad()
                times.append(time.perf_counter() - t); losses.append(loss.item())
                print(f"rank {rank()} step {i}: loss {losses[-1]:.4f}, {times[-1]:.0f} s", file=sys.stderr, flush=True)
    Path(f"{out}.{rank()}").write_text(json.dumps(dict(base=base, peak=mm.peak, load_peak=load_peak, step_peak=sm.peak, load_secs=load_secs, step_secs=times, losses=losses)))

def job_qlora(d, ws, steps, dtype):
    ws, steps, out = int(ws), int(steps), f"/tmp/scale_qlora_{os.getpid()}"
    if ws == 1: qlora_rank(d, steps, out, dtype)
    else:
        from llmlite.dist import launch
        launch(qlora_rank, ws, d, steps, out, dtype, timeout=3600)   # a rank's step takes minutes on CPU: collectives wait long enough
    return dict(ranks=[json.loads(Path(f"{out}.{r}").read_text()) for r in range(ws)])

JOBS = {'load-llmlite': job_load_llmlite, 'load-peer': job_load_peer, 'export': job_export, 'reload': job_reload, 'qlora': job_qlora}

def run(job, *args, limit_gb=18., d=None, until=None):
    "Run `job` in a fresh process; its JSON result plus the sampled peak RSS of its process tree (whole, and per process). Killed past `limit_gb` or at time `until`."
    out = Path(f"/tmp/scale_{job}_{os.getpid()}.json"); out.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '2'))
    if job == 'qlora': env['MALLOC_MMAP_THRESHOLD_'] = '65536'; env.pop('OMP_NUM_THREADS')   # one process takes every core, `launch` shares them out among ranks
    la0 = os.getloadavg()
    p = subprocess.Popen([sys.executable, __file__, '--job', job, str(out), str(d), *map(str, args)], env=env)
    peak, anon, per, killed, late, pp, t0 = 0, 0, {}, False, False, psutil.Process(p.pid), time.time()
    try:
        while p.poll() is None:
            try:
                ps = [pp, *pp.children(recursive=True)]
                ms = {q.pid: q.memory_info() for q in ps}
            except psutil.Error: ms = {}
            rs = {k: m.rss for k, m in ms.items()}
            for k, v in rs.items(): per[k] = max(per.get(k, 0), v)
            peak, anon = max(peak, sum(rs.values())), max(anon, sum(m.rss - m.shared for m in ms.values()))   # anon: less file pages (a memory-mapped checkpoint)
            if (peak > limit_gb * GB or (late := until is not None and time.time() > until)) and not killed: killed = True; [q.kill() for q in ps if q.is_running()]
            time.sleep(0.05)
    finally:   # the bench stopped (Ctrl-C, SIGTERM): no unwatched child left behind
        if p.poll() is None: [q.kill() for q in [pp, *pp.children(recursive=True)] if q.is_running()]
    res = json.loads(out.read_text()) if out.exists() and not killed else {}
    res.update(job=job, args=list(map(str, args)), rc=p.returncode, killed_over_gb=limit_gb if killed and not late else None, killed_late_after_s=time.time() - t0 if late else None, peak_gb=peak / GB, peak_anon_gb=anon / GB,
               peak_per_process_gb=sorted((v / GB for v in per.values()), reverse=True), load_avg=[la0, os.getloadavg()])
    print('\n@' + json.dumps(res), flush=True)   # on a line of its own, after a child's progress bar
    return res

def wait_for_memory(need_gb):
    "Wait (up to an hour) until the machine has `need_gb` available: other people's work shares it."
    for _ in range(360):
        if (a := psutil.virtual_memory().available / GB) >= need_gb: return
        print(f"waiting: {a:.1f} GB available, {need_gb} GB needed", file=sys.stderr, flush=True); time.sleep(10)
    sys.exit(f"gave up: never {need_gb} GB available")

def child():
    job, out, d, *args = sys.argv[2:]
    import warnings; warnings.filterwarnings('ignore')
    res = JOBS[job](d, *args)
    Path(out).write_text(json.dumps(res))

def main():
    from llmlite.core import native_bf16
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dir', default='/work/cache/scale8b'); ap.add_argument('--only', choices=('load', 'export', 'reload', 'qlora'), nargs='*')
    ap.add_argument('--rounds', type=int, default=2); ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--limit-gb', type=float, default=18.); ap.add_argument('--quants', nargs='*', default=['nf4', 'hqq'])
    ap.add_argument('--ranks', type=int, nargs='*', default=[1, 2]); ap.add_argument('--dtype', default='bf16' if native_bf16('cpu') else 'fp32', help='QLoRA compute dtype'); ap.add_argument('--timeout-s', type=float, help='kill a job still running this long after the start')
    a = ap.parse_args(); d = Path(a.dir); parts = a.only or ('load', 'export', 'qlora')
    if not (d/'config.json').exists(): wait_for_memory(6); write_checkpoint(d)
    print(f"checkpoint {d}: {sum(f.stat().st_size for f in d.glob('*.safetensors')) / GB:.2f} GB of bf16 safetensors", flush=True)
    until = time.time() + a.timeout_s if a.timeout_s else None
    go = lambda need, *args: (wait_for_memory(need), run(*args, limit_gb=a.limit_gb, d=d, until=until))[1]
    if 'load' in parts:
        res = {}
        for r in range(a.rounds):
            sides = [('load-llmlite', q) for q in a.quants] + [('load-peer',)]
            for s in (sides if r % 2 == 0 else sides[::-1]): res.setdefault(' '.join(s), []).append(go(10, *s))
        for k, rs in res.items():
            ok = [x for x in rs if x['rc'] == 0]
            med = lambda f: statistics.median(f(x) for x in ok) if ok else float('nan')
            print(f"{k:18} {med(lambda x: x['secs']):7.1f} s  peak RSS {med(lambda x: x['peak_gb']):6.2f} GB (growth {med(lambda x: x['peak_gb'] - x['base'] / GB):6.2f})"
                  f"  model {med(lambda x: x['model_bytes'] / GB):5.2f} GB  rounds {len(ok)}/{len(rs)}", flush=True)
    out = d.parent/f"{d.name}_nf4"
    if 'export' in parts: e = go(12, 'export', out)
    if ('export' in parts and e['rc'] == 0) or 'reload' in parts: go(12, 'reload', out)   # `--only reload`: the export already written
    if 'qlora' in parts:
        import llmlite.plan
        for ws in a.ranks:
            q = go(14, 'qlora', ws, a.steps, a.dtype)
            p = llmlite.plan.plan(NAME, world_size=ws, seq_len=SEQ, bs=1, quant='nf4', r=R, dtype=a.dtype)
            print(f"plan world_size={ws}: {json.dumps(p)}", flush=True)
            for i, rk in enumerate(q.get('ranks', [])):
                grow, step = (rk['peak'] - rk['base']) / 2**30, (rk['step_peak'] - rk['base']) / 2**30
                print(f"qlora ws={ws} rank {i}: peak {rk['peak'] / 2**30:.2f} GiB (growth over imports {grow:.2f} GiB; loading {(rk['load_peak'] - rk['base']) / 2**30:.2f}, steps {step:.2f})"
                      f" vs plan {p['peak_gib']:.2f} GiB (steps {step / p['peak_gib']:.2f}x); steps {[round(s) for s in rk['step_secs']]} s -> {SEQ * ws / statistics.median(rk['step_secs'][1:] or rk['step_secs']):.2f} tok/s (all ranks)", flush=True)

if __name__ == '__main__':
    if sys.argv[1:2] == ['--job']: child()
    else: signal.signal(signal.SIGTERM, lambda *_: sys.exit('stopped')); main()
