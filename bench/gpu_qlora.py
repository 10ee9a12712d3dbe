"""QLoRA / QDoRA on a Llama-3-8B-shaped model on one GPU: llmlite vs transformers + PEFT + bitsandbytes, same weights and batches.

Both sides build the same model from the same random bf16 weights, made on the GPU tensor by tensor (a seeded generator per
Hugging Face tensor name, so the two models are equal), quantize the blocks' linears to NF4 (64-weight blocks, double-quantized
absmax; the embedding and head stay bf16), add rank-16 adapters (alpha 32) to every linear of the blocks, turn on activation
checkpointing and train with AdamW on the same random-token batches (seq 2048): llmlite through its `Learner` (bf16 autocast),
transformers + PEFT through a plain loop (`bnb_4bit_compute_dtype` bf16, PEFT's fp32 adapters, its `labels=` loss).
Each side lives in its own process (its own CUDA allocator, so its peak allocated/reserved memory is its own); after warm-up the
parent runs them in alternating rounds at each batch size, so clock or thermal drift slows both alike. Reported per side and
batch size: tokens/s (median of rounds, quartiles of the per-round ratio), peak allocated and reserved GiB, MFU (model FLOPs:
4 x matmul weights x tokens for a frozen base, forward + input gradient, plus causal attention, against the measured bf16 matmul
ceiling and the datasheet's 989 TFLOP/s), the first loss (equal weights: the two must agree), and the planner's prediction.
With `--compile`, llmlite's blocks are also `torch.compile`d in a third process (compile time = its first step minus a steady one).
`--dry-run`: a tiny model on the CPU, every step the same, fp32 compute where CUDA's bf16 kernels are missing.
Usage: python bench/gpu_qlora.py --out qlora.json [--kinds lora dora] [--bs 1 4] [--rounds 3] [--steps 2] [--warmup 2] [--compile] [--dry-run]
"""
import argparse, json, os, statistics, subprocess, sys, time, warnings, zlib
import torch, torch.nn as nn

SHAPE = 'Llama-3-8B'
TINY = dict(vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden=256, max_seq_len=256, rope_base=5e5)

def config(dry):
    from llmlite.models import Config
    return Config(**TINY, name='tiny') if dry else Config.from_name(SHAPE)

def fill(named, dev):
    "Overwrite each tensor with N(0, 0.02) (norms: 1) from a generator seeded by its Hugging Face name: both sides get equal weights."
    with torch.no_grad():
        for name, p in named:
            g = torch.Generator(dev).manual_seed(zlib.crc32(name.encode()))
            if 'norm' in name: p.fill_(1.)
            else: p.copy_(torch.randn(p.shape, generator=g, device=dev, dtype=torch.float32).mul_(0.02).to(p.dtype))

def decoder(cfg, dev, dt):
    "An llmlite `Decoder` made directly in `dt` on `dev` (no fp32 copy first) with `fill`'s weights."
    from llmlite.models import Decoder
    from llmlite.hf import hf_keymap
    old = torch.get_default_dtype(); torch.set_default_dtype(dt)
    try:
        with torch.device(dev): m = Decoder(cfg)
    finally: torch.set_default_dtype(old)
    km = hf_keymap(cfg)
    fill([(km(n), p) for n, p in m.named_parameters()], dev)
    return m

class Batches:
    "Random-token batches, a pure function of (step, bs): the same on both sides; the smallest loader the Learner takes."
    def __init__(self, vocab, seq, dev): self.vocab, self.seq, self.dev, self.bs, self.step = vocab, seq, dev, 1, 0
    def batch(self, i):
        g = torch.Generator().manual_seed(1000 * self.bs + i)
        x = torch.randint(0, self.vocab, (self.bs, self.seq), generator=g).to(self.dev)
        return dict(input_ids=x, labels=x)
    def state_dict(self): return {}
    def load_state_dict(self, sd): pass

def build_llmlite(cfg, dev, dt, kind, compiled):
    from llmlite.quant import quantize
    from llmlite.adapters import add_adapters
    from llmlite.learner import Learner
    m = quantize(decoder(cfg, dev, dt), 'nf4')
    torch.cuda.empty_cache() if dev.type == 'cuda' else None
    add_adapters(m, kind, r=16, alpha=32)
    if compiled:
        for b in m.blocks: b.compile()
    return m, lambda data: Learner(m.train(), data, lr=1e-4, clip=None, show_every=0, grad_ckpt=True, precision='bf16' if dev.type == 'cuda' else 'fp32')

