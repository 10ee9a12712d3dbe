"""llmlite's quantization vs bitsandbytes (+ transformers), side by side, on CPU:

1. quantize / dequantize throughput of NF4 and HQQ vs bitsandbytes' kernels;
2. peak RSS of `load(..., quant="nf4")` on a generated ~1B-parameter bf16 safetensors checkpoint vs
   transformers + bitsandbytes loading the same directory (each in a fresh subprocess);
3. perplexity of SmolLM2-135M-Instruct on a fixed public-domain text (bench/data/public_domain.txt)
   at fp32 / NF4 / HQQ-4 / HQQ-3;
4. `round_zero`: HQQ's solver started from a rounded zero (the hqq library's choice at 4 bits) or not, at 2/3/4 bits:
   perplexity of SmolLM2 with every block linear layer replaced by its round trip, and the relative weight error on
   SmolLM2's weights and on heavy-tailed random ones (Student t, 3 degrees of freedom).

Usage: python bench/quant.py [--sizes 4096x4096,4096x11008] [--parts throughput,load,ppl,round_zero]
"""
import argparse, json, subprocess, sys, tempfile, time, torch
from pathlib import Path
import bitsandbytes.functional as bf
from llmlite.quant import nf4_quantize, nf4_dequantize, hqq_quantize, hqq_dequantize

def best(f, n=3):
    "Fastest of `n` timed calls of `f` (after one warm-up), in seconds."
    f(); ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)

def main(sizes, dtype=torch.float32, reps=3):
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dtype {dtype}; throughput in M params/s (higher is better)")
    print("llmlite = pure-torch path (*dequantize defaults to bnb's kernel where available: same bytes, faster on CPU)")
    print(f"{'op':<16}{'shape':>14}{'llmlite':>10}{'bnb':>10}{'ratio':>8}")
    for r, c in sizes:
        w = torch.randn(r, c, dtype=dtype) * 0.02
        mp = w.numel() / 1e6
        st = nf4_quantize(w)
        q, qs = bf.quantize_4bit(w, blocksize=64, quant_type='nf4', compress_statistics=True)
        rows = [('nf4 quantize', best(lambda: nf4_quantize(w), reps), best(lambda: bf.quantize_4bit(w, blocksize=64, quant_type='nf4', compress_statistics=True), reps)),
                ('nf4 dequant*', best(lambda: nf4_dequantize(st, w.shape, dtype, backend='torch'), reps), best(lambda: bf.dequantize_4bit(q, qs), reps))]
        for name, a, b in rows: print(f"{name:<16}{f'{r}x{c}':>14}{mp/a:>10.1f}{mp/b:>10.1f}{b/a:>7.2f}x")
        for bits in (4, 2):
            t = best(lambda: hqq_quantize(w, bits), 1)
            print(f"{f'hqq{bits} quantize':<16}{f'{r}x{c}':>14}{mp/t:>10.1f}{'-':>10}{'':>8}  ({t:.2f} s, 20 iterations)")

def make_checkpoint(d:Path, name='Llama-3.2-1B'):
    "Write a random bf16 Hugging Face checkpoint of a known ~1B shape (untied, so every linear is quantized)."
    from llmlite.models import Config, Decoder
    from llmlite.loading import save_model
    cfg = Config.from_name(name, tie_embeddings=False, vocab_size=32000)
    with torch.device('meta'): m = Decoder(cfg)
    m = m.to_empty(device='cpu').to(torch.bfloat16)
    for p in m.parameters(): p.data.normal_(0, 0.02)
    save_model(m, d)
    return cfg.n_params

def _load_child(side, d):
    "Run in a subprocess: load `d` quantized to NF4 and print RSS figures as JSON."
    import warnings; warnings.filterwarnings('ignore')
    from llmlite.core import rss, MemoryMeter
    if side == 'llmlite': from llmlite.loading import load
    else: import transformers
    # sampled RSS, not ru_maxrss: a child started by fork+exec inherits its parent's high-water mark
    with MemoryMeter() as mem:
        t = time.perf_counter()
        if side == 'llmlite': m, _ = load(d, dtype=torch.bfloat16, device='cpu', quant='nf4')
        else:
            qc = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
            m = transformers.AutoModelForCausalLM.from_pretrained(d, quantization_config=qc, device_map='cpu', dtype=torch.bfloat16)
        dt = time.perf_counter() - t
    print(json.dumps(dict(base=mem.start, peak=mem.peak, end=rss(), s=dt)))

