"""Where 4-bit KV-cache error comes from: the KL divergence of SmolLM2-135M-Instruct's next-token distribution at the end of
2k-token prompts of bench/kv_compress.py's suite (seed 2, 8 prompts) when the keys, the values or both are rounded to
4, 8 (or 2) bits: per token in groups along head_dim (as llmlite.cache stores them), per channel over groups of 32 tokens
(KIVI's layout for keys) or over the whole prompt, or per token after an equalizing per-channel pre-scale; and with the
latest 32, 64 or 128 tokens left unrounded (a ring, as llmlite.cache keeps them: `ring32` ...); against the unrounded
cache. The rounding is simulated (rounded values are stored in 16 bits), and checked against llmlite's own 4-bit cache.

Usage: python bench/kv_quant_error.py
"""
import sys, torch
sys.path.insert(0, __import__('os').path.dirname(__file__))
from kv_compress import suite
from llmlite.cache import CacheConfig, Cache, quantize_kv, dequantize_kv
from llmlite.cli import default_model
from llmlite.loading import load
torch.set_num_threads(2)
model, tok = load(default_model())
ex = suite(tok, [2048], 2, seed=2)
def fq_tok(x, b, g): return dequantize_kv(*quantize_kv(x, b, g), b, x.dtype)
def fq_chan(x, b, g):   # per channel over groups of g tokens (B, H, T, D); g None: the whole prompt
    B, H, T, D = x.shape; g = g or -(-T // 8) * 8; pad = (-T) % g
    y = torch.cat([x, x[:, :, -1:].expand(B, H, pad, D)], 2) if pad else x
    y = y.view(B, H, -1, g, D).transpose(-1, -2)           # (B,H,T/g,D,g)
    y = fq_tok(y.contiguous(), b, g).transpose(-1, -2).reshape(B, H, -1, D)
    return y[:, :, :T]
def fq_eq(x, b, g):     # per token, after dividing each channel by its largest magnitude over the prompt (an equalizing pre-scale)
    c = x.abs().amax(2, keepdim=True).clamp(min=1e-6)
    return fq_tok(x / c, b, g) * c
def ring(f, R):         # the latest R tokens unrounded
    return lambda x: x if x.shape[2] <= R else torch.cat([f(x[:, :, :-R]), x[:, :, -R:]], 2)
orig = Cache._store
def variant(kf, vf):
    def _store(self, i, k, v): return orig(self, i, kf(k), vf(v))
    return _store
ident = lambda x: x
V = {'k4tok32': (lambda x: fq_tok(x, 4, 32), ident), 'k4tok16': (lambda x: fq_tok(x, 4, 16), ident), 'k4chan32': (lambda x: fq_chan(x, 4, 32), ident), 'k4eq32': (lambda x: fq_eq(x, 4, 32), ident),
     'v4tok32': (ident, lambda x: fq_tok(x, 4, 32)), 'v4tok16': (ident, lambda x: fq_tok(x, 4, 16)),
     'k4tok32+v4tok32': (lambda x: fq_tok(x, 4, 32), lambda x: fq_tok(x, 4, 32)), 'k4chan32+v4tok32': (lambda x: fq_chan(x, 4, 32), lambda x: fq_tok(x, 4, 32)), 'k4chan32+v4tok16': (lambda x: fq_chan(x, 4, 32), lambda x: fq_tok(x, 4, 16)),
     'k2chan32+v2tok16': (lambda x: fq_chan(x, 2, 32), lambda x: fq_tok(x, 2, 16)), 'k4chanall': (lambda x: fq_chan(x, 4, None), ident)}
per_tok = lambda b, g: (lambda x: fq_tok(x, b, g))
V |= {f'k{b}tok{g}+v{b}tok{g} ring{R}': (ring(per_tok(b, g), R), ring(per_tok(b, g), R)) for b, g, R in ((4, 32, 32), (4, 32, 64), (4, 32, 128), (4, 16, 32), (8, 32, 32), (2, 16, 32))}
V['k4chan32+v4tok16 ring32'] = (ring(lambda x: fq_chan(x, 4, 32), 32), ring(per_tok(4, 16), 32))
V |= {f'llmlite.cache bits={b} group={g} recent={r}': CacheConfig(bits=b, group=g, recent=r) for b, g, r in ((4, 32, 32), (4, 32, 0))}   # the real cache, against its simulation
ref = {}
with torch.no_grad():
  for name in ['ref'] + list(V):
    real = name == 'ref' or isinstance(V[name], CacheConfig)
    Cache._store = orig if real else variant(*V[name])
    kls, agree = [], 0
    for j, (task, L, ids, ans) in enumerate(ex):
        kv = model.new_cache(1, len(ids) + 1, config=V[name] if name != 'ref' and real else CacheConfig('full'))
        lp = model(torch.tensor([ids]), cache=kv, last=True)[0, -1].float().log_softmax(-1)
        if name == 'ref': ref[j] = lp; continue
        kls.append((ref[j].exp() * (ref[j] - lp)).sum().item()); agree += int(lp.argmax() == ref[j].argmax())
    if name != 'ref': print(name, 'KL mean %.2e max %.2e' % (sum(kls) / len(kls), max(kls)), 'top1', agree, '/', len(ex), flush=True)
