"""GGUF out, checked by reading it back: the `gguf` package's own reader (llama.cpp's Python reader) for the layout, and our loader for the model.
Stands in for llama.cpp in CI; `bench/gguf_out.py` runs the files in llama.cpp itself."""
import typing
from dataclasses import fields
import gguf, numpy as np, pytest, torch
from llmlite.core import seed_everything
from llmlite.models import Config, Decoder
from llmlite.adapters import add_adapters, adapter_layers, unload_adapters
from llmlite.hf import unpermute
from llmlite.loading import load_gguf
from llmlite.tokenizer import Tokenizer
from llmlite.export import save_gguf, save_gguf_lora, qtypes
from llmlite.cli import Export, default_model, main

def logits(m, x):
    with torch.no_grad(): o = m(x)
    return getattr(o, 'logits', o)

def rounded(m, dt=torch.float16):
    "A copy of `m` with every matrix rounded to `dt` (what a GGUF of that type holds; vectors stay fp32)."
    r = Decoder(m.cfg).eval()
    r.load_state_dict({k: v.to(dt).float() if v.dim() > 1 else v for k, v in m.state_dict().items()})
    return r

def reader_tensors(path) -> dict:
    "Every tensor of a GGUF file as float32 in (rows, cols) order, read and dequantized by the `gguf` package alone."
    r = gguf.GGUFReader(path)
    return {t.name: torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)) for t in r.tensors}

@pytest.fixture(scope='module')
def smol():
    return load_gguf(default_model())

@pytest.fixture(scope='module')
def tiny(smol):
    seed_everything(0)
    cfg = Config(vocab_size=smol[0].cfg.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden=128, max_seq_len=64)
    return Decoder(cfg).eval(), smol[1]

@pytest.mark.parametrize('arch', ['llama', 'qwen2'])
def test_tiny_round_trip(tiny, tmp_path, arch):
    "f32 reloads with equal logits, f16 with the logits of the f16-rounded model, q8_0 close; the gguf reader sees llama.cpp's layout."
    m, tok = tiny
    if arch == 'qwen2':
        seed_everything(1)
        m = Decoder(Config(arch='qwen2', vocab_size=m.cfg.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden=128, qkv_bias=True, tie_embeddings=True)).eval()
        with torch.no_grad():
            for n, p in m.named_parameters():
                if n.endswith('bias'): p.normal_()
    x = torch.randint(0, m.cfg.vocab_size, (2, 16))
    want = logits(m, x)
    for q in ('f32', 'f16', 'q8_0'):
        p = save_gguf(m, tok, tmp_path/f'{q}.gguf', q)
        got = logits(load_gguf(p)[0], x)
        if q == 'f32': assert torch.equal(got, want)
        elif q == 'f16': assert torch.equal(got, logits(rounded(m), x))
        else: assert ((got - want).norm() / want.norm()).item() < 0.01
    r, ts = gguf.GGUFReader(tmp_path/'q8_0.gguf'), reader_tensors(tmp_path/'f32.gguf')
    assert r.fields['general.architecture'].contents() == arch and r.fields['general.file_type'].contents() == 7
    assert {t.name: t.tensor_type.name for t in r.tensors}['blk.1.ffn_down.weight'] == 'Q8_0'
    assert r.fields[f'{arch}.attention.head_count_kv'].contents() == 2 and r.fields[f'{arch}.rope.dimension_count'].contents() == 16
    wq = ts['blk.0.attn_q.weight']
    assert torch.equal(unpermute(wq, 4) if arch == 'llama' else wq, m.blocks[0].attn.wq.weight)
    assert ('output.weight' in ts) == (not m.cfg.tie_embeddings)
    if arch == 'qwen2': assert torch.equal(ts['blk.0.attn_k.bias'], m.blocks[0].attn.wk.bias)

