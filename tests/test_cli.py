"The `llmlite` command end to end on a tiny model: finetune, generate with the adapter, eval, merge, quantize."
import json, subprocess, sys
import pytest, torch
from pathlib import Path
from llmlite.loading import load, save_model
from llmlite.models import Config, Decoder
from llmlite.tokenizer import Tokenizer

def llmlite(*args, cwd=None):
    r = subprocess.run([sys.executable, '-c', 'from llmlite.cli import main; main()', *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

@pytest.fixture(scope='module')
def tiny(tmp_path_factory, smol_path):
    "A tiny random Llama with SmolLM2's tokenizer, and a tiny chat dataset."
    d = tmp_path_factory.mktemp('tiny')
    torch.manual_seed(0)
    save_model(Decoder(Config(vocab_size=49152, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden=128, tie_embeddings=True)), d/'model', Tokenizer.from_gguf(smol_path))
    recs = [dict(messages=[dict(role='user', content=f'Say {w}.'), dict(role='assistant', content=w)]) for w in ['red', 'green', 'blue', 'cyan'] * 4]
    (d/'chat.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
    return d

def test_cli_end_to_end(tiny, tmp_path):
    out = llmlite('finetune', '--model', tiny/'model', '--data', tiny/'chat.jsonl', '--eval-data', tiny/'chat.jsonl', '--steps', 3,
                  '--eval-n', 2, '--bs', 2, '--seq-len', 64, '--show', 1, '--out', tmp_path/'ft')
    assert 'held-out exact match before' in out and 'adapter saved to' in out
    ad = tmp_path/'ft'/'adapter'
    assert (ad/'adapter_config.json').exists() and (ad/'adapter_model.safetensors').exists()
    assert list((tmp_path/'ft'/'checkpoints').glob('step-*'))
    llmlite('generate', '--model', tiny/'model', '--adapter', ad, '--prompt', 'Say red.', '--max-new-tokens', 4)
    res = json.loads(llmlite('eval', '--model', tiny/'model', '--adapter', ad, '--task', tiny/'chat.jsonl', '--limit', 2).strip().splitlines()[-1])
    assert res['kind'] == 'chat' and res['n'] == 2
    llmlite('merge', '--model', tiny/'model', '--adapter', ad, '--out', tmp_path/'merged', '--quant', 'nf4')
    merged, _ = load(tmp_path/'merged')
    assert merged.cfg.n_layers == 2
    llmlite('quantize', '--model', tiny/'model', '--out', tmp_path/'q', '--method', 'hqq', '--bits', 4)
    assert json.loads((tmp_path/'q'/'config.json').read_text())['quantization_config']['quant_method'] == 'llmlite'

def test_cli_bad_config(tmp_path):
    (tmp_path/'ft.toml').write_text('learning_rate = 1e-3\n')
    r = subprocess.run([sys.executable, '-c', 'from llmlite.cli import main; main()', 'finetune', '--config', str(tmp_path/'ft.toml')],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "unknown key 'learning_rate'" in r.stderr

def test_cli_eval_gauntlet(tiny, tmp_path):
    "`llmlite eval --gauntlet` runs a Foundry eval config (task list and gauntlet by path, data beside them) and prints every task and category."
    data = Path(__file__).parent.parent/'bench'/'data'/'icl'
    (tmp_path/'tasks.yaml').write_text(json.dumps(dict(icl_tasks=[dict(label='piqa', dataset_uri='piqa.jsonl', num_fewshot=[0], icl_task_type='multiple_choice', continuation_delimiter='\nAnswer: '),
                                                                  dict(label='lambada_openai', dataset_uri='lambada_openai.jsonl', num_fewshot=[0], icl_task_type='language_modeling')])))
    (tmp_path/'gauntlet.yaml').write_text(json.dumps(dict(eval_gauntlet=dict(subtract_random_baseline=True, categories=[
        dict(name='commonsense', benchmarks=[dict(name='piqa', num_fewshot=0, random_baseline=.5)]), dict(name='language', benchmarks=[dict(name='lambada_openai', num_fewshot=0)])]))))
    (tmp_path/'eval.yaml').write_text('icl_tasks: tasks.yaml\neval_gauntlet: gauntlet.yaml\n')
    res = json.loads(llmlite('eval', '--model', tiny/'model', '--gauntlet', tmp_path/'eval.yaml', '--root', data, '--limit', 3).strip().splitlines()[-1])
    assert list(res) == ['piqa/0-shot', 'lambada_openai/0-shot', 'commonsense', 'language']
    assert res['commonsense'] == res['piqa/0-shot'] - .5 and res['language'] == res['lambada_openai/0-shot']
