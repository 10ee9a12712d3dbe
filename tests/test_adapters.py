"Interop of llmlite.adapters with transformers + PEFT (both directions, LoRA and DoRA), merging, disabling, QLoRA training, bad input."
import copy, json, os, pytest, torch, torch.nn as nn, torch.nn.functional as F
import transformers, peft
from safetensors import safe_open
from llmlite.core import LLMLiteError
from llmlite.loading import load
from llmlite.quant import QLinear, quantize, quantize_linear
from llmlite.adapters import (AdapterConfig, AdapterLinear, add_adapters, adapter_layers, adapter_names, dense_weight, delete_adapter,
                              disable_adapters, merge_adapters, set_adapter, trainable_params, trained_copies, unload_adapters)
from llmlite.peft import load_adapter, save_adapter

def _leaf(path): return path.rsplit('.', 1)[-1]

IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
# (kind, rslora, llmlite targets, the same layers as PEFT target_modules)
CASES = [('lora', False, 'all-linear', 'all-linear'), ('dora', False, 'all-linear', 'all-linear'),
         ('lora', True, ['wq', 'wv'], ['q_proj', 'v_proj']), ('dora', True, ['blocks.0.attn.wq', 'down'], ['model.layers.0.self_attn.q_proj', 'down_proj'])]

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A tiny random Llama made and saved by transformers (weights large enough that adapters move the logits)."
    d = tmp_path_factory.mktemp('tiny_llama')
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, max_position_embeddings=128, initializer_range=0.1, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return d

def hf_model(d): return transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
def our_model(d): return load(d, dtype='fp32', device='cpu')[0]

def randomize(params, seed=0, std=0.2):
    "Overwrite adapter tensors with non-zero values (magnitudes perturbed around their initial row norms)."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in params:
            if 'magnitude' in n: p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else: p.copy_(torch.randn(p.shape, generator=g) * std)

def adapter_params(model): return [(n, p) for n, p in model.named_parameters() if 'lora' in n or 'magnitude' in n]

@pytest.mark.parametrize('kind,rslora,targets,hf_targets', CASES)
def test_ours_loads_in_peft(tiny, tmp_path, kind, rslora, targets, hf_targets):
    model = add_adapters(our_model(tiny), kind, r=4, alpha=8, dropout=0.1, targets=targets, rslora=rslora)
    randomize(adapter_params(model))
    save_adapter(model, tmp_path)
    conf = json.loads((tmp_path/'adapter_config.json').read_text())
    assert conf['use_dora'] == (kind == 'dora') and conf['use_rslora'] == rslora
    if targets == ['wq', 'wv']: assert conf['target_modules'] == ['q_proj', 'v_proj']
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]
    pm = peft.PeftModel.from_pretrained(hf_model(tiny), tmp_path).eval()
    with torch.no_grad():
        ours, theirs = model(IDS), pm(IDS).logits
        with disable_adapters(model): base = model(IDS)
    assert (ours - base).abs().max() > 1e-2  # the adapter matters
    assert (ours - theirs).abs().max() < 1e-4

@pytest.mark.parametrize('kind,rslora,targets,hf_targets', CASES)
def test_peft_loads_in_ours(tiny, tmp_path, kind, rslora, targets, hf_targets):
    pm = peft.get_peft_model(hf_model(tiny), peft.LoraConfig(r=4, lora_alpha=8, use_dora=kind == 'dora', use_rslora=rslora,
                                                             target_modules=hf_targets, init_lora_weights=False))
    randomize(adapter_params(pm), seed=1)
    assert all(p.abs().sum() > 0 for n, p in adapter_params(pm) if 'lora_B' in n)
    pm.eval().save_pretrained(tmp_path)
    model = load_adapter(our_model(tiny), tmp_path, name='peft')
    with torch.no_grad(): ours, theirs = model(IDS), pm(IDS).logits
    assert (ours - theirs).abs().max() < 1e-4
    assert adapter_names(model) == ['peft'] and all(m.cfgs['peft'].kind == kind for m in adapter_layers(model).values())