def build_peer(cfg, dev, dt, kind):
    import transformers, peft, bitsandbytes as bnb
    from llmlite.hf import config_to_hf
    d = {k: v for k, v in config_to_hf(cfg, dt).items() if k not in ('architectures', 'torch_dtype')}
    hc = transformers.AutoConfig.for_model(d.pop('model_type'), **d)
    with torch.device(dev): m = transformers.AutoModelForCausalLM.from_config(hc, dtype=dt)
    fill(list(m.named_parameters()), dev)
    for name, mod in list(m.named_modules()):   # what from_pretrained(quantization_config=nf4, double quant) builds
        for cn, lin in list(mod.named_children()):
            if type(lin) is nn.Linear and cn != 'lm_head':
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=dt, compress_statistics=True, quant_type='nf4', device='meta')
                q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, compress_statistics=True, quant_type='nf4', blocksize=64).to(dev)
                setattr(mod, cn, q)
    torch.cuda.empty_cache() if dev.type == 'cuda' else None
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(use_reentrant=False))
    m = peft.get_peft_model(m, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0., target_modules='all-linear', use_dora=kind == 'dora', task_type='CAUSAL_LM'))
    return m.train()

def say(**kw): print('@' + json.dumps(kw), flush=True)

def child(side, kind, dry, warmup, bss):
    "Build one side, warm up at every batch size, then serve the parent's `<bs> <first step> <count>` commands until an empty line."
    warnings.filterwarnings('ignore')
    dev = torch.device('cpu' if dry else 'cuda')
    dt = torch.float32 if dry else torch.bfloat16
    cfg = config(dry)
    torch.manual_seed(0)
    data = Batches(cfg.vocab_size, 64 if dry else 2048, dev)
    t0 = time.perf_counter()
    if side == 'transformers':
        m = build_peer(cfg, dev, dt, kind)
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        def step(i):
            b = data.batch(i)
            loss = m(input_ids=b['input_ids'], labels=b['labels']).loss; loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
            return loss.item()
    else:
        m, learner = build_llmlite(cfg, dev, dt, kind, side == 'llmlite+compile')
        learn = learner(data)
        learn.total = 10**6   # a flat part of the schedule: the learning rate plays no part in the timing
        from llmlite.models import checkpoint_blocks
        checkpoint_blocks(m)  # what `fit` does with grad_ckpt=True
        step = lambda i: learn.one_step(i + 1)['loss']
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    built, first, steady = time.perf_counter() - t0, {}, {}
    for bs in bss:
        data.bs = bs
        for i in range(warmup):
            t = time.perf_counter(); loss = step(i); sync()
            if i == 0: first[bs] = dict(dt=time.perf_counter() - t, loss=loss)
            steady[bs] = time.perf_counter() - t
    say(ready=True, build_s=built, first=first, steady=steady, trainable=sum(p.numel() for p in m.parameters() if p.requires_grad))
    for line in sys.stdin:
        if not line.strip(): break
        bs, i0, n = map(int, line.split())
        data.bs = bs
        if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats()
        sync(); t = time.perf_counter()
        losses = [step(i) for i in range(i0, i0 + n)]
        sync()
        mem = dict(alloc=torch.cuda.max_memory_allocated(), reserved=torch.cuda.max_memory_reserved()) if dev.type == 'cuda' else {}
        say(dt=time.perf_counter() - t, toks=n * bs * data.seq, loss=losses[-1], **mem)
    say(done=True)

def ask(p, cmd=None):
    if cmd is not None: p.stdin.write(cmd + '\n'); p.stdin.flush()
    for line in p.stdout:
        if line.startswith('@'): return json.loads(line[1:])
    sys.exit(f"a side exited early:\n{p.stderr.read()[-4000:]}")

def matmul_ceiling(dev, n=8192, reps=10):
    "Measured dense matmul TFLOP/s (bf16 on a GPU, fp32 on the CPU; mean of `reps` after 3 warm-ups)."
    dt = torch.bfloat16 if dev.type == 'cuda' else torch.float32
    n = n if dev.type == 'cuda' else 1024
    a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    for _ in range(3): a @ b
    sync(); t = time.perf_counter()
    for _ in range(reps): a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12

def flops_per_token(cfg, seq):
    "Model FLOPs per trained token of a frozen-base adapter run: forward + input gradient of every matmul weight (4N), causal attention's fwd + bwd."
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    n_lin = cfg.n_layers * (2 * cfg.dim * q + 2 * cfg.dim * kv + 3 * cfg.dim * cfg.hidden) + cfg.vocab_size * cfg.dim
    return 4 * n_lin + 6 * cfg.n_layers * seq * cfg.n_heads * cfg.head_dim

