"""The CUDA paths, each against a reference: NF4 bytes against bitsandbytes' CUDA quantizer (nested absmax included), QLoRA and
QDoRA steps under bf16 autocast against an fp32 step, KV-cache decoding against recomputation, SDPA's flash and memory-efficient
dispatch, pinned-memory offload of 4-bit shards, and `torch.compile` against eager.

Run on a GPU with `pytest -m cuda tests/test_cuda.py`. Without one every test skips; with `LLMLITE_DRY_RUN=1` (what
`bench/gpu.sh --dry-run` sets) the tests that have a CPU counterpart run it on the CPU, and only what needs CUDA itself skips."""
import copy, os
import pytest, torch, torch.nn.functional as F
from llmlite.quant import nf4_quantize, nf4_dequantize, quantize, quantize_weight, qtensor_state, quantize_blockwise8, DYNAMIC
from llmlite.models import Config, Decoder, checkpoint_blocks
from llmlite.adapters import add_adapters
from llmlite.attention import attend, attn_mask
from llmlite.data import lm_loss
from llmlite.generate import generate_ids

pytestmark = pytest.mark.cuda
CUDA = torch.cuda.is_available()
DRY = os.environ.get('LLMLITE_DRY_RUN') == '1'

@pytest.fixture
def dev():
    "cuda; on a machine without one, the CPU in a dry run, else skip."
    if CUDA: return torch.device('cuda')
    if DRY: return torch.device('cpu')
    pytest.skip('needs a CUDA GPU (LLMLITE_DRY_RUN=1 runs the CPU counterpart)')

def need_cuda(what):
    if not CUDA: pytest.skip(f'{what} needs CUDA')

def rel(a, b): return ((a.float() - b.float()).norm() / b.float().norm()).item()

def tiny(**kw):
    return Config(**dict(vocab_size=256, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden=256, max_seq_len=128) | kw)

# NF4: the same bytes as bitsandbytes' kernels on the device, and bitsandbytes reads ours back

def blocks(x, bs):
    "`x` flattened to fp32 as (blocks, bs), the last block zero-padded; and its element count."
    x = x.reshape(-1).float()
    return F.pad(x, (0, -x.numel() % bs)).view(-1, bs), x.numel()

def nearest8(x, bs=256):
    "Dynamic-map codes of `x` by blocks as bitsandbytes' CUDA kernel picks them: scaled by 1/absmax, the nearest code (a midpoint goes down)."
    xb, n = blocks(x, bs)
    s = xb * (1 / xb.abs().amax(1))[:, None]
    return torch.searchsorted(((DYNAMIC[:-1] + DYNAMIC[1:]) * 0.5).to(x.device), s.contiguous()).view(-1)[:n].to(torch.uint8)

