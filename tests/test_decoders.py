"Parity of llmlite's decoders with transformers, on tiny random checkpoints and on the real SmolLM2-135M-Instruct GGUF."
import json, subprocess, sys
import pytest, torch, transformers
from llmlite.loading import load, save_model
from llmlite.generate import generate_ids, generate, stream, make_prefix, save_prefix, load_prefix

tiny = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)

@pytest.mark.parametrize('cls,kw', [
    (transformers.LlamaConfig, {}),
    (transformers.LlamaConfig, dict(num_key_value_heads=4, tie_word_embeddings=True, head_dim=32)),
    (transformers.MistralConfig, dict(sliding_window=6)),
    (transformers.Qwen2Config, dict(use_sliding_window=True, sliding_window=5, max_window_layers=1)),
    (transformers.Qwen2Config, {})])
def test_tiny_parity(tmp_path, cls, kw):
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(cls(**{**tiny, **kw}), attn_implementation='eager').eval()
    for p in ref.parameters(): p.data.normal_(0, 0.05)   # non-zero biases too
    ref.save_pretrained(tmp_path)
    model, _ = load(tmp_path)
    x = torch.randint(0, 256, (2, 24))
    with torch.no_grad(): a, b = model(x), ref(x).logits
    assert (a - b).abs().max() < 1e-4
    save_model(model, tmp_path/'out')
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path/'out').eval()
    with torch.no_grad(): assert (back(x).logits - a).abs().max() < 1e-5

def test_sharded_round_trip(tmp_path):
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**tiny)).eval()
    ref.save_pretrained(tmp_path, max_shard_size='100KB')
    assert (tmp_path/'model.safetensors.index.json').exists()
    model, _ = load(tmp_path)
    save_model(model, tmp_path/'out', max_shard=100_000)
    assert json.loads((tmp_path/'out'/'model.safetensors.index.json').read_text())['weight_map']
    back, _ = load(tmp_path/'out')
    x = torch.randint(0, 256, (1, 10))
    with torch.no_grad(): assert torch.equal(back(x), model(x)) and (model(x) - ref(x).logits).abs().max() < 1e-4

def test_hub_id_from_cache(tmp_path, monkeypatch):
    "A hub id resolves through the local Hugging Face cache, with no network."
    torch.manual_seed(0)
    snap = tmp_path/'hub'/'models--acme--tiny-llama'/'snapshots'/'abc123'
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**tiny)).save_pretrained(snap)
    (tmp_path/'hub'/'models--acme--tiny-llama'/'refs').mkdir()
    (tmp_path/'hub'/'models--acme--tiny-llama'/'refs'/'main').write_text('abc123')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path/'hub'))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, 'HF_HUB_CACHE', str(tmp_path/'hub'))
    model, tok = load('acme/tiny-llama')
    assert model.cfg.n_layers == 2 and tok is None

def test_smollm2_logits(smol, smol_ref):
    model, tok = smol
    ref, rtok = smol_ref
    ids = rtok('The capital of France is Paris. The capital of Italy is')['input_ids']
    assert tok.encode('The capital of France is Paris. The capital of Italy is') == ids
    x = torch.tensor([ids])
    with torch.no_grad(): a, b = model(x), ref(x).logits
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-3

def test_smollm2_greedy_chat(smol, smol_ref):
    model, tok = smol
    ref, rtok = smol_ref
    msgs = [dict(role='user', content='What is the tallest mountain in the world? Answer in two sentences.')]
    ids = tok.encode_chat(msgs)
    rids = rtok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == list(rids)
    ours = torch.stack(list(generate_ids(model, [ids], 30))).flatten().tolist()
    with torch.no_grad(): theirs = ref.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False, min_new_tokens=30)[0, len(ids):].tolist()
    n = next((i + 1 for i, t in enumerate(ours) if t in tok.stop_ids), 30)
    assert n >= 10 and ours[:n] == theirs[:n]

def test_prefix_cache_round_trip(smol, tmp_path):
    model, tok = smol
    docs = [dict(role='system', content='llmlite is a small library. `load(src)` returns (model, tok). `generate(model, tok, prompt)` returns text. '
                 '`save_adapter(model, dir)` writes a PEFT adapter.')]
    p = make_prefix(model, tok, docs)
    save_prefix(p, tmp_path/'docs.safetensors', model)
    q = load_prefix(tmp_path/'docs.safetensors', model)
    assert q.ids == p.ids and q.state.keys() == p.state.keys() and all(torch.equal(q.state[n], t) for n, t in p.state.items())
    chat = docs + [dict(role='user', content='Which function writes an adapter?')]
    with_cache = generate(model, tok, chat, max_new_tokens=20, prefix=q)
    rest = tok.encode(tok.apply_chat_template(chat)[len(q.text):], special=False)
    recomputed = tok.decode(torch.stack(list(generate_ids(model, [q.ids + rest], 20))).flatten().tolist())
    assert with_cache and recomputed.startswith(with_cache)

def test_cli_generate(smol_path):
    r = subprocess.run([sys.executable, '-c', 'from llmlite.cli import main; main()', 'generate', '--prompt', 'Say hello.', '--max-new-tokens', '8'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    r = subprocess.run([sys.executable, '-c', 'from llmlite.cli import main; main()', 'generate', '--model', '/nonexistent/x.gguf'], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and '/nonexistent/x.gguf' in r.stderr

def test_stream_batch_and_stops(smol):
    model, tok = smol
    a = [dict(role='user', content='List three fruits, one per line.')]
    b = 'The history of the bicycle'
    full = generate(model, tok, a, max_new_tokens=24)
    assert ''.join(stream(model, tok, a, max_new_tokens=24)) == full
    assert generate(model, tok, [a, b], max_new_tokens=24) == [full, generate(model, tok, b, max_new_tokens=24)]
    cut = full.split('\n')[0]
    assert generate(model, tok, a, max_new_tokens=24, stop='\n') == cut
    assert ''.join(stream(model, tok, a, max_new_tokens=24, stop='\n')) == cut
    s1 = generate(model, tok, b, max_new_tokens=20, temperature=0.8, top_p=0.9, seed=1)
    assert s1 == generate(model, tok, b, max_new_tokens=20, temperature=0.8, top_p=0.9, seed=1)