@pytest.mark.parametrize('kind', ['lora', 'dora'])
@pytest.mark.parametrize('quant', [None, 'nf4', 'hqq'])
def test_merge_and_disable(tiny, kind, quant):
    model = our_model(tiny)
    if quant: quantize(model, quant)
    with torch.no_grad(): base = model(IDS)
    add_adapters(model, kind, r=8, rslora=True)
    randomize(adapter_params(model), std=0.05)
    with torch.no_grad():
        unmerged = model(IDS)
        with disable_adapters(model): assert torch.equal(model(IDS), base)
        assert (unmerged - base).abs().max() > 1e-2
        merged = copy.deepcopy(model)
        rep = merge_adapters(merged)
        assert rep['layers'] == 14 and not adapter_layers(merged) and not any(isinstance(m, QLinear) for m in merged.modules())
        assert (merged(IDS) - unmerged).abs().max() < 1e-5
        if quant:
            rq = copy.deepcopy(model)
            rep = merge_adapters(rq, requantize=True)
            assert sum(isinstance(m, QLinear) for m in rq.modules()) == 14
            assert 0 < rep['mean_abs_err'] <= rep['max_abs_err'] < 1

def test_merge_exports_dense_hf_dir(tiny, tmp_path):
    from llmlite.loading import save_model
    model = add_adapters(quantize(our_model(tiny), 'nf4'), 'dora', r=4)
    randomize(adapter_params(model))
    with torch.no_grad(): want = model(IDS)
    merge_adapters(model)
    save_model(model, tmp_path)
    with torch.no_grad(): got = hf_model(tmp_path)(IDS).logits
    assert (got - want).abs().max() < 1e-4

def test_qlora_training_freezes_base(tiny):
    torch.manual_seed(0)
    model = add_adapters(quantize(our_model(tiny), 'nf4'), 'dora', r=8, dropout=0.05).train()
    base = {k: v.clone() for k, v in model.state_dict().items() if '.base.' in k}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(('lora_' in n or '.magnitude.' in n) for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(IDS[:, :-1]).flatten(0, 1), IDS[:, 1:].flatten())
        loss.backward()
        assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
        opt.step(); opt.zero_grad(); losses.append(loss.item())
    after = {k: v for k, v in model.state_dict().items() if '.base.' in k}
    assert after.keys() == base.keys() and all(torch.equal(base[k], after[k]) for k in base)
    assert losses[-1] < losses[0]
    tp = trainable_params(model)
    assert tp.trainable == sum(p.numel() for n, p in model.named_parameters() if n in trainable) and 0 < tp.pct < 100

@pytest.mark.parametrize('kind', ['lora', 'dora'])
@pytest.mark.parametrize('drop', [0., 0.3])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('q', [False, True])
def test_adapter_equals_naive_reference(kind, bias, q, drop):
    "Outputs and gradients equal a dense W' (for DoRA with explicit, detached row norms); dropout, in training, on the adapter's input only; an unfrozen dense base gets its gradient."
    torch.manual_seed(0)
    w, b = torch.randn(72, 40) * 0.1, (torch.randn(72) if bias else None)
    base = quantize_linear(w, b) if q else nn.Linear(40, 72, bias=bias)
    lyr = AdapterLinear(base).add('d', AdapterConfig(kind, r=6, alpha=12, rslora=True, dropout=drop)).train()
    lyr.active = 'd'
    randomize(adapter_params(lyr))
    A, B, s = lyr.lora_a['d'], lyr.lora_b['d'], 12 / 6 ** 0.5
    ps = [A, B] + ([lyr.magnitude['d']] if kind == 'dora' else []) + ([] if q else [base.weight.requires_grad_()])
    x1 = torch.randn(2, 7, 40, requires_grad=True); x2 = x1.detach().clone().requires_grad_()
    wd = base.weight if not q else dense_weight(base)
    wp = wd + s * B @ A   # the naive way: a dense delta and explicit norms
    torch.manual_seed(1); y1 = lyr(x1)
    torch.manual_seed(1); xd = F.dropout(x2, drop, True) if drop else x2   # the same dropout mask
    z = x2 @ wd.t() + s * (xd @ A.t()) @ B.t()
    y2 = (z if kind == 'lora' else (lyr.magnitude['d'] / wp.norm(dim=1).detach()) * z) + (0 if base.bias is None else base.bias)
    assert (y1 - y2).abs().max() < 1e-5
    gy = torch.randn_like(y1)
    for u, v in zip(torch.autograd.grad(y1, [x1, *ps], gy), torch.autograd.grad(y2, [x2, *ps], gy)):
        assert (u - v).abs().max() < 1e-4 * max(1, v.abs().max())