@pytest.mark.parametrize('shape', [(256, 512), (4096, 64), (33, 70), (7, 9)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_nf4_bytes_equal_bitsandbytes(dev, shape, dtype):
    """On CPU every byte equals bitsandbytes'. On CUDA its kernel rounds the nested absmax to the nearest code where its CPU kernel (and
    we, on every device: the same file anywhere) use a 65536-point grid, and scales a partial last block by the reciprocal: so there
    the 4-bit codes of whole blocks and the nested scale and offset must be equal, and bitsandbytes' nested codes the nearest ones."""
    pytest.importorskip('bitsandbytes')
    torch.manual_seed(0)
    w = (torch.randn(shape) * 0.02).to(dev, dtype)
    a, b = nf4_quantize(w), nf4_quantize(w, backend='bnb')
    for k in a: assert a[k].device.type == dev.type and a[k].dtype == b[k].dtype, k
    whole = w.numel() // 64 * 32   # bytes of whole 64-weight blocks
    same = dict(qdata=(a['qdata'].view(-1)[:whole], b['qdata'].view(-1)[:whole]), nested_absmax=(a['nested_absmax'], b['nested_absmax']), offset=(a['offset'], b['offset']))
    if dev.type == 'cpu': same |= dict(qdata=(a['qdata'], b['qdata']), absmax=(a['absmax'], b['absmax']))
    for k, (x, y) in same.items(): assert torch.equal(x.reshape(-1), y.reshape(-1)), f"{k}: {(x.reshape(-1) != y.reshape(-1)).sum()} of {x.numel()} differ"
    if dev.type == 'cuda':
        am = blocks(w, 64)[0].abs().amax(1)
        assert torch.equal(b['absmax'], nearest8(am - b['offset'])), "bitsandbytes' CUDA nested codes are not the nearest codes"
        assert torch.equal(a['absmax'], quantize_blockwise8(am - a['offset'])[0])
        print(f"{shape} {dtype}: {(a['absmax'] != b['absmax']).sum().item()} of {a['absmax'].numel()} nested codes differ (grid vs nearest)")
    for st in (a, b): assert torch.equal(nf4_dequantize(st, shape, dtype, backend='torch'), nf4_dequantize(st, shape, dtype, backend='bnb'))

def test_bitsandbytes_reads_our_state(dev):
    bf = pytest.importorskip('bitsandbytes.functional')
    torch.manual_seed(0)
    w = (torch.randn(512, 256) * 0.02).to(dev, torch.bfloat16)
    q = quantize_weight(w)
    st = {k.removeprefix('weight.'): v for k, v in qtensor_state(q).items() if k != 'weight'}
    qs = bf.QuantState.from_dict(st, device=dev)
    assert torch.equal(bf.dequantize_4bit(q.qdata, qs).reshape(w.shape), q.dequantize())
    x = torch.randn(3, 256, device=dev, dtype=torch.bfloat16)
    assert torch.equal(F.linear(x, q), F.linear(x, q.dequantize()))

# QLoRA / QDoRA under bf16 autocast against fp32

@pytest.mark.parametrize('kind', ['lora', 'dora'])
@pytest.mark.parametrize('ckpt', [False, True])
def test_qlora_step_bf16_autocast_matches_fp32(dev, kind, ckpt):
    torch.manual_seed(0)
    m = quantize(Decoder(tiny()), 'nf4').to(dev)
    add_adapters(m, kind, r=8, alpha=16)
    for p in m.parameters():   # a trained adapter (B = 0 at init would hide half of the path)
        if p.requires_grad: p.data.add_(torch.randn_like(p) * 0.02)
    ref = copy.deepcopy(m)
    if ckpt: checkpoint_blocks(m); checkpoint_blocks(ref)   # after the copy: the wrapper holds its own block
    x = torch.randint(0, 256, (2, 64), device=dev)
    def step(model, bf16):
        model.train()
        with torch.autocast(dev.type, torch.bfloat16, enabled=bf16): out = model(x)
        assert out.dtype == (torch.bfloat16 if bf16 else torch.float32)
        loss = lm_loss(out, x); loss.backward()
        return loss, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    (l16, g16), (l32, g32) = step(m, True), step(ref, False)
    assert abs(l16.item() - l32.item()) < 2e-2 * l32.item()
    assert all(g.dtype == torch.float32 for g in g16.values())
    errs = {n: rel(g16[n], g32[n]) for n in g32}
    assert max(errs.values()) < 0.05, sorted(errs.items(), key=lambda kv: -kv[1])[:3]   # bf16 keeps 8 bits: ~0.4% per rounding
    opt = [torch.optim.AdamW([p for p in mm.parameters() if p.requires_grad], lr=1e-3) for mm in (m, ref)]
    for o in opt: o.step()
    moved = [rel(p16, p32) for p16, p32 in zip((p for p in m.parameters() if p.requires_grad), (p for p in ref.parameters() if p.requires_grad))]
    assert max(moved) < 1e-2

def test_learner_picks_bf16_on_cuda():
    need_cuda('bf16 autocast by default')
    from llmlite.learner import Learner
    m = add_adapters(quantize(Decoder(tiny()), 'nf4').cuda(), 'lora', r=4)
    class Data:   # the smallest loader the Learner takes
        step = 0
        def batch(self, i): x = torch.randint(0, 256, (2, 32)); return dict(input_ids=x, labels=x)
        def state_dict(self): return {}
        def load_state_dict(self, sd): pass
    learn = Learner(m, Data(), lr=1e-3, show_every=0)
    learn.total = 2
    assert learn.bf16 and learn.one_step(1)['ok']

# KV cache: decoding token by token gives the logits of recomputing the whole sequence

@pytest.mark.parametrize('quant', [None, 'nf4'])
def test_kv_cache_decode_equals_recompute(dev, quant):
    torch.manual_seed(0)
    dt = torch.bfloat16 if dev.type == 'cuda' else torch.float32
    m = Decoder(tiny()).to(dev, dt).eval()
    if quant: quantize(m, quant)
    x = torch.randint(0, 256, (3, 40), device=dev)
    with torch.no_grad():
        full = m(x).float()
        cache = m.new_cache(3, 40)
        step = [m(x[:, :24], cache=cache)] + [m(x[:, i:i + 1], cache=cache) for i in range(24, 40)]
    got = torch.cat(step, 1).float()
    assert rel(got, full) < (2e-2 if dt == torch.bfloat16 else 1e-5)
    assert (got.argmax(-1) == full.argmax(-1)).float().mean() > 0.95

def test_generate_greedy_equals_recompute(dev):
    torch.manual_seed(0)
    m = quantize(Decoder(tiny()), 'nf4').to(dev).eval()   # fp32 compute: greedy choices are stable
    prompts = [[5, 6, 7, 8], [9, 10]]                      # the second is left-padded
    got = torch.stack(list(generate_ids(m, prompts, max_new_tokens=12)), 1).tolist()
    for p, g in zip(prompts, got):
        ids = list(p)
        with torch.no_grad():
            for _ in range(12): ids.append(int(m(torch.tensor([ids], device=dev))[0, -1].argmax()))
        assert g == ids[len(p):]

# attention kernels: SDPA's flash and memory-efficient backends, and flash-attn when installed

def _qkv(T=256, B=2, H=8, Hkv=2, D=64):
    torch.manual_seed(0)
    return [torch.randn(B, h, T, D, device='cuda', dtype=torch.bfloat16) for h in (H, Hkv, Hkv)]

def _ref(q, k, v, mask):
    r = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(r, 1), v.float().repeat_interleave(r, 1),
                                          attn_mask=None if mask == 'causal' else mask, is_causal=mask == 'causal')

def test_sdpa_causal_gqa_dispatches_to_flash():
    need_cuda('the flash kernel')
    from torch.nn.attention import sdpa_kernel, SDPBackend
    q, k, v = _qkv()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]): o = attend(q, k, v, 'causal')   # raises if flash can't take this call
    assert o.dtype == torch.bfloat16 and rel(o, _ref(q, k, v, 'causal')) < 1e-2

