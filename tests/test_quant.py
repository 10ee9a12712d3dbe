"Interop of llmlite.quant with bitsandbytes: NF4 bytes and statistics, `Linear4bit` state dicts both ways, HF-style loading."
import json, pytest, torch, torch.nn as nn
import bitsandbytes as bnb, bitsandbytes.functional as bf
from llmlite.core import LLMLiteError
from llmlite.quant import (NF4, DYNAMIC, nf4_quantize, nf4_dequantize, quantize_blockwise8, quantize_linear,
                           quantize_weight, to_bnb_state, from_bnb_state, dequantize)

SHAPES = [(64, 64), (256, 1024), (33, 70), (1000, 130), (300, 7)]

def bnb_linear(w, b=None, double=True):
    "A CPU `bnb.nn.Linear4bit` (nf4) holding `w` and `b`, quantized by bitsandbytes."
    l = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=b is not None, quant_type='nf4', compress_statistics=double)
    l.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type='nf4', compress_statistics=double)
    if b is not None: l.bias = nn.Parameter(b.clone())
    return l.to('cpu')

def test_code_tables():
    test = bf.get_4bit_type('nf4', device='cpu')
    assert torch.equal(NF4, test)
    assert torch.equal(DYNAMIC, bf.create_dynamic_map(signed=True))

@pytest.mark.parametrize('n', [256, 1000, 5000, 100_003])
def test_nested_codes_match_bnb_cpu_kernel(n):
    torch.manual_seed(n)
    x = torch.randn(n) * torch.rand(n).pow(4)
    q, am = quantize_blockwise8(x)
    qb, st = bf.quantize_blockwise(x, blocksize=256)
    assert torch.equal(q, qb) and torch.equal(am, st.absmax)

@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_nf4_matches_bnb(shape, dtype):
    torch.manual_seed(0)
    w = (torch.randn(shape) * 0.05).to(dtype)
    ours = nf4_quantize(w)
    q, st = bf.quantize_4bit(w, blocksize=64, quant_type='nf4', compress_statistics=True)
    assert ours['qdata'].shape == q.shape == (-(-w.numel() // 2), 1)
    assert torch.equal(ours['qdata'], q)
    assert torch.equal(ours['absmax'], st.absmax)
    assert torch.equal(ours['nested_absmax'], st.state2.absmax)
    assert torch.equal(ours['offset'], st.offset)
    assert torch.equal(nf4_dequantize(ours, shape, dtype), bf.dequantize_4bit(q, st))

@pytest.mark.parametrize('shape', [(64, 128), (96, 200), (130, 64)])
@pytest.mark.parametrize('bias', [True, False])
def test_state_dict_equals_linear4bit(shape, bias):
    torch.manual_seed(1)
    w, b = torch.randn(shape) * 0.02, (torch.randn(shape[0]) if bias else None)
    ref = bnb_linear(w, b).state_dict()
    ours = to_bnb_state(quantize_linear(w, b))
    assert list(ours) == list(ref)
    for k in ref: assert torch.equal(ours[k], ref[k]), k
    assert json.loads(bytes(ours['weight.quant_state.bitsandbytes__nf4'].tolist()))['shape'] == list(shape)

def test_linear4bit_loads_our_state():
    torch.manual_seed(2)
    w, b, x = torch.randn(96, 128) * 0.02, torch.randn(96), torch.randn(3, 128)
    ql = quantize_linear(w, b)
    sd = to_bnb_state(ql)
    bl = bnb.nn.Linear4bit(128, 96, quant_type='nf4', compress_statistics=True)
    stats = {k.removeprefix('weight.'): v for k, v in sd.items() if k.startswith('weight.')}
    bl.weight = bnb.nn.Params4bit.from_prequantized(sd['weight'], stats, device='cpu', module=bl)
    bl.bias = nn.Parameter(sd['bias'])
    with torch.no_grad(): assert torch.allclose(bl(x), ql(x), atol=1e-5)

@pytest.mark.parametrize('double', [True, False])
def test_we_load_linear4bit_state(double):
    torch.manual_seed(3)
    w, b, x = torch.randn(64, 192) * 0.02, torch.randn(64), torch.randn(5, 192)
    bl = bnb_linear(w, b, double)
    m = from_bnb_state(bl.state_dict(), name='model.layers.0.mlp.up_proj')
    with torch.no_grad(): assert torch.allclose(m(x), bl(x), atol=1e-5)
    assert torch.equal(dequantize(m.weight), bf.dequantize_4bit(bl.weight.data, bl.weight.quant_state))
    if double: assert {k: v for k, v in to_bnb_state(m).items()}.keys() == bl.state_dict().keys()

@pytest.mark.parametrize('missing', ['weight.absmax', 'weight.nested_absmax', 'weight.nested_quant_map', 'weight'])
def test_missing_stat_named(missing):
    sd = bnb_linear(torch.randn(64, 64)).state_dict()
    del sd[missing]
    with pytest.raises(LLMLiteError, match=f"model.layers.3.self_attn.q_proj.weight: missing tensor '{missing}'"):
        from_bnb_state(sd, name='model.layers.3.self_attn.q_proj')

def test_wrong_sizes_named():
    sd = bnb_linear(torch.randn(64, 64)).state_dict()
    sd['weight.absmax'] = sd['weight.absmax'][:-1]
    with pytest.raises(LLMLiteError, match='q_proj.weight: weight.absmax has 63 values, expected 64'): from_bnb_state(sd, name='q_proj')
    sd = bnb_linear(torch.randn(64, 64)).state_dict()
    sd['weight.quant_map'] = bf.get_4bit_type('fp4', device='cpu')
    with pytest.raises(LLMLiteError, match='not the NF4 map'): from_bnb_state(sd, name='q_proj')

def test_bnb_backend_same_qtensor():
    w = torch.randn(128, 256)
    a, b = quantize_weight(w), quantize_weight(w, backend='bnb')
    for k in a.names: assert torch.equal(getattr(a, k), getattr(b, k))
    assert torch.equal(a.dequantize(), a.dequantize(backend='bnb'))
