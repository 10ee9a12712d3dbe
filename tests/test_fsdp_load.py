"Sharded loading under 2 gloo ranks: `load(src, shard=True)` gives each rank exactly the shards of sharding the fully loaded model (NF4 byte for byte, dense exactly) and trains the same, from dense and bnb-4bit directories and GGUF files, 256-, 128- and 576-wide layers alike."
import json
import gguf, numpy as np, pytest, torch, torch.nn.functional as F, torch.distributed as dist, transformers
from llmlite.loading import load, save_model
from llmlite.hf import KeyMap, gguf_names, llama_names
from llmlite.quant import empty_qtensor
from llmlite.formats import SafetensorsFile
from llmlite.core import LLMLiteError
from llmlite.quant import QTensor, quantize_weight
from llmlite.adapters import add_adapters
from llmlite.fsdp import shard
from llmlite.dist import launch

def llama(d, tie=False, dim=256, hidden=512):
    "A tiny random Llama saved by transformers; vocab 301 so the embedding splits unevenly over 2 ranks."
    torch.manual_seed(0)
    hc = transformers.LlamaConfig(vocab_size=301, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie)
    transformers.LlamaForCausalLM(hc).save_pretrained(d)
    return d

def bnb_dir(src, d):
    "The model of HF directory `src` quantized to NF4 and saved as a bitsandbytes-4bit checkpoint."
    m, _ = load(src, quant='nf4'); save_model(m, d)
    return d

def gguf_file(src, path):
    "The model of HF directory `src` as an F32 GGUF file, query and key rows permuted as llama.cpp's converter writes them."
    hc, sd = json.loads((src/'config.json').read_text()), transformers.LlamaForCausalLM.from_pretrained(src).state_dict()
    w = gguf.GGUFWriter(str(path), 'llama')
    for k, v in dict(block_count=2, context_length=64, embedding_length=hc['hidden_size'], feed_forward_length=hc['intermediate_size'],
                     vocab_size=hc['vocab_size'], **{'attention.head_count': 4, 'attention.head_count_kv': 2}).items(): w.add_uint32(f'llama.{k}', v)
    for k, t in sd.items():
        n = 4 if 'q_proj' in k else 2
        a = t.reshape(n, 2, t.shape[0] // n // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape) if 'q_proj' in k or 'k_proj' in k else t
        w.add_tensor(KeyMap(gguf_names)(KeyMap(llama_names).inv(k)), np.ascontiguousarray(a.numpy()))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path

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

def work(out, sources):
    "Each (tag, source, cases) of `sources`, loaded both ways on this rank: whether the shards agree, and one training step of each."
    torch.set_num_threads(1)
    res = {}
    for tag, d, cases in sources:
        res.update({f"{k}{tag}": v for k, v in compare(d, cases).items()})
    if dist.get_rank() == 0: open(out, 'w').write(json.dumps(res))

def compare(d, cases):
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
    return res

CASES = [('nf4_lora', 'nf4', 'lora'), ('dense', None, None), ('hqq_dora', 'hqq', 'dora')]

@pytest.fixture(scope='module')
def results(tmp_path_factory):
    "Per source (dense HF directory, tied, 128/576-wide, its bnb-4bit copy, its GGUF copy), the cases loaded both ways on 2 ranks."
    tmp = tmp_path_factory.mktemp('fsdp_load')
    wide = llama(tmp/'wide', dim=128, hidden=576)
    sources = [('', llama(tmp/'llama0'), CASES), ('_tied', llama(tmp/'llama1', True), CASES[:1]), ('_wide', wide, CASES[::2]),
               ('_bnb', bnb_dir(wide, tmp/'bnb'), [('stored_lora', None, 'lora')]), ('_gguf', gguf_file(wide, tmp/'wide.gguf'), CASES[:2])]
    launch(work, 2, str(tmp/'out.json'), [(t, str(d), c) for t, d, c in sources], timeout=60)
    return json.loads((tmp/'out.json').read_text())

@pytest.mark.parametrize('case', ['nf4_lora', 'dense', 'hqq_dora', 'nf4_lora_tied', 'nf4_lora_wide', 'hqq_dora_wide', 'stored_lora_bnb', 'nf4_lora_gguf', 'dense_gguf'])
def test_shards_equal_sharding_the_loaded_model(results, case):
    r = results[case]
    assert r['same'] and r['types'], r
    assert r['n_q'] == (0 if case.startswith('dense') else 14)

@pytest.mark.parametrize('case', ['nf4_lora', 'hqq_dora', 'nf4_lora_tied', 'nf4_lora_wide', 'hqq_dora_wide', 'stored_lora_bnb', 'nf4_lora_gguf'])
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
