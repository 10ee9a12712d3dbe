"T5 (v1.0 and v1.1) parity with transformers' T5ForConditionalGeneration on tiny random checkpoints."
import json
import pytest, torch, transformers
from transformers.models.t5.modeling_t5 import T5Attention
from llmlite.core import LLMLiteError
from llmlite.attention import rel_buckets
from llmlite.loading import load, save_model
from llmlite.seq2seq import EncoderDecoder
from llmlite.generate import generate_seq2seq

@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('nb,md', [(32, 128), (8, 16)])
def test_rel_buckets(bidirectional, nb, md):
    r = torch.arange(-300, 301)[:, None]
    assert torch.equal(rel_buckets(r, bidirectional, nb, md), T5Attention._relative_position_bucket(r, bidirectional, nb, md))

def _t5(tmp_path, **kw):
    hc = transformers.T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                               relative_attention_num_buckets=8, relative_attention_max_distance=16, **{'num_decoder_layers': 3, **kw})
    torch.manual_seed(0)
    ref = transformers.T5ForConditionalGeneration(hc).eval()
    torch.manual_seed(1)
    for p in ref.parameters(): p.data.normal_(0, 0.1)
    ref.save_pretrained(tmp_path/'t5')
    return ref, load(tmp_path/'t5')[0]

@pytest.mark.parametrize('kw', [dict(feed_forward_proj='relu'), dict(feed_forward_proj='gated-gelu')])
def test_t5_parity(tmp_path, kw):
    ref, model = _t5(tmp_path, **kw)
    assert type(model) is EncoderDecoder and model.cfg.gated == kw['feed_forward_proj'].startswith('gated')
    x, y = torch.randint(2, 128, (3, 20)), torch.randint(2, 128, (3, 9))
    mask = torch.ones(3, 20, dtype=torch.long); mask[0, 12:] = 0; mask[2, 4:] = 0
    with torch.no_grad():
        a = model(x, y, mask.bool())
        b = ref(input_ids=x, attention_mask=mask, decoder_input_ids=y).logits
        assert (a - b).abs().max() < 1e-4
        enc = model.encode(x, mask.bool()); c = model.new_cache(3, 9)   # cached encoder output + decoder KV cache
        steps = [model.decode(y[:, :3], enc, mask.bool(), cache=c)] + [model.decode(y[:, i:i + 1], enc, mask.bool(), cache=c) for i in range(3, 9)]
        assert (torch.cat(steps, 1) - a).abs().max() < 1e-4
    save_model(model, tmp_path/'out')
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path/'out').eval()
    with torch.no_grad(): assert (back(input_ids=x, attention_mask=mask, decoder_input_ids=y).logits - a).abs().max() < 1e-5

def test_t5_greedy_matches_transformers(tmp_path):
    ref, model = _t5(tmp_path, feed_forward_proj='gated-gelu', num_decoder_layers=2)   # transformers' generate cache assumes equal depths
    x = torch.randint(2, 128, (2, 15)); mask = torch.ones(2, 15, dtype=torch.long); mask[1, 10:] = 0
    want = ref.generate(input_ids=x, attention_mask=mask, max_new_tokens=12, do_sample=False, num_beams=1, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)[:, 1:]
    got = generate_seq2seq(model, x, mask.bool(), max_new_tokens=12)
    assert torch.equal(got, want[:, :got.shape[1]]) and got.shape[1] == want.shape[1]

def test_t5_bad_input(tmp_path):
    _, model = _t5(tmp_path)
    with pytest.raises(LLMLiteError, match='token id 500 out of range'): model(torch.tensor([[500]]), torch.tensor([[0]]))
    d = json.loads((tmp_path/'t5'/'config.json').read_text()); d['feed_forward_proj'] = 'gated-swishy'
    (tmp_path/'t5'/'config.json').write_text(json.dumps(d))
    with pytest.raises(LLMLiteError, match="feed_forward_proj 'gated-swishy'"): load(tmp_path/'t5')
