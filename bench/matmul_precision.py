"""bf16 against fp32 matrix products on this CPU, in alternating rounds: whether bf16 compute can pay off here at all.

Without bf16 dot-product instructions (AVX512-BF16, AMX-BF16, Arm BF16) torch emulates bf16 products far below the fp32 rate;
with them bf16 runs at about twice it. `llmlite.core.native_bf16` (what `Learner(precision='auto')` asks) is printed beside.
Usage: python bench/matmul_precision.py [--rounds 4]
"""
import argparse, os, statistics, time
import torch
from llmlite.core import native_bf16, cpu_flags, BF16_FLAGS

def rate(a, b):
    "GFLOP/s of one product `a @ b`."
    t = time.perf_counter(); a @ b
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / (time.perf_counter() - t) / 1e9

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rounds', type=int, default=4)
    a = ap.parse_args()
    print(f"native_bf16: {native_bf16('cpu')}; bf16 flags: {sorted(cpu_flags() & BF16_FLAGS) or 'none'}; {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}")
    for M, K, N in ((1024, 576, 1536), (1024, 1024, 1024)):   # a SmolLM2-135M MLP product at 1024 tokens; a square one
        for lay in ('a @ b', 'x @ w.t()'):   # plain, and a linear layer's layout (weight stored out x in)
            xs = {dt: (torch.randn(M, K, dtype=dt), torch.randn(K, N, dtype=dt) if lay == 'a @ b' else torch.randn(N, K, dtype=dt).t()) for dt in (torch.float32, torch.bfloat16)}
            for dt in xs: rate(*xs[dt])   # warm-up
            rs = [(rate(*xs[torch.float32]), rate(*xs[torch.bfloat16])) for _ in range(a.rounds)]
            r = [b / f for f, b in rs]
            q = statistics.quantiles(r, n=4) if len(r) > 1 else r * 3
            print(f"{M}x{K}x{N} {lay}: fp32 {statistics.median(f for f, _ in rs):.1f} GFLOP/s, bf16 {statistics.median(b for _, b in rs):.2f} GFLOP/s; "
                  f"bf16/fp32 {q[1]:.3f} (median of rounds; quartiles {q[0]:.3f}-{q[2]:.3f})")
    print(f"load average {os.getloadavg()[0]:.1f} at end")
