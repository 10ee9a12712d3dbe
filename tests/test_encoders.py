"MPT (ALiBi) and BERT-family (BERT, ModernBERT, all heads) parity with transformers on tiny random checkpoints, and the real all-MiniLM-L6-v2."
import json, math
import pytest, torch, transformers
from llmlite.core import LLMLiteError
from llmlite.attention import alibi_slopes
from llmlite.loading import load, save_model
from llmlite.encoders import Encoder, MaskedLM, SeqClassifier, TokenClassifier, embed

def _randomize(m, std=0.05):
    "Non-trivial values everywhere (biases and norm gains included)."
    torch.manual_seed(1)
    for p in m.parameters(): p.data.normal_(0, std)
    return m

@pytest.mark.parametrize('n', [8, 12, 24])
def test_alibi_slopes(n):
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor
    p = 2 ** math.ceil(math.log2(n))
    pub = [2 ** (-8 * j / p) for j in range(1, p + 1)]          # the published geometric sequence for n' heads
    want = pub if p == n else (pub[1::2] + pub[::2])[:n]
    assert torch.allclose(alibi_slopes(n), torch.tensor(want))
    ref = build_mpt_alibi_tensor(n, 5)[:, 0, :]                  # (H, T): slope * (k - (T-1))
    assert torch.allclose(ref[:, 0] / -4, alibi_slopes(n))

def _mpt(tmp_path, **kw):
    hc = transformers.MptConfig(vocab_size=256, d_model=64, n_heads=4, n_layers=2, max_seq_len=32, **kw)
    torch.manual_seed(0)
    ref = _randomize(transformers.MptForCausalLM(hc)).eval()
    ref.save_pretrained(tmp_path/'mpt')
    return ref, load(tmp_path/'mpt')[0]

def test_mpt_parity_padded_and_round_trip(tmp_path):
    ref, model = _mpt(tmp_path)
    assert model.cfg.pos == 'alibi' and not hasattr(model.blocks[0].mlp, 'gate')
    x = torch.randint(0, 256, (3, 24))
    mask = torch.ones(3, 24, dtype=torch.long); mask[0, :7] = 0; mask[2, :1] = 0   # left padding
    with torch.no_grad():
        assert (model(x) - ref(x).logits).abs().max() < 1e-4
        a, b = model(x, valid=mask.bool()), ref(x, attention_mask=mask).logits
    assert (a - b)[mask.bool()].abs().max() < 1e-4
    save_model(model, tmp_path/'out')
    assert 'transformer.blocks.0.attn.Wqkv.weight' in json.dumps(list(__import__('safetensors').safe_open(tmp_path/'out'/'model.safetensors', 'pt').keys()))
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path/'out').eval()
    with torch.no_grad(): assert (back(x).logits - model(x)).abs().max() < 1e-5

def test_mpt_cached_generation_past_context(tmp_path):
    "ALiBi has no table: with the KV cache, 2x the trained context (32) decodes exactly like the full computation."
    ref, model = _mpt(tmp_path)
    x = torch.randint(0, 256, (2, 64))
    mask = torch.ones(2, 64, dtype=torch.bool); mask[1, :5] = False
    with torch.no_grad():
        full = model(x, valid=mask)
        c = model.new_cache(2, 64)
        steps = [model(x[:, :20], cache=c, valid=mask[:, :20])] + [model(x[:, i:i + 1], cache=c) for i in range(20, 64)]
    assert (torch.cat(steps, 1) - full)[mask].abs().max() < 1e-4
    with torch.no_grad():                     # within the trained context the reference agrees
        assert (full[:, :32] - ref(x[:, :32], attention_mask=mask[:, :32].long()).logits)[mask[:, :32]].abs().max() < 1e-4
        c, toks = model.new_cache(1, 70), []  # greedy decoding from a 6-token prompt to 66 tokens
        logits = model(x[:1, :6], cache=c, last=True)
        for _ in range(60):
            toks.append(logits[:, -1].argmax(-1)); logits = model(toks[-1][:, None], cache=c, last=True)
    seq = torch.cat([x[:1, :6], torch.stack(toks, 1)], 1)
    with torch.no_grad(): assert torch.equal(model(seq)[:, 5:-1].argmax(-1), seq[:, 6:])

def test_mpt_bad_config(tmp_path):
    ref, _ = _mpt(tmp_path)
    d = json.loads((tmp_path/'mpt'/'config.json').read_text())
    d['attn_config'] = {**d['attn_config'], 'alibi': False}
    (tmp_path/'mpt'/'config.json').write_text(json.dumps(d))
    with pytest.raises(LLMLiteError, match='attn_config.alibi is false'): load(tmp_path/'mpt')

bert_tiny = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=32)

@pytest.mark.parametrize('cls,ours,out', [
    (transformers.BertModel, Encoder, lambda o: o.last_hidden_state),
    (transformers.BertForMaskedLM, MaskedLM, lambda o: o.logits),
    (transformers.BertForSequenceClassification, SeqClassifier, lambda o: o.logits),
    (transformers.BertForTokenClassification, TokenClassifier, lambda o: o.logits)])
