"GGUF reading: a tiny Llama written with gguf.GGUFWriter in several tensor types, and damaged files."
import gguf, numpy as np, pytest, torch, transformers
from llmlite.loading import load
from llmlite.hf import KeyMap, llama_names, gguf_names
from llmlite.core import LLMLiteError

def permute(w, n):
    "llama.cpp's converter's Q/K row permutation (the inverse of `unpermute`)."
    return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

def write_tiny_gguf(path, qtype):
    "A tiny random Llama as GGUF with its 2-D weights stored as `qtype`; returns the HF model holding the stored values."
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    w = gguf.GGUFWriter(str(path), 'llama')
    for k, v in [('block_count', 2), ('context_length', 128), ('embedding_length', 64), ('feed_forward_length', 128),
                 ('attention.head_count', 4), ('attention.head_count_kv', 2)]:
        getattr(w, 'add_uint32')(f'llama.{k}', v)
    w.add_float32('llama.attention.layer_norm_rms_epsilon', 1e-5); w.add_float32('llama.rope.freq_base', 10000.)
    ours, theirs = KeyMap(llama_names), KeyMap(gguf_names)
    for k, p in ref.state_dict().items():
        a = p.numpy()
        if a.ndim == 2:
            q = gguf.quants.quantize(a, qtype)
            p.copy_(torch.from_numpy(gguf.quants.dequantize(q, qtype).reshape(a.shape)))   # the reference holds the stored values
            a = p.numpy()
            if 'q_proj' in k or 'k_proj' in k: a = permute(a, 4 if 'q_proj' in k else 2)
            q = gguf.quants.quantize(np.ascontiguousarray(a), qtype)
            w.add_tensor(theirs(ours.inv(k)), q, raw_shape=q.shape, raw_dtype=qtype)
        else: w.add_tensor(theirs(ours.inv(k)), a)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return ref

@pytest.mark.parametrize('q', ['F32', 'F16', 'Q8_0', 'Q4_0', 'Q4_1'])
def test_tiny_gguf_types(tmp_path, q):
    ref = write_tiny_gguf(tmp_path/'tiny.gguf', gguf.GGMLQuantizationType[q])
    model, tok = load(tmp_path/'tiny.gguf')
    assert tok is None     # a weights-only GGUF has no tokenizer
    x = torch.randint(0, 96, (2, 16))
    with torch.no_grad(): assert (model(x) - ref(x).logits).abs().max() < 1e-4

def test_truncated_gguf(tmp_path, smol_path):
    data = smol_path.read_bytes()
    (tmp_path/'cut.gguf').write_bytes(data[:len(data) // 2])
    with pytest.raises(LLMLiteError, match=r'cut.gguf: truncated: tensor'): load(tmp_path/'cut.gguf')
    (tmp_path/'head.gguf').write_bytes(data[:100_000])
    with pytest.raises(LLMLiteError, match=r'head.gguf: truncated header'): load(tmp_path/'head.gguf')
    (tmp_path/'junk.gguf').write_bytes(b'PK\x03\x04' + data[4:1000])
    with pytest.raises(LLMLiteError, match=r'junk.gguf: not a GGUF file'): load(tmp_path/'junk.gguf')

def test_unknown_gguf_arch(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path/'x.gguf'), 'rwkv6')
    w.add_tensor('token_embd.weight', np.zeros((4, 8), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(LLMLiteError, match=r"x.gguf: GGUF general.architecture 'rwkv6' is not supported"): load(tmp_path/'x.gguf')