def load_rss():
    with tempfile.TemporaryDirectory() as d:
        n = make_checkpoint(Path(d))
        size = sum(f.stat().st_size for f in Path(d).glob('*.safetensors'))
        print(f"\nload(quant='nf4') of a random {n/1e9:.2f}B-param bf16 checkpoint ({size/2**30:.2f} GiB on disk); RSS in MiB, each side in a fresh process")
        print(f"{'':14}{'peak-base':>11}{'after':>9}{'time (s)':>10}")
        res = {}
        for side in ('llmlite', 'transformers'):
            r = subprocess.run([sys.executable, __file__, '--child', side, d], capture_output=True, text=True)
            if r.returncode: sys.exit(f"{side} failed:\n{r.stderr[-3000:]}")
            res[side] = o = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{side:14}{(o['peak'] - o['base'])/2**20:>11.0f}{(o['end'] - o['base'])/2**20:>9.0f}{o['s']:>10.1f}")
        l, t = res['llmlite'], res['transformers']
        print(f"peak ratio transformers/llmlite: {(t['peak'] - t['base']) / (l['peak'] - l['base']):.2f}x")

def ppl():
    from llmlite.loading import load
    from llmlite.cli import default_model
    from llmlite.eval import perplexity
    text = (Path(__file__).parent/'data'/'public_domain.txt').read_text()
    print(f"\nperplexity of SmolLM2-135M-Instruct on bench/data/public_domain.txt ({len(text.split())} words)")
    for name, kw in [('fp32', {}), ('nf4', dict(quant='nf4')), ('hqq-4', dict(quant='hqq', bits=4)), ('hqq-3', dict(quant='hqq', bits=3))]:
        t = time.perf_counter(); m, tok = load(default_model(), **kw); dt = time.perf_counter() - t
        print(f"{name:8}{perplexity(m, tok, text, seq_len=512):>9.3f}   (load + quantize {dt:.1f} s)")

def round_zero():
    from llmlite.loading import load
    from llmlite.cli import default_model
    from llmlite.eval import perplexity
    text = (Path(__file__).parent/'data'/'public_domain.txt').read_text()
    m, tok = load(default_model())
    lins = {n: l for n, l in m.named_modules() if isinstance(l, torch.nn.Linear) and n.startswith('blocks')}
    dense = {n: l.weight.detach().clone() for n, l in lins.items()}
    t = torch.distributions.StudentT(3.).sample((1024, 4096), ) * 0.02
    rt = lambda w, b, rz: hqq_dequantize(hqq_quantize(w, b, round_zero=rz), w.shape, w.dtype, b)
    rel = lambda ws, b, rz: (sum(float((rt(w, b, rz) - w).pow(2).sum()) for w in ws) / sum(float(w.pow(2).sum()) for w in ws)) ** 0.5
    print(f"\nHQQ round_zero (group 64): perplexity of SmolLM2-135M-Instruct on bench/data/public_domain.txt (fp32 {perplexity(m, tok, text, seq_len=256):.3f}), relative weight error")
    print(f"{'bits':>4} {'round_zero':>10} {'ppl':>9} {'err SmolLM2':>12} {'err t(3)':>9}")
    for b in (4, 3, 2):
        for rz in (False, True):
            with torch.no_grad():
                for n, l in lins.items(): l.weight.copy_(rt(dense[n], b, rz))
            print(f"{b:>4} {rz!s:>10} {perplexity(m, tok, text, seq_len=256):>9.3f} {rel(dense.values(), b, rz):>12.5f} {rel([t], b, rz):>9.5f}", flush=True)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', default='4096x4096,4096x11008')
    p.add_argument('--dtype', default='float32')
    p.add_argument('--parts', default='throughput,load,ppl')
    p.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child: _load_child(*a.child); sys.exit()
    parts = a.parts.split(',')
    if 'throughput' in parts: main([tuple(map(int, s.split('x'))) for s in a.sizes.split(',')], getattr(torch, a.dtype))
    if 'load' in parts: load_rss()
    if 'ppl' in parts: ppl()
    if 'round_zero' in parts: round_zero()