def test_several_adapters(tiny, tmp_path):
    model = our_model(tiny)
    with torch.no_grad(): base = model(IDS)
    add_adapters(model, 'lora', r=4, targets=['wq', 'wv'], name='a')
    add_adapters(model, 'dora', r=4, name='b')
    randomize(adapter_params(model))
    with torch.no_grad():
        yb = model(IDS); set_adapter(model, 'a'); ya = model(IDS)
    assert (ya - yb).abs().max() > 1e-2
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n, _ in adapter_params(model) if n.endswith('.a')}
    save_adapter(model, tmp_path/'b', name='b')
    delete_adapter(model, 'b')
    assert adapter_names(model) == ['a'] and isinstance(model.blocks[0].mlp.up, nn.Linear)
    load_adapter(model, tmp_path/'b', name='b2')
    with torch.no_grad(): assert (model(IDS) - yb).abs().max() < 1e-5
    unload_adapters(model)
    assert not adapter_layers(model)
    with torch.no_grad(): assert torch.equal(model(IDS), base)

def test_targets_and_names(tiny):
    model = our_model(tiny)
    with pytest.raises(LLMLiteError, match=r"target 'q_proj' matches no linear layer; the model's linear layers are named \['down', 'gate', 'head'"):
        add_adapters(model, targets=['q_proj'])
    with pytest.raises(LLMLiteError, match="matches no linear layer"): add_adapters(model, targets='attn_norm')
    assert not adapter_layers(model)
    add_adapters(model)
    assert 'head' not in adapter_layers(model) and len(adapter_layers(model)) == 14
    with pytest.raises(LLMLiteError, match="already has an adapter named 'default'"): add_adapters(model)
    with pytest.raises(LLMLiteError, match="unknown adapter kind 'vera'"): add_adapters(model, 'vera', name='v')