def run(kind, a, dev, sides):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    ps = {s: subprocess.Popen([sys.executable, __file__, '--child', s, kind, '--warmup', str(a.warmup), '--bs', *map(str, a.bs)] + (['--dry-run'] if a.dry_run else []),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for s in sides}
    ready = {s: ask(p) for s, p in ps.items()}
    out = {}
    for bs in a.bs:
        rounds, i0 = [], a.warmup
        for r in range(a.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            rounds.append({s: ask(ps[s], f"{bs} {i0} {a.steps}") for s in order})
            i0 += a.steps
        res = {}
        for s in sides:
            rs = [x[s] for x in rounds]
            res[s] = dict(tok_s=statistics.median(x['toks'] / x['dt'] for x in rs), step_s=statistics.median(x['dt'] / a.steps for x in rs),
                          peak_alloc_gib=max(x.get('alloc', 0) for x in rs) / 2**30, peak_reserved_gib=max(x.get('reserved', 0) for x in rs) / 2**30,
                          first_loss=ready[s]['first'][str(bs)]['loss'], last_loss=rs[-1]['loss'], first_step_s=ready[s]['first'][str(bs)]['dt'],
                          steady_warmup_s=ready[s]['steady'][str(bs)], build_s=ready[s]['build_s'], trainable=ready[s]['trainable'])
        ratios = [x['llmlite']['toks'] / x['llmlite']['dt'] / (x['transformers']['toks'] / x['transformers']['dt']) for x in rounds]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        out[str(bs)] = dict(sides=res, ratio_tok_s=dict(median=statistics.median(ratios), q1=q[0], q3=q[2], rounds=ratios))
    for p in ps.values(): ask(p, ''); p.wait()
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out'); ap.add_argument('--kinds', nargs='+', default=['lora', 'dora']); ap.add_argument('--bs', nargs='+', type=int, default=[1, 4])
    ap.add_argument('--rounds', type=int, default=3); ap.add_argument('--steps', type=int, default=2, help='timed steps per side per round')
    ap.add_argument('--warmup', type=int, default=2); ap.add_argument('--compile', action='store_true'); ap.add_argument('--dry-run', action='store_true')
    ap.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child: return child(*a.child, a.dry_run, a.warmup, a.bs)
    if not a.dry_run and not torch.cuda.is_available(): sys.exit('gpu_qlora.py needs a CUDA GPU (or --dry-run)')
    from llmlite.plan import plan
    dev = torch.device('cpu' if a.dry_run else 'cuda')
    cfg, seq = config(a.dry_run), 64 if a.dry_run else 2048
    ceil = matmul_ceiling(dev)
    peak = 989.4 if 'H200' in (torch.cuda.get_device_name() if dev.type == 'cuda' else '') or 'H100' in (torch.cuda.get_device_name() if dev.type == 'cuda' else '') else None
    fpt = flops_per_token(cfg, seq)
    res = dict(shape=cfg.name, seq=seq, device=torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu', dry_run=a.dry_run,
               matmul_tflops=ceil, datasheet_tflops=peak, flops_per_token=fpt, load_avg=os.getloadavg(), kinds={})
    for kind in a.kinds:
        sides = ('llmlite', 'transformers') + (('llmlite+compile',) if a.compile and kind == 'lora' else ())
        r = run(kind, a, dev, sides)
        for bs, o in r.items():
            for s, v in o['sides'].items():
                v['mfu_measured'] = v['tok_s'] * fpt / 1e12 / ceil
                if s == 'llmlite+compile': v['compile_s'] = v['first_step_s'] - v['steady_warmup_s']
                if peak: v['mfu_datasheet'] = v['tok_s'] * fpt / 1e12 / peak
            p = plan(cfg, 1, 141., seq, int(bs), 'nf4', kind, 16, True, dtype='bf16' if dev.type == 'cuda' else 'fp32')
            o['plan_peak_gib'] = p['peak_gib']; o['plan'] = p
            m = o['sides']['llmlite']['peak_alloc_gib']
            o['plan_err'] = m and p['peak_gib'] / m - 1
        res['kinds'][kind] = r
        print(f"{kind}: done", flush=True)
    if 'lora' in res['kinds'] and 'dora' in res['kinds']:
        res['dora_vs_lora_step'] = {bs: res['kinds']['dora'][bs]['sides']['llmlite']['step_s'] / res['kinds']['lora'][bs]['sides']['llmlite']['step_s'] for bs in res['kinds']['lora']}
    res['load_avg_end'] = os.getloadavg()
    if a.out:
        with open(a.out, 'w') as f: json.dump(res, f, indent=1)
    print(f"QLoRA {res['shape']} seq {seq} on {res['device']}: matmul ceiling {ceil:.1f} TFLOP/s; load average {res['load_avg'][0]:.1f}")
    print(f"{'kind':6}{'bs':>3} {'side':16}{'tok/s':>10}{'step s':>8}{'alloc GiB':>10}{'resv GiB':>9}{'MFU':>7}{'loss0':>8}")
    for kind, r in res['kinds'].items():
        for bs, o in r.items():
            for s, v in o['sides'].items():
                print(f"{kind:6}{bs:>3} {s:16}{v['tok_s']:>10.1f}{v['step_s']:>8.3f}{v['peak_alloc_gib']:>10.2f}{v['peak_reserved_gib']:>9.2f}{100 * v['mfu_measured']:>6.1f}%{v['first_loss']:>8.3f}")
            rt = o['ratio_tok_s']
            print(f"{'':10}llmlite/transformers tok/s {rt['median']:.2f}x (quartiles {rt['q1']:.2f}-{rt['q3']:.2f}); plan peak {o['plan_peak_gib']:.2f} GiB vs measured {o['sides']['llmlite']['peak_alloc_gib']:.2f}")

if __name__ == '__main__': main()
