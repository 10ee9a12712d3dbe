"KV-cache compression on the real SmolLM2-135M-Instruct: exact at a full budget, compressed prefixes continue exactly, bad settings refused."
import json, subprocess, sys
import pytest, torch
from dataclasses import asdict
from llmlite.core import LLMLiteError
from llmlite.cache import CacheConfig, STRATEGIES
from llmlite.formats import SafetensorsFile
from llmlite.generate import generate, generate_ids, make_prefix, save_prefix, load_prefix

DOCS = ('llmlite is a small library for fine-tuning and running language models on the hardware people have. '
        '`load(src)` returns (model, tok). `generate(model, tok, prompt)` returns text. `save_adapter(model, dir)` writes a PEFT adapter. '
        '`quantize(model, "nf4")` stores frozen weights in 4 bits. `shard(model)` applies FSDP2. ') * 3

@torch.no_grad()
def step_logits(model, ids, n, config=None):
    kv = model.new_cache(1, len(ids) + n, config=config)
    out = [model(torch.tensor([ids]), cache=kv)[:, -1]]
    for _ in range(n): out.append(model(out[-1].argmax(-1, keepdim=True), cache=kv)[:, -1])
    return torch.stack(out)

def test_full_budget_16_bits_is_the_plain_cache(smol):
    model, tok = smol
    ids = tok.encode(DOCS + 'Which function writes an adapter?')
    ref = step_logits(model, ids, 8)
    for s in STRATEGIES: assert torch.equal(step_logits(model, ids, 8, CacheConfig(s, 1.0)), ref), s
    assert generate(model, tok, DOCS, 12, cache=CacheConfig('heavy', 1.0)) == generate(model, tok, DOCS, 12)

def test_compressed_prefix_continues_like_the_one_in_memory(smol, tmp_path):
    model, tok = smol
    docs = [dict(role='system', content=DOCS)]
    chat = docs + [dict(role='user', content='Which function writes an adapter?')]
    for cfg in (CacheConfig('heavy', .5, bits=4), CacheConfig('hybrid', .25, bits=8, shape='pyramid'), CacheConfig('window', 64, bits=2)):
        p = make_prefix(model, tok, docs, cache=cfg)
        f = save_prefix(p, tmp_path/'docs.safetensors', model)
        assert json.loads(SafetensorsFile(f).meta['cache']) == asdict(cfg)       # the file records strategy and settings
        q = load_prefix(f, model)
        assert q.cache == cfg and q.state.keys() == p.state.keys() and all(torch.equal(q.state[n], t) for n, t in p.state.items())
        assert generate(model, tok, chat, 16, prefix=q) == generate(model, tok, chat, 16, prefix=p)
    assert p.state['k.0'].dtype == torch.uint8 and p.state['pos.0'].shape[2] == 64
    with pytest.raises(LLMLiteError, match='prefix cache made with cache settings'): load_prefix(f, model, cache=CacheConfig('window', 64, bits=4))
    with pytest.raises(LLMLiteError, match='the prefix cache was made with'): generate(model, tok, chat, 4, prefix=q, cache=CacheConfig('heavy', .5))

def test_bad_cache_settings(smol):
    model, tok = smol
    with pytest.raises(LLMLiteError, match="over the model's context of 8192"): generate(model, tok, 'Hi', 4, cache=CacheConfig('heavy', 9000))
    with pytest.raises(LLMLiteError, match='must be > 0'): CacheConfig('heavy', -3)
    with pytest.raises(LLMLiteError, match="strategy 'snap' is unknown"): CacheConfig('snap', .5)

def test_cli_cache_flags(smol):
    model, tok = smol
    cli = [sys.executable, '-c', 'from llmlite.cli import main; main()', 'generate', '--prompt', 'Name three colours.', '--max-new-tokens', '12']
    r = subprocess.run(cli + ['--cache-strategy', 'heavy', '--cache-budget', '0.5', '--cache-bits', '4'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == generate(model, tok, [dict(role='user', content='Name three colours.')], 12, cache=CacheConfig('heavy', .5, bits=4)).strip()
    r = subprocess.run(cli + ['--cache-budget', '0'], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and 'cache_budget=0.0: must be > 0' in r.stderr
