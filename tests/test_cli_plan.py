"`llmlite plan` as a command: the planner's terms for a config name or a Hugging Face config.json, and clear errors."
import json, subprocess, sys
from llmlite.plan import plan

def llmlite(*args, ok=True):
    r = subprocess.run([sys.executable, '-c', 'import sys; from llmlite.cli import main; sys.exit(main())', 'plan', *map(str, args)], capture_output=True, text=True, timeout=120)   # as the console script calls it
    assert (r.returncode == 0) == ok, r.stderr[-3000:]
    return r

def test_plan_table_by_name():
    out = llmlite('--model', 'Llama-2-70B', '--world-size', 2, '--bs', 2, '--cpu-offload').stdout
    want = plan('Llama-2-70B', 2, 24, 2048, 2, cpu_offload=True)
    assert out.startswith('Llama-2-70B on 2 device(s) of 24 GiB: nf4 base, lora r=8 on all-linear, bs 2 x 2048 tokens, bf16, checkpointing, CPU offload')
    for k in ('frozen', 'vocab_shards', 'gathered', 'root', 'adapter', 'activations', 'block', 'logits'): assert f"{want[k + '_gib']:8.2f} GiB" in out.split(f'  {k}')[1].splitlines()[0]
    assert f"{'peak':<12}{want['peak_gib']:8.2f} GiB: fits" in out and 'CPU memory' in out
    assert 'does NOT fit' in llmlite('--model', 'Llama-2-70B', '--world-size', 2, '--bs', 2).stdout

def test_plan_hf_config_json(tmp_path):
    (tmp_path/'config.json').write_text(json.dumps(dict(model_type='mistral', vocab_size=32000, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, sliding_window=None)))
    args = ['--world-size', 4, '--device-mem', 16, '--seq-len', 1024, '--bs', 3, '--quant', '', '--adapter', 'dora', '--r', 16,
            '--no-checkpointing', '--dtype', 'fp32', '--targets', 'wq,wv,down', '--dropout', 0.05, '--json']
    got = json.loads(llmlite('--model', tmp_path, *args).stdout)
    assert got == json.loads(llmlite('--model', tmp_path/'config.json', *args).stdout)
    assert got == plan('Mistral-7B-v0.1', 4, 16, 1024, 3, None, 'dora', 16, False, False, 'fp32', ['wq', 'wv', 'down'], 0.05) | dict(model='')

def test_plan_errors(tmp_path):
    assert "Unknown model name 'Llama-9'" in llmlite('--model', 'Llama-9', ok=False).stderr
    assert "can't be split over 5000 ranks (its 4096 rows in chunks of 1 leave 904 of 5000 ranks without rows)" in llmlite('--world-size', 5000, ok=False).stderr
    assert 'Llama-2-7B on 3 device(s)' in llmlite('--world-size', 3).stdout     # any shape shards now: 4096 rows over 3 ranks
    assert 'targets must be' in llmlite('--targets', 'q_proj', ok=False).stderr
    (tmp_path/'config.json').write_text('{')
    assert 'config.json: not valid JSON' in llmlite('--model', tmp_path, ok=False).stderr