def test_bad_adapters(tiny, tmp_path):
    model = add_adapters(our_model(tiny), 'dora', r=4)
    save_adapter(model, tmp_path/'ok')
    wide = transformers.LlamaConfig(vocab_size=256, hidden_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
    pw = peft.get_peft_model(transformers.LlamaForCausalLM(wide), peft.LoraConfig(r=4, target_modules=['q_proj']))
    pw.save_pretrained(tmp_path/'wide')
    fresh = our_model(tiny)
    with pytest.raises(LLMLiteError, match=r"model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight has shape \(4, 96\), but layer 'blocks\.0\.attn\.wq' of this model has weight shape \(64, 64\)"):
        load_adapter(fresh, tmp_path/'wide')
    assert not adapter_layers(fresh)  # nothing half-loaded
    conf = json.loads((tmp_path/'ok'/'adapter_config.json').read_text())
    for extra, msg in [({'lora_sparkle': True}, r"unknown field\(s\) \['lora_sparkle'\]"), ({'fan_in_fan_out': True}, "'fan_in_fan_out' = True is not supported"),
                       ({'peft_type': 'IA3'}, "peft_type 'IA3' is not supported"), ({'r': 0}, 'positive int')]:
        d = tmp_path/f'bad{len(os.listdir(tmp_path))}'; d.mkdir()
        (d/'adapter_config.json').write_text(json.dumps(conf | extra))
        (d/'adapter_model.safetensors').write_bytes((tmp_path/'ok'/'adapter_model.safetensors').read_bytes())
        with pytest.raises(LLMLiteError, match=msg): load_adapter(fresh, d)
    (tmp_path/'nofile').mkdir(); (tmp_path/'nofile'/'adapter_config.json').write_text(json.dumps(conf))
    with pytest.raises(LLMLiteError, match=r"nofile/adapter_model\.safetensors: file not found"): load_adapter(fresh, tmp_path/'nofile')
    with pytest.raises(LLMLiteError, match=r"adapter_config\.json: file not found"): load_adapter(fresh, tmp_path/'missing')
    (tmp_path/'nofile'/'adapter_config.json').write_text(json.dumps(conf | {'use_dora': False}))
    (tmp_path/'nofile'/'adapter_model.safetensors').write_bytes((tmp_path/'ok'/'adapter_model.safetensors').read_bytes())
    with pytest.raises(LLMLiteError, match=r"has tensors \['lora_a', 'lora_b', 'magnitude'\], a lora adapter needs"): load_adapter(fresh, tmp_path/'nofile')
    assert not adapter_layers(fresh)

def test_save_model_refuses_unmerged(tmp_path):
    from llmlite.models import Config, Decoder
    from llmlite.loading import save_model
    m = Decoder(Config(vocab_size=64, dim=32, n_layers=1, n_heads=4, hidden=64))
    add_adapters(m, 'lora', r=2)
    with pytest.raises(LLMLiteError, match='merge_adapters'): save_model(m, tmp_path)

# MPT and ModernBERT checkpoints fuse q, k, v (ModernBERT also the MLP's gate and up) into one `Wqkv` (`Wi`) that llmlite splits
FUSED = {'mpt': (transformers.MptForCausalLM, lambda: transformers.MptConfig(vocab_size=256, d_model=64, n_heads=4, n_layers=2, max_seq_len=32)),
         'modernbert': (transformers.ModernBertForMaskedLM, lambda: transformers.ModernBertConfig(vocab_size=256, hidden_size=64, intermediate_size=96,
             num_hidden_layers=2, num_attention_heads=4, local_attention=8, max_position_embeddings=64, pad_token_id=0))}

@pytest.fixture(scope='module', params=list(FUSED))
def fused(request, tmp_path_factory):
    "A tiny random MPT or ModernBERT saved by transformers, and a loader for its transformers model."
    cls, cfg = FUSED[request.param]
    d = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    m = cls(cfg())
    with torch.no_grad():
        for p in m.parameters(): p.normal_(0, 0.05)
    m.save_pretrained(d)
    return d, lambda: cls.from_pretrained(d, dtype=torch.float32).eval()

@pytest.mark.parametrize('kind,rslora,targets', [('lora', False, 'all-linear'), ('dora', True, 'all-linear'), ('lora', True, ['wq', 'wv']), ('dora', False, ['wq', 'wv'])])
def test_fused_ours_loads_in_peft(fused, tmp_path, kind, rslora, targets):
    "Separate adapters on q, k, v are saved as one exactly equivalent PEFT adapter on the fused layer, of rank 3r (2r, k's block zero, for q and v only)."
    d, hf = fused
    model = add_adapters(our_model(d).eval(), kind, r=4, alpha=8, targets=targets, rslora=rslora)
    randomize(adapter_params(model))
    save_adapter(model, tmp_path)
    conf = json.loads((tmp_path/'adapter_config.json').read_text())
    want, scale = {'Wqkv': 12 if targets == 'all-linear' else 8, 'Wi': 8}, AdapterConfig(r=4, alpha=8, rslora=rslora).scale
    paths = {k.removeprefix('base_model.model.').rsplit('.lora_', 1)[0] for k in safe_open(tmp_path/'adapter_model.safetensors', 'pt').keys()}
    assert 'Wqkv' in conf['target_modules'] and 'Wqkv' in map(_leaf, paths)
    for p in paths:  # the fused layers' rank and alpha (PEFT's rank_pattern, alpha_pattern where not the global r, lora_alpha) keep the scale
        r, alpha = conf['rank_pattern'].get(p, conf['r']), conf['alpha_pattern'].get(p, conf['lora_alpha'])
        assert r == want.get(_leaf(p), 4) and alpha / (r ** 0.5 if rslora else r) == pytest.approx(scale)
    pm = peft.PeftModel.from_pretrained(hf(), tmp_path).eval()
    x = IDS.clamp_min(1)
    with torch.no_grad():
        ours, theirs = model(x), pm(input_ids=x).logits
        with disable_adapters(model): base = model(x)
    assert (ours - base).abs().max() > 1e-3 and (ours - theirs).abs().max() < 1e-4   # the adapter matters (10x the tolerance at least); they agree

@pytest.mark.parametrize('kind', ['lora', 'dora'])
def test_fused_peft_loads_in_ours(fused, tmp_path, kind):
    "A PEFT adapter on a fused layer loads as one A shared by the parts and B (and DoRA's magnitude) split by rows; saved again, it is fused at its rank."
    d, hf = fused
    pm = peft.get_peft_model(hf(), peft.LoraConfig(r=4, lora_alpha=8, use_dora=kind == 'dora', target_modules='all-linear', init_lora_weights=False))
    randomize(adapter_params(pm), seed=1)
    pm.eval().save_pretrained(tmp_path/'peft')
    model = load_adapter(our_model(d).eval(), tmp_path/'peft')
    x = IDS.clamp_min(1)
    with torch.no_grad(): ours, theirs = model(x), pm(input_ids=x).logits
    assert (ours - theirs).abs().max() < 1e-4
    layers = adapter_layers(model)
    assert {'attn.wq', 'attn.wk', 'attn.wv'} <= {p.split('blocks.0.')[-1] for p in layers}
    assert torch.equal(layers[next(p for p in layers if p.endswith('attn.wq'))].lora_a['default'], layers[next(p for p in layers if p.endswith('attn.wv'))].lora_a['default'])
    save_adapter(model, tmp_path/'again')
    conf = json.loads((tmp_path/'again'/'adapter_config.json').read_text())
    assert conf['r'] == 4 and not conf['rank_pattern'] and not conf['alpha_pattern']
    back = peft.PeftModel.from_pretrained(hf(), tmp_path/'again').eval()
    with torch.no_grad(): assert (back(input_ids=x).logits - theirs).abs().max() < 1e-6

def test_fused_refuses_mixed_parts(tmp_path):
    "Parts of a fused layer with different scales can't be one PEFT layer: saving says so instead of writing a wrong adapter."
    d = tmp_path/'mpt'
    transformers.MptForCausalLM(FUSED['mpt'][1]()).save_pretrained(d)
    model = add_adapters(our_model(d), 'lora', r=4, targets=['wq', 'wk'])
    model.blocks[0].attn.wk.cfgs['default'] = AdapterConfig('lora', r=4, alpha=4)
    with pytest.raises(LLMLiteError, match=r"differs in kind or scale between the parts of transformer\.blocks\.0\.attn\.Wqkv"): save_adapter(model, tmp_path/'a')

def test_peft_rank_and_alpha_pattern(tiny, tmp_path):
    "PEFT's per-layer rank and alpha (`rank_pattern`, `alpha_pattern`) load layer by layer."
    pm = peft.get_peft_model(hf_model(tiny), peft.LoraConfig(r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj', 'down_proj'], init_lora_weights=False,
                                                             rank_pattern={'v_proj': 6, r'layers\.1\.mlp\.down_proj': 2}, alpha_pattern={'q_proj': 3}))
    randomize(adapter_params(pm), seed=2)
    pm.eval().save_pretrained(tmp_path)
    model = load_adapter(our_model(tiny), tmp_path)
    with torch.no_grad(): assert (model(IDS) - pm(IDS).logits).abs().max() < 1e-4
    c = {p: (m.cfgs['default'].r, m.cfgs['default'].alpha) for p, m in adapter_layers(model).items()}
    assert c['blocks.0.attn.wv'] == (6, 8) and c['blocks.1.mlp.down'] == (2, 8) and c['blocks.0.mlp.down'] == (4, 8) and c['blocks.1.attn.wq'] == (4, 3)
    save_adapter(model, tmp_path/'again')
    back = peft.PeftModel.from_pretrained(hf_model(tiny), tmp_path/'again').eval()
    with torch.no_grad(): assert (back(IDS).logits - pm(IDS).logits).abs().max() < 1e-6

@pytest.fixture(scope='module')
def bert_cls(tmp_path_factory):
    "A tiny random BertForSequenceClassification checkpoint (3 labels)."
    d = tmp_path_factory.mktemp('bert_cls')
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(transformers.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=32, num_labels=3)).save_pretrained(d)
    return d

