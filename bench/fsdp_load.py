"""Peak RSS per rank of loading a checkpoint into a 2-rank FSDP2 model: load whole then `shard`, vs `load(..., shard=True)`.

A random Llama (vocab 32000, dim 1024, 8 layers: 166M parameters, 333 MB of bf16 safetensors) is written once; each
(way, quant) runs in a fresh 2-process gloo job on CPU, loading to fp32. Each rank reports its peak RSS over the load
minus its RSS after imports (glibc told to return freed blocks to the OS, so RSS tracks live memory).
Usage: python bench/fsdp_load.py [--dir /tmp/fsdp_load_bench]
"""
import argparse, json, os, subprocess, sys, tempfile
from pathlib import Path

CFG = dict(vocab_size=32000, dim=1024, n_layers=8, n_heads=16, hidden=2816, max_seq_len=2048)

def rank_job(d, way, quant, out):
    import torch, torch.distributed as dist
    from llmlite.core import MemoryMeter, rss
    from llmlite.loading import load
    from llmlite.quant import quantize
    from llmlite.fsdp import shard
    torch.set_num_threads(1)
    quantize(torch.nn.Linear(64, 64)).weight.dequantize()  # kernels' libraries loaded before the baseline
    base = rss()
    with MemoryMeter() as mm:
        if way == 'whole': m = shard(load(d, quant=quant)[0])
        else: m = load(d, quant=quant, shard=True)[0]
    held = sum(sum(getattr(p.to_local(), k).nbytes for k in p.to_local().names) if hasattr(p.to_local(), 'names') else p.to_local().nbytes
               for p in m.parameters())
    Path(f"{out}.{dist.get_rank()}").write_text(json.dumps(dict(peak_mib=(mm.peak - base) / 2**20, shard_mib=held / 2**20)))

def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--dir', default=os.path.join(tempfile.gettempdir(), 'fsdp_load_bench')); a = ap.parse_args()
    d = Path(a.dir)/'model'
    if not (d/'config.json').exists():
        import torch
        from llmlite.models import Config, Decoder
        from llmlite.loading import save_model
        torch.manual_seed(0); save_model(Decoder(Config(**CFG)).to(torch.bfloat16), d)
    size = sum(f.stat().st_size for f in d.glob('*.safetensors')) / 2**20
    print(f"checkpoint: {size:.0f} MiB of bf16 safetensors; loaded to fp32 that is {2 * size:.0f} MiB dense")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536', OMP_NUM_THREADS='1')
    for quant in ('nf4', None):
        for way in ('whole', 'sharded'):
            out = Path(a.dir)/f"{way}_{quant}"
            code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from fsdp_load import rank_job; from llmlite.dist import launch; "
                    f"launch(rank_job, 2, {str(d)!r}, {way!r}, {quant!r}, {str(out)!r}, timeout=600)")
            subprocess.run([sys.executable, '-c', code], check=True, env=env)
            r = [json.loads(Path(f"{out}.{i}").read_text()) for i in range(2)]
            fmt = lambda k: ', '.join(f"{x[k]:.0f}" for x in r)
            print(f"quant={str(quant):4} {way:8} peak RSS growth per rank: {fmt('peak_mib')} MiB (its shard of the model: {fmt('shard_mib')} MiB)", flush=True)

if __name__ == '__main__': main()
