"Sharded loading under 2 gloo ranks: `load(src, shard=True)` gives each rank exactly the shards of sharding the fully loaded model (NF4 byte for byte, dense exactly), trains the same, and never reads the whole model."
import json
import pytest, torch, torch.nn.functional as F, torch.distributed as dist, transformers
from llmlite.loading import load
from llmlite.quant import empty_qtensor
from llmlite.formats import SafetensorsFile
from llmlite.core import LLMLiteError
from llmlite.quant import QTensor, quantize_weight
from llmlite.adapters import add_adapters
from llmlite.fsdp import shard
from llmlite.dist import launch

def llama(d, tie=False):
    "A tiny random Llama saved by transformers; vocab 301 so the embedding splits unevenly over 2 ranks."
    torch.manual_seed(0)
    hc = transformers.LlamaConfig(vocab_size=301, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie)
    transformers.LlamaForCausalLM(hc).save_pretrained(d)
    return d

def local(p):
    "This rank's shard of parameter `p`, as plain tensors."
    t = p.to_local()
    return {k: getattr(t, k).clone() for k in t.names} if isinstance(t, QTensor) else {'': t.detach().clone()}

def shards(m): return {n: local(p) for n, p in m.named_parameters()}

def train_step(m):
    o = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, 301, (2, 17), generator=torch.Generator().manual_seed(0))
    l = F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()); l.backward(); o.step(); o.zero_grad()
    return l.item(), F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).item()

def work(d, out, cases):
    torch.set_num_threads(1)
    res = {}
    for name, quant, kind in cases:
        prep = (lambda m: add_adapters(m, kind, r=4)) if kind else None
        torch.manual_seed(1)
        ref, _ = load(d, quant=quant)
        if prep: prep(ref)
        ref = shard(ref)
        torch.manual_seed(1)
        got, _ = load(d, quant=quant, shard=True, prepare=prep)
        a, b = shards(ref), shards(got)
        same = sorted(a) == sorted(b) and all(a[n].keys() == b[n].keys() and all(torch.equal(a[n][k], b[n][k]) and a[n][k].dtype == b[n][k].dtype
                                                                                 for k in a[n]) for n in a)
        types = all(type(p.to_local()) is type(q.to_local()) and p.shape == q.shape for p, q in zip(ref.parameters(), got.parameters()))
        res[name] = dict(same=bool(same), types=bool(types), n=len(a), n_q=sum(isinstance(p.to_local(), QTensor) for p in got.parameters()),
                         ref_losses=train_step(ref) if kind else None, losses=train_step(got) if kind else None)
    if dist.get_rank() == 0: open(out, 'w').write(json.dumps(res))

CASES = [('nf4_lora', 'nf4', 'lora'), ('dense', None, None), ('hqq_dora', 'hqq', 'dora')]

@pytest.fixture(scope='module')
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('fsdp_load')
    res = {}
    for tie in (False, True):
        d = llama(tmp/f'llama{int(tie)}', tie)
        launch(work, 2, str(d), str(tmp/'out.json'), CASES if not tie else CASES[:1], timeout=60)
        res.update({f"{k}{'_tied' if tie else ''}": v for k, v in json.loads((tmp/'out.json').read_text()).items()})
    return res

@pytest.mark.parametrize('case', ['nf4_lora', 'dense', 'hqq_dora', 'nf4_lora_tied'])
def test_shards_equal_sharding_the_loaded_model(results, case):
    r = results[case]
    assert r['same'] and r['types'], r
    assert r['n_q'] == (0 if case == 'dense' else 14)

@pytest.mark.parametrize('case', ['nf4_lora', 'hqq_dora', 'nf4_lora_tied'])
def test_trains_like_the_loaded_model(results, case):
    r = results[case]
    assert r['losses'] == r['ref_losses'] and r['losses'][1] < r['losses'][0], r

def test_skeleton_matches_quantized_layout():
    w = torch.randn(40, 192)
    for method, bits in (('nf4', 4), ('hqq', 2), ('hqq', 3), ('hqq', 8)):
        real, skel = quantize_weight(w, method, bits), empty_qtensor(w.shape, w.dtype, method, bits)
        assert {k: (v.shape, v.dtype) for k, v in real.inner.items()} == {k: (v.shape, v.dtype) for k, v in skel.inner.items()} and skel.is_meta

def test_read_rows_and_errors(tmp_path):
    d = llama(tmp_path/'m')
    f = SafetensorsFile(d/'model.safetensors')
    whole = dict(f.items())
    for k, (a, b) in (('model.embed_tokens.weight', (151, 301)), ('model.norm.weight', (0, 128)), ('lm_head.weight', (3, 3))):
        assert torch.equal(f.read(k, a, b), whole[k][a:b])
    with pytest.raises(LLMLiteError, match='needs a process group'): load(d, shard=True)