def test_sdpa_padded_mask_uses_a_fused_kernel():
    need_cuda('the fused attention kernels')
    from torch.nn.attention import sdpa_kernel, SDPBackend
    q, k, v = _qkv()
    valid = torch.ones(2, 256, dtype=torch.bool, device='cuda'); valid[1, :100] = False
    mask = attn_mask(torch.arange(256, device='cuda'), 256, valid)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]): o = attend(q, k, v, mask)
    assert rel(o[0], _ref(q, k, v, mask)[0]) < 1e-2

def test_flash_attn_package_matches_sdpa():
    need_cuda('flash-attn')
    fa = pytest.importorskip('flash_attn')
    q, k, v = _qkv()
    assert rel(attend(q, k, v, 'causal', window=64), _ref(q, k, v, attn_mask(torch.arange(256, device='cuda'), 256, window=64))) < 1e-2, fa.__version__

# pinned host memory: what FSDP2's CPU offload does to a 4-bit shard

def test_pinned_qtensor_offload_round_trip():
    need_cuda('pinned memory')
    torch.manual_seed(0)
    w = torch.randn(512, 256, device='cuda', dtype=torch.bfloat16)
    q = quantize_weight(w)
    shard = q.rows(0, 256).clone().cpu().pin_memory()   # FSDP2: this rank's rows, moved to the host and pinned
    assert shard.is_pinned() and all(t.is_pinned() for t in shard.inner.values())
    back = shard.to('cuda', non_blocking=True)           # before each all-gather
    torch.cuda.synchronize()
    assert torch.equal(back.dequantize(), q.dequantize()[:256])
    x = torch.randn(4, 256, device='cuda', dtype=torch.bfloat16)
    assert torch.equal(F.linear(x, back), F.linear(x, q.dequantize()[:256]))

