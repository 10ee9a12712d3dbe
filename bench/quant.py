"CPU throughput of llmlite's quantizers vs bitsandbytes' kernels, side by side: `python bench/quant.py [--sizes 4096x4096,4096x11008]`."
import argparse, time, torch
import bitsandbytes.functional as bf
from llmlite.quant import nf4_quantize, nf4_dequantize, hqq_quantize

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

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--sizes', default='4096x4096,4096x11008')
    p.add_argument('--dtype', default='float32')
    a = p.parse_args()
    main([tuple(map(int, s.split('x'))) for s in a.sizes.split(',')], getattr(torch, a.dtype))