def _cls_inputs():
    x = torch.randint(1, 128, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 12, dtype=torch.long); mask[0, 7:] = 0
    return x, mask

def test_head_is_trained_copy_and_peft_loads_it(bert_cls, tmp_path):
    "add_adapters on a classifier trains its head as a copy (PEFT's modules_to_save); PEFT loads the file with the head; disable gives the base head back."
    m = our_model(bert_cls); x, mask = _cls_inputs()
    with torch.no_grad(): base = m(x, mask.bool())
    add_adapters(m, 'lora', r=4)
    assert 'classifier' not in {_leaf(p) for p in adapter_layers(m)}                 # never LoRA on the head
    assert all(p.requires_grad for p in m.classifier.copies['default'].parameters()) and not any(p.requires_grad for p in m.classifier.base.parameters())
    randomize(adapter_params(m) + list(m.classifier.copies['default'].named_parameters()))
    with torch.no_grad():
        ours = m(x, mask.bool())
        with disable_adapters(m): assert torch.equal(m(x, mask.bool()), base)
    save_adapter(m, tmp_path)
    assert json.loads((tmp_path/'adapter_config.json').read_text())['modules_to_save'] == ['classifier']
    ref = transformers.BertForSequenceClassification.from_pretrained(bert_cls).eval()
    pm = peft.PeftModel.from_pretrained(ref, tmp_path).eval()
    with torch.no_grad(): assert (pm(x, attention_mask=mask).logits - ours).abs().max() < 1e-4
    back = load_adapter(our_model(bert_cls), tmp_path)
    with torch.no_grad(): assert (back(x, mask.bool()) - ours).abs().max() < 1e-6
    merged = merge_adapters(back) and back
    assert not trained_copies(back) and not adapter_layers(back)
    with torch.no_grad(): assert (merged(x, mask.bool()) - ours).abs().max() < 1e-5

def test_peft_head_loads_in_ours(bert_cls, tmp_path):
    "A PEFT SEQ_CLS adapter (LoRA on q/v plus a trained classifier) gives the same logits in llmlite; a head of another shape is refused by name."
    ref = transformers.BertForSequenceClassification.from_pretrained(bert_cls).eval()
    pm = peft.get_peft_model(ref, peft.LoraConfig(task_type='SEQ_CLS', r=4, lora_alpha=8, target_modules=['query', 'value']))
    randomize([(n, p) for n, p in pm.named_parameters() if p.requires_grad])
    pm.save_pretrained(tmp_path)
    x, mask = _cls_inputs()
    m = load_adapter(our_model(bert_cls), tmp_path)
    with torch.no_grad(): assert (m(x, mask.bool()) - pm.eval()(x, attention_mask=mask).logits).abs().max() < 1e-4
    wide = our_model(bert_cls); wide.classifier = nn.Linear(64, 5)
    with pytest.raises(LLMLiteError, match="modules_to_save 'classifier'"): load_adapter(wide, tmp_path)
    assert not adapter_layers(wide) and not trained_copies(wide)                     # nothing half-loaded