@pytest.mark.multigpu
def test_fsdp_cpu_offload_step_matches():
    need_cuda('FSDP2 CPU offload')
    if torch.cuda.device_count() < 2: pytest.skip('FSDP2 CPU offload of a 4-bit model needs 2 GPUs (one rank keeps the model whole)')
    from llmlite.dist import launch
    launch(_offload_rank, 2)

def _offload_rank():
    from llmlite.fsdp import shard
    from llmlite.dist import rank
    torch.manual_seed(0)
    def build(off):
        m = add_adapters(quantize(Decoder(tiny()), 'nf4'), 'lora', r=4).cuda()
        return shard(m, cpu_offload=off).train()
    a, b = build(True), build(False)
    qs = [p for p in a.parameters() if not p.requires_grad]
    assert all(p.device.type == 'cpu' and p.to_local().is_pinned() for p in qs)
    x = torch.randint(0, 256, (2, 32), device='cuda')
    la, lb = (lm_loss(m(x), x) for m in (a, b))
    assert abs(la.item() - lb.item()) < 1e-3 * lb.item(), (rank(), la.item(), lb.item())

# torch.compile: the compiled training and decode steps give eager's numbers

def test_compiled_train_step_matches_eager(dev):
    if not CUDA and not os.environ.get('LLMLITE_DRY_COMPILE'): pytest.skip('torch.compile on CPU is slow here: LLMLITE_DRY_COMPILE=1 runs it')
    torch.manual_seed(0)
    m = add_adapters(quantize(Decoder(tiny()), 'nf4').to(dev), 'lora', r=8)
    for p in m.parameters():
        if p.requires_grad: p.data.add_(torch.randn_like(p) * 0.02)
    c = copy.deepcopy(m)
    for b in c.blocks: b.compile()
    x = torch.randint(0, 256, (2, 64), device=dev)
    def grads(model):
        with torch.autocast(dev.type, torch.bfloat16, enabled=dev.type == 'cuda'): loss = lm_loss(model.train()(x), x)
        loss.backward()
        return loss, [p.grad for p in model.parameters() if p.requires_grad]
    (le, ge), (lc, gc) = grads(m), grads(c)
    assert abs(le.item() - lc.item()) < 1e-2 * le.item()
    assert max(rel(a, b) for a, b in zip(gc, ge)) < 0.05

def test_compiled_decode_matches_eager(dev):
    if not CUDA and not os.environ.get('LLMLITE_DRY_COMPILE'): pytest.skip('torch.compile on CPU is slow here: LLMLITE_DRY_COMPILE=1 runs it')
    torch.manual_seed(0)
    m = quantize(Decoder(tiny()), 'nf4').to(dev).eval()
    x = torch.randint(0, 256, (2, 16), device=dev)
    def run(model):
        cache = model.new_cache(2, 24)
        with torch.no_grad(): return torch.cat([model(x, cache=cache)] + [model(x[:, i:i + 1], cache=cache) for i in range(8)], 1)
    e = run(m)
    for b in m.blocks: b.compile(dynamic=True)
    assert rel(run(m), e) < 1e-4