def test_bert_parity_padded(tmp_path, cls, ours, out):
    hc = transformers.BertConfig(**bert_tiny, num_labels=3, hidden_act='gelu')
    torch.manual_seed(0)
    ref = _randomize(cls(hc)).eval()
    ref.save_pretrained(tmp_path)
    model, _ = load(tmp_path)
    assert type(model) is ours
    x = torch.randint(1, 128, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long); mask[0, 12:] = 0; mask[2, 3:] = 0
    types = torch.zeros_like(x); types[:, 8:] = 1
    with torch.no_grad(): a, b = model(x, mask.bool(), types), out(ref(x, attention_mask=mask, token_type_ids=types))
    if a.dim() == 3: a, b = a[mask.bool()], b[mask.bool()]
    assert (a - b).abs().max() < 1e-4
    save_model(model, tmp_path/'out')
    back = getattr(transformers, ours.hf_class).from_pretrained(tmp_path/'out').eval()
    with torch.no_grad(): assert (out(back(x, attention_mask=mask, token_type_ids=types)) - model(x, mask.bool(), types)).abs().max() < 1e-5

def test_bert_bad_input(tmp_path):
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**bert_tiny)).save_pretrained(tmp_path)
    model, _ = load(tmp_path)
    x = torch.randint(1, 128, (2, 10))
    with pytest.raises(LLMLiteError, match='token type id 5 out of range: the model has 2 token types'): model(x, types=torch.full_like(x, 5))
    with pytest.raises(LLMLiteError, match='33 tokens exceed the position table of 32 rows'): model(torch.ones(1, 33, dtype=torch.long))
    with pytest.raises(LLMLiteError, match="task='nope'"): load(tmp_path, task='nope')

def test_minilm_sentence_embeddings(minilm_dir):
    model, _ = load(minilm_dir)
    assert type(model) is Encoder and model.cfg.n_layers == 6
    texts = ["A man is eating food.", "The weather is lovely today, isn't it?", "hi", "A man eats something."]
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    b = tok(texts, padding=True, return_tensors='pt')
    ref = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        h = ref(**b).last_hidden_state; w = b['attention_mask'][..., None].float()
        want = torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=-1)
    got = embed(model, b['input_ids'], b['attention_mask'].bool(), b['token_type_ids'])
    assert (got - want).abs().max() < 1e-4
    sims = got @ got.T
    assert sims[0, 3] > sims[0, 1] and sims[0, 3] > 0.5      # paraphrases are closest
    cls = embed(model, b['input_ids'], b['attention_mask'].bool(), how='cls')
    assert torch.allclose(cls.norm(dim=-1), torch.ones(4), atol=1e-5)

mb_tiny = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, local_attention=8,
               max_position_embeddings=64, pad_token_id=0)

@pytest.mark.parametrize('cls,ours,pooling', [(transformers.ModernBertModel, Encoder, 'cls'), (transformers.ModernBertForMaskedLM, MaskedLM, 'cls'),
    (transformers.ModernBertForSequenceClassification, SeqClassifier, 'cls'), (transformers.ModernBertForSequenceClassification, SeqClassifier, 'mean'),
    (transformers.ModernBertForTokenClassification, TokenClassifier, 'mean')])
def test_modernbert_parity_padded(tmp_path, cls, ours, pooling):
    hc = transformers.ModernBertConfig(**mb_tiny, num_labels=3, classifier_pooling=pooling)
    torch.manual_seed(0)
    ref = _randomize(cls(hc)).eval()
    ref.save_pretrained(tmp_path)
    model, _ = load(tmp_path)
    assert type(model) is ours and model.cfg.window_layers == [1, 2] and model.cfg.pooling == pooling
    x = torch.randint(1, 128, (3, 30))                      # longer than the window
    mask = torch.ones(3, 30, dtype=torch.long); mask[0, 20:] = 0; mask[2, 5:] = 0
    out = lambda o: o.last_hidden_state if cls is transformers.ModernBertModel else o.logits
    real = lambda t: t if t.dim() == 2 else t[mask.bool()]  # sequence logits are (B, n_labels): every row counts
    with torch.no_grad(): a, b = model(x, mask.bool()), out(ref(x, attention_mask=mask))
    assert a.shape == b.shape and (real(a) - real(b)).abs().max() < 1e-4
    save_model(model, tmp_path/'out')
    back = cls.from_pretrained(tmp_path/'out').eval()
    with torch.no_grad(): assert (real(out(back(x, attention_mask=mask))) - real(a)).abs().max() < 1e-5

@pytest.mark.parametrize('task,ours', [('cls', SeqClassifier), ('tokens', TokenClassifier), ('base', Encoder)])
def test_modernbert_new_task_head(tmp_path, task, ours):
    "A base checkpoint loaded for a task gets a fresh head on the same body; a classifier checkpoint loads as its body alone."
    torch.manual_seed(0)
    src = transformers.ModernBertModel if task != 'base' else transformers.ModernBertForSequenceClassification
    ref = _randomize(src(transformers.ModernBertConfig(**mb_tiny, num_labels=4))).eval()
    ref.save_pretrained(tmp_path)
    model, _ = load(tmp_path, task=task)
    assert type(model) is ours and not any(p.is_meta for p in model.parameters())
    x = torch.randint(1, 128, (2, 12))
    with torch.no_grad():
        h = ref.model(x).last_hidden_state if task == 'base' else ref(x).last_hidden_state
        assert (getattr(model, 'body', model)(x) - h).abs().max() < 1e-4
        if task == 'base': return
        y = model(x)
    assert y.shape[-1] == 4 and torch.isfinite(y).all()
    assert torch.equal(model.transform.norm.weight, torch.ones(64))      # freshly initialised, not random checkpoint values
