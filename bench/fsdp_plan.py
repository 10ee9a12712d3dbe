"""Validate `plan.plan` against measured per-rank memory of real 2-rank QLoRA FSDP training on CPU (gloo).

Each configuration runs in a fresh 2-process job. A rank takes its RSS after imports and a warm-up step on a tiny sharded
model as the baseline, builds an NF4 + LoRA decoder, shards it, and runs two AdamW steps. Measured, per rank, minus the baseline:
- pre: RSS once the model is sharded, before training (the shards: plan's frozen + root shard + adapter weights);
- rest: RSS after the steps, gradients freed (the shards and the optimizer state), i.e. what stays between steps;
- peak: the highest RSS during the two steps (plan's peak_gib).
The plan is called with dtype='fp32' (a CPU job computes in fp32; FSDP keeps no separate bf16 copies there).
glibc is told to return freed blocks to the OS (MALLOC_MMAP_THRESHOLD_), so RSS tracks live tensors.
Usage: python bench/fsdp_plan.py [--quick]
"""
import argparse, gc, json, os, subprocess, sys, tempfile
from pathlib import Path

BASE = dict(vocab_size=8192, dim=1024, n_layers=4, n_heads=8, hidden=2048, max_seq_len=2048)
RUNS = [  # (label, config overrides, job)
    ('base', {}, dict(bs=2, T=256, r=8, checkpointing=True)),
    ('long context', {}, dict(bs=2, T=1024, r=8, checkpointing=True)),
    ('no checkpointing', {}, dict(bs=2, T=256, r=8, checkpointing=False)),
    ('r=64, dropout 0.1, no wo', {}, dict(bs=2, T=512, r=64, checkpointing=True, dropout=0.1, targets=['wq', 'wk', 'wv', 'gate', 'up', 'down'])),
    ('8 layers, big vocab', dict(n_layers=8, vocab_size=32000), dict(bs=1, T=512, r=16, checkpointing=True)),
]

def rank_job(cfg, job, out):
    import torch, torch.nn.functional as F, torch.distributed as dist
    from llmlite.core import MemoryMeter, rss
    from llmlite.models import Config, Decoder
    from llmlite.quant import quantize
    from llmlite.adapters import add_adapters
    from llmlite.fsdp import shard
    torch.set_num_threads(1)
    def steps(m, x, n=2):
        o = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
        for _ in range(n):
            l = F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()); l.backward(); o.step(); o.zero_grad()
    def qlora(cfg, r, **kw):
        m = quantize(Decoder(Config(**cfg)), 'nf4'); add_adapters(m, 'lora', r=r, **kw); return m
    tiny = dict(vocab_size=256, dim=256, n_layers=2, n_heads=4, hidden=512, max_seq_len=64)
    steps(shard(qlora(tiny, 4), checkpointing=True).train(), torch.randint(0, 256, (2, 33)))  # warm-up: libraries, thread pools and allocator arenas a first step sets up for good
    gc.collect(); base = rss()
    torch.manual_seed(0)
    m = shard(qlora(cfg, job['r'], dropout=job.get('dropout', 0.), targets=job.get('targets', 'all-linear')), checkpointing=job['checkpointing']).train()
    x = torch.randint(0, cfg['vocab_size'], (job['bs'], job['T'] + 1))
    pre = rss()
    with MemoryMeter() as mm: steps(m, x)
    Path(f"{out}.{dist.get_rank()}").write_text(json.dumps(dict(peak=(mm.peak - base) / 2**30, pre=(pre - base) / 2**30, rest=(rss() - base) / 2**30)))

def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--quick', action='store_true'); a = ap.parse_args()
    from llmlite.models import Config
    from llmlite.plan import plan
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536', OMP_NUM_THREADS='1')
    tmp = Path(tempfile.mkdtemp())
    print(f"{'run':<26}{'plan peak':>10}{'measured per rank':>20}{'err':>6}{'plan shards':>12}{'pre':>7}{'rest':>7}   (GiB)")
    for label, over, job in RUNS[:2] if a.quick else RUNS:
        cfg, out = {**BASE, **over}, tmp/label.replace(' ', '_').replace(',', '').replace('=', '')
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from fsdp_plan import rank_job; from llmlite.dist import launch; "
                f"launch(rank_job, 2, {cfg!r}, {job!r}, {str(out)!r}, timeout=900)")
        subprocess.run([sys.executable, '-c', code], check=True, env=env)
        got = [json.loads(Path(f"{out}.{i}").read_text()) for i in range(2)]
        p = plan(Config(**cfg), world_size=2, seq_len=job['T'], bs=job['bs'], r=job['r'], checkpointing=job['checkpointing'], dtype='fp32',
                 **{k: job[k] for k in ('dropout', 'targets') if k in job})
        shards = p['frozen_gib'] + p['vocab_shards_gib'] + p['adapter_gib'] / 4  # at rest: the blocks' and the vocabulary matrices' shards, adapter weights only
        pk = [g['peak'] for g in got]
        print(f"{label:<26}{p['peak_gib']:>10.3f}{pk[0]:>10.3f}{pk[1]:>10.3f}{max(pk) / p['peak_gib'] - 1:>+6.0%}{shards:>12.3f}"
              f"{max(g['pre'] for g in got):>7.3f}{max(g['rest'] for g in got):>7.3f}", flush=True)
        print('   plan terms:', {k[:-4]: v for k, v in p.items() if k.endswith('_gib') and k not in ('peak_gib', 'cpu_gib')}, flush=True)

if __name__ == '__main__': main()
