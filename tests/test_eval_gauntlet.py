"A fine-tuning run with Foundry's gauntlet live: every `eval_every` steps metrics.jsonl gets each task's accuracy and each category's score."
import json
from pathlib import Path
import torch
from llmlite.core import seed_everything
from llmlite.data import Loader, make_rows
from llmlite.eval import Gauntlet, evaluate_tasks, gauntlet, icl_prompts
from llmlite.learner import Learner, plot_curves
from llmlite.models import Config, Decoder
from llmlite.tokenizer import Tokenizer

DATA = Path(__file__).parent.parent/'bench'/'data'/'icl'
TASKS = [dict(label='piqa', dataset_uri='piqa.jsonl', num_fewshot=[0], icl_task_type='multiple_choice', continuation_delimiter='\nAnswer: '),
         dict(label='winogrande', dataset_uri='winogrande.jsonl', num_fewshot=[0], icl_task_type='schema'),
         dict(label='lambada_openai', dataset_uri='lambada_openai.jsonl', num_fewshot=[0], icl_task_type='language_modeling')]
CFG = dict(eval_gauntlet=dict(subtract_random_baseline=True, rescale_accuracy=True, averages=dict(core=['commonsense', 'language']),
           categories=[dict(name='commonsense', benchmarks=[dict(name='piqa', num_fewshot=0, random_baseline=.5)]),
                       dict(name='language', benchmarks=[dict(name='winogrande', num_fewshot=0, random_baseline=.5),
                                                         dict(name='lambada_openai', num_fewshot=0, random_baseline=0.)])]))

def test_gauntlet_live(smol_path, tmp_path):
    tok = Tokenizer.from_gguf(smol_path)
    torch.set_num_threads(1)
    seed_everything(0)
    model = Decoder(Config(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden=64, tie_embeddings=True, max_seq_len=256))
    # train on the solved piqa examples beyond the 8 the gauntlet scores
    texts = [c + x for p in icl_prompts(DATA/'piqa.jsonl', 'multiple_choice', continuation_delimiter='\nAnswer: ')[8:72] for c, x in [p['pairs'][p['gold']]]]
    exs = [(ids[:64], [True] * len(ids[:64])) for ids in (tok.encode(t) for t in texts)]
    g = Gauntlet(tok, TASKS, CFG, root=DATA, limit=8)
    learn = Learner(model, Loader([make_rows(exs, 64)], 8, seed=0), lr=3e-3, path=tmp_path, eval_task=g, eval_every=4, show_every=0).fit(steps=8)
    rows = [json.loads(l) for l in (tmp_path/'metrics.jsonl').read_text().splitlines()]
    evals = [r for r in rows if 'eval' in r]
    assert [r['step'] for r in evals] == [4, 8]
    last = evals[-1]['eval']
    res = evaluate_tasks(model.eval(), tok, TASKS, DATA, limit=8)                    # the same numbers, computed after the run
    assert {k: last[k] for k in res} == {k: v['accuracy'] for k, v in res.items()}
    assert {k: last[k] for k in ('commonsense', 'language', 'core')} == gauntlet(res, CFG)
    assert (tmp_path/'curves.png').exists()
    ax = plot_curves(rows).axes[2]                                                   # curves.png's evaluation panel: a curve per task and per category
    curves = {l.get_label(): (list(l.get_xdata()), list(l.get_ydata())) for l in ax.get_lines()}
    assert curves == {k: ([4, 8], [e['eval'][k] for e in evals]) for k in last}