def test_smollm2(smol, tmp_path):
    "SmolLM2-135M-Instruct: f32 and f16 exports reload with equal logits (f16: those of its rounded weights); tokenizer and chat template as the original file's."
    m, tok = smol
    x = torch.tensor([tok.encode_chat([dict(role='user', content='Rewrite Nov 10th, 1966 as an ISO 8601 date.')])])
    want = logits(m, x)
    p = save_gguf(m, tok, tmp_path/'f32.gguf', 'f32')
    m2, t2 = load_gguf(p)
    assert torch.equal(logits(m2, x), want)
    del m2
    orig, new = gguf.GGUFReader(default_model()), gguf.GGUFReader(p)
    for k in ('tokens', 'token_type', 'merges', 'bos_token_id', 'eos_token_id', 'unknown_token_id', 'padding_token_id', 'add_bos_token'):
        assert new.fields[f'tokenizer.ggml.{k}'].contents() == orig.fields[f'tokenizer.ggml.{k}'].contents(), k
    assert new.fields['tokenizer.chat_template'].contents() == orig.fields['tokenizer.chat_template'].contents()
    msgs = [dict(role='system', content='Be brief.'), dict(role='user', content='Naïve café: 12 × 34 = 408? <|im_end|> 🙂')]
    for s in ['Hello world', "  leading spaces\tand tabs\n\nnew lines", 'Ünïcödé 中文 日本語 1234567', '<|im_start|>user\nhi<|im_end|>']:
        assert t2.encode(s) == tok.encode(s) and t2.decode(t2.encode(s), skip_special=False) == tok.decode(tok.encode(s), skip_special=False)
    assert t2.apply_chat_template(msgs) == tok.apply_chat_template(msgs) and t2.encode_chat(msgs) == tok.encode_chat(msgs)
    assert (t2.bos_id, t2.eos_id, t2.pad_id, t2.stop_ids) == (tok.bos_id, tok.eos_id, tok.pad_id, tok.stop_ids)
    p = save_gguf(m, tok, tmp_path/'f16.gguf', 'f16')
    assert torch.equal(logits(load_gguf(p)[0], x), logits(rounded(m), x))

def test_cli_q8_0(smol, tmp_path, capsys):
    "`llmlite export --gguf PATH --qtype q8_0` of SmolLM2: the logits stay close and the greedy next tokens agree."
    m, tok = smol
    main(['export', '--gguf', str(tmp_path/'q8.gguf'), '--qtype', 'q8_0'])
    assert f"wrote {tmp_path/'q8.gguf'}" in capsys.readouterr().out
    x = torch.tensor([tok.encode('The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is')])
    want, got = logits(m, x), logits(load_gguf(tmp_path/'q8.gguf')[0], x)
    rel, agree = ((got - want).norm() / want.norm()).item(), (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    print(f"q8_0: relative logit error {rel:.4f}, top-1 agreement {agree:.1%} over {x.shape[1]} positions")
    assert rel < 0.05 and agree > 0.8

def test_lora_scales(tiny, tmp_path):
    "Each layer's update in the LoRA file, scaled as llama.cpp scales it (alpha / rank of B), is that layer's s·B·A, Q/K rows permuted as the base's."
    m, tok = tiny
    add_adapters(m, 'lora', r=4, alpha=8, targets=['wq', 'wv'], rslora=True, name='a')
    add_adapters(m, 'lora', r=2, alpha=3, targets=['wk', 'up'], name='a2')
    for lyr in adapter_layers(m).values():
        for d in (lyr.lora_b[k] for k in lyr.lora_b): torch.nn.init.normal_(d)
    try:
        for name, targets in (('a', ('wq', 'wv')), ('a2', ('wk', 'up'))):
            p = save_gguf_lora(m, tmp_path/f'{name}.gguf', name=name)
            r = gguf.GGUFReader(p)
            alpha, ts = r.fields['adapter.lora.alpha'].contents(), reader_tensors(p)
            assert len(ts) == 2 * 2 * len(targets)
            for i, blk in enumerate(m.blocks):
                for t in targets:
                    lyr = blk.attn.get_submodule(t) if t.startswith('w') else blk.mlp.get_submodule(t)
                    gn = {'wq': 'attn_q', 'wk': 'attn_k', 'wv': 'attn_v', 'up': 'ffn_up'}[t]
                    a, b = ts[f'blk.{i}.{gn}.weight.lora_a'], ts[f'blk.{i}.{gn}.weight.lora_b']
                    upd = alpha / b.shape[1] * b @ a
                    if t in ('wq', 'wk'): upd = unpermute(upd, m.cfg.n_heads if t == 'wq' else m.cfg.n_kv_heads)
                    c = lyr.cfgs[name]
                    torch.testing.assert_close(upd, c.scale * lyr.lora_b[name].detach() @ lyr.lora_a[name].detach(), rtol=1e-5, atol=1e-6)
    finally: unload_adapters(m)

def test_export_qtypes_match():
    "The CLI's choice list is save_gguf's."
    assert typing.get_args(next(f.type for f in fields(Export) if f.name == 'qtype')) == tuple(qtypes)
