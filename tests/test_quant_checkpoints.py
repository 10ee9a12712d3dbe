"Quantized checkpoints: llmlite's NF4 export loads in transformers + bitsandbytes, and transformers' bnb-4bit checkpoints load in llmlite."
import json, warnings
import pytest, torch, transformers
from safetensors.torch import load_file, save_file
from llmlite.loading import load, save_model
from llmlite.core import LLMLiteError
from llmlite.quant import QLinear

warnings.filterwarnings('ignore')
tiny = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)

@pytest.fixture(scope='module')
def dense(tmp_path_factory):
    d = tmp_path_factory.mktemp('dense')
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**tiny)).save_pretrained(d)
    return d

def rel(a, b): return ((a - b).abs().max() / b.abs().max()).item()

def exact(m):
    "Turn off bitsandbytes' CPU inference repacking (on AVX512-BF16 CPUs it computes in bf16), to compare formats, not roundings."
    for l in m.modules():
        if hasattr(l, 'support_avx512bf16_for_cpu'): l.support_avx512bf16_for_cpu = False
    return m

def bnb_config():
    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True,
                                           bnb_4bit_compute_dtype=torch.float32)

def test_nf4_export_loads_in_transformers(dense, tmp_path):
    model, _ = load(dense, quant='nf4')
    save_model(model, tmp_path)
    qc = json.loads((tmp_path/'config.json').read_text())['quantization_config']
    assert qc['quant_method'] == 'bitsandbytes' and qc['bnb_4bit_quant_type'] == 'nf4'
    ref = exact(transformers.AutoModelForCausalLM.from_pretrained(tmp_path, device_map='cpu').eval())
    assert type(ref.model.layers[0].self_attn.q_proj).__name__ == 'Linear4bit'
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad(): assert rel(model(x), ref(x).logits) < 1e-3

def test_transformers_bnb_checkpoint_loads(dense, tmp_path):
    ref = exact(transformers.AutoModelForCausalLM.from_pretrained(dense, quantization_config=bnb_config(), device_map='cpu').eval())
    ref.save_pretrained(tmp_path)
    model, _ = load(tmp_path)
    assert isinstance(model.blocks[0].mlp.up, QLinear)
    sd = load_file(tmp_path/'model.safetensors')
    assert torch.equal(model.blocks[0].mlp.up.weight.qdata, sd['model.layers.0.mlp.up_proj.weight'])   # bytes taken as stored
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad(): assert rel(model(x), ref(x).logits) < 1e-3

def test_bnb_checkpoint_missing_stats(dense, tmp_path):
    ref = transformers.AutoModelForCausalLM.from_pretrained(dense, quantization_config=bnb_config(), device_map='cpu')
    ref.save_pretrained(tmp_path)
    sd = load_file(tmp_path/'model.safetensors')
    del sd['model.layers.1.self_attn.v_proj.weight.absmax']
    save_file(sd, tmp_path/'model.safetensors')
    with pytest.raises(LLMLiteError, match=r"blocks\.1\.attn\.wv\.weight: missing tensor 'weight.absmax'"): load(tmp_path)

def test_hqq_round_trip(dense, tmp_path):
    model, _ = load(dense, quant='hqq', bits=3)
    save_model(model, tmp_path)
    assert json.loads((tmp_path/'config.json').read_text())['quantization_config']['quant_method'] == 'llmlite'
    back, _ = load(tmp_path)
    x = torch.randint(0, 256, (1, 12))
    with torch.no_grad(): assert torch.equal(back(x), model(x))

def test_quantize_on_load_gguf(smol_path):
    model, tok = load(smol_path, quant='nf4')
    assert sum(isinstance(m, QLinear) for m in model.modules()) == 30 * 7
    from llmlite.generate import generate
    out = generate(model, tok, [dict(role='user', content='What is the capital of France?')], max_new_tokens=12)
    assert 'Paris' in out

def test_bad_quant_args(dense):
    with pytest.raises(LLMLiteError, match="quant='int3'"): load(dense, quant='int3')
    with pytest.raises(LLMLiteError, match=r"bits=5: hqq supports bits in"): load(dense, quant='hqq', bits=5)
