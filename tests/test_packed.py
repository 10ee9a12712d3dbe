"Packed GGUF weights on the real SmolLM2-135M Q4_1 file: every matrix stays packed, logits and greedy tokens follow the dense load of the same file."
import pytest, torch
from llmlite.loading import load
from llmlite.generate import generate_ids
from llmlite.packed import PackedTensor
from llmlite.core import LLMLiteError

@pytest.fixture(scope='module')
def packed(smol_path): return load(smol_path, packed=True)

def test_weights_stay_packed(packed, smol_path):
    m, _ = packed
    ws = [p for n, p in m.named_parameters() if p.dim() == 2]
    assert ws and all(isinstance(p, PackedTensor) for p in ws)
    assert m.head.weight is m.emb.weight and m.emb.weight.fmt == 'Q8_0' and m.blocks[0].mlp.down.weight.fmt == 'Q4_1'
    held = sum(p.nbytes_packed for p in ws) + sum(p.numel() * p.element_size() for p in m.parameters() if p.dim() == 1)
    assert held < 1.1 * smol_path.stat().st_size        # the weights take about the file's bytes, not 5.5x

def test_logits_follow_dense(packed, smol):
    (m, tok), (d, _) = packed, smol
    x = torch.tensor([tok.encode("The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is")])
    with torch.no_grad(): lp, ld = m(x), d(x)
    rel = ((lp - ld).norm() / ld.norm()).item()
    assert rel < 1e-3                                   # int16 activation codes through 30 layers (measured 2e-4; llama.cpp's int8 ones sit 3% from exact)
    assert torch.equal(lp.argmax(-1), ld.argmax(-1))
    assert lp[0, -1].argmax() == ld[0, -1].argmax()

def test_greedy_decode_follows_dense(packed, smol):
    (m, tok), (d, _) = packed, smol
    ids = [tok.encode("Write one sentence about the sea."), tok.encode("1, 2, 3, 4,")]
    got = torch.stack(list(generate_ids(m, ids, 8)), 1)
    want = torch.stack(list(generate_ids(d, ids, 8)), 1)
    assert torch.equal(got, want)                       # a left-padded batch through the packed kernel, against the dense model

def test_packed_needs_a_cpu_gguf(smol_path):
    with pytest.raises(LLMLiteError, match='packed'): load(smol_path, packed=True, quant='nf4')

def test_fused_blocks_are_the_modules(packed):
    m, tok = packed
    assert ('wq', 'wk', 'wv') in m.blocks[0].attn.joined and ('gate', 'up') in m.blocks[-1].mlp.joined   # q/k/v and gate/up joined at load
    rows = [tok.encode("Write one sentence about the sea."), tok.encode("1, 2, 3, 4,")]
    L = max(map(len, rows))
    x = torch.tensor([[0] * (L - len(r)) + r for r in rows])
    valid = torch.tensor([[False] * (L - len(r)) + [True] * len(r) for r in rows])
    outs = []
    for grad in (False, True):            # without autograd the forward runs its blocks fused (`models._fused`), with it the modules
        c = m.new_cache(2, L + 4)
        with torch.set_grad_enabled(grad):
            lg = [m(x, cache=c, valid=valid, last=True)[:, -1]]          # the left-padded prompt: 2 x 8 rows, one kernel call per matrix
            for _ in range(4): lg.append(m(lg[-1].argmax(-1)[:, None], cache=c, last=True)[:, -1])
        outs.append(torch.stack(lg))
    a, b = outs
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    # the fused road gives the modules' logits, left-padded row included; its norms and SwiGLU run inside the kernel, whose
    # inputs then differ from torch's by float rounding, enough to move an int16 activation code here and there (measured 7e-5)
    assert ((a - b).norm() / b.norm()).item() < 2e-4
