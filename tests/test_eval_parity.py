"""llmlite's in-context-learning tasks against their references: the prompts and token ids LLM Foundry builds, rebuilt here
from Foundry's published rules (llmfoundry/eval/datasets/in_context_learning_evaluation.py and utils.py) without llmlite's
prompt code; and the log-likelihoods lm-evaluation-harness computes on the same token ids, and its tokenization convention."""
import json, random
from pathlib import Path
import numpy as np, pytest, torch
from llmlite.eval import icl_prompts, encode_pair, needs_prefix_space, score, choice_metrics, check_task, evaluate
from llmlite.loading import save_model
from llmlite.models import Config, Decoder
from llmlite.tokenizer import Tokenizer

DATA = Path(__file__).parent.parent/'bench'/'data'/'icl'
# Foundry's settings for these tasks (scripts/eval/yamls/tasks_v0.3.yaml); the files are the first 210 lines of its local_data ones
TASKS = {'arc_easy': dict(icl_task_type='multiple_choice', continuation_delimiter='\nAnswer: '),
         'piqa': dict(icl_task_type='multiple_choice', continuation_delimiter='\nAnswer: '),
         'winogrande': dict(icl_task_type='schema'), 'lambada_openai': dict(icl_task_type='language_modeling'),
         'triviaqa_sm_sub': dict(icl_task_type='generation_task_with_answers')}

def rows(name): return [json.loads(l) for l in (DATA/f'{name}.jsonl').read_text().splitlines()]

def foundry(rows, kind, k, hf, continuation_delimiter=' ', example_delimiter='\n', prompt_string='', seed=1234):
    "Per example: (context string, continuation strings, context ids, continuation ids), by Foundry's rules, with a transformers tokenizer."
    rows = [{f: v.strip() if isinstance(v, str) else v for f, v in r.items()} for r in rows]       # strip_data: top-level strings only
    rng, n = random.Random(seed), len(rows)
    def shots(i):                                              # get_fewshot_sample_idxs, one rng through the dataset
        idxs = set(rng.sample(range(0, n), min(n - 1, k)))
        if i in idxs:
            idxs.remove(i)
            if len(idxs) < n - 1:
                r = rng.choice(range(0, n))
                while r in idxs or r == i: r = rng.choice(range(0, n))
                idxs.add(r)
        return idxs
    space = len(hf(' a', add_special_tokens=False)['input_ids']) == 1          # tokenizer_needs_prefix_space
    sp = lambda s: s if not space or s.startswith(' ') else ' ' + s
    key = {'multiple_choice': 'query'}.get(kind, 'context')
    ans = lambda r: {'multiple_choice': lambda: r['choices'][r['gold']], 'language_modeling': lambda: r['continuation']}.get(kind, lambda: r['answer'])()
    out = []
    for i, r in enumerate(rows):
        text = prompt_string
        for j in (shots(i) if k > 0 else []):                  # construct_context(add_answer=True) of each shot
            s = rows[j]
            if kind == 'schema': text += (example_delimiter if text else '') + s['context_options'][s['gold']] + continuation_delimiter + s['continuation']
            else: text += (example_delimiter if text else '') + s[key] + continuation_delimiter + ans(s)
        if kind == 'schema':                                   # _construct_multiple_contexts
            ctxs = [example_delimiter + c + continuation_delimiter.rstrip() if text else c for c in r['context_options']]
            conts = [sp(r['continuation'])] * len(ctxs)
        else:
            ctxs = [((example_delimiter if text else '') + r[key] + continuation_delimiter).rstrip()]
            conts = [sp(c) for c in (r['choices'] if kind == 'multiple_choice' else [r['continuation']] if kind == 'language_modeling' else [])]
            ctxs = ctxs * max(1, len(conts))
        pre = hf(text)['input_ids']
        if hf.eos_token_id is not None and len(pre) > 1 and pre[-1] == hf.eos_token_id: pre = pre[:-1]
        out.append([(text + c, x, pre + hf(c, add_special_tokens=False)['input_ids'], hf(x, add_special_tokens=False)['input_ids'])
                    for c, x in zip(ctxs, conts or [''])])
    return out

@pytest.fixture(scope='module')
def toks(smol_path):
    import transformers
    return Tokenizer.from_gguf(smol_path), transformers.AutoTokenizer.from_pretrained(smol_path.parent, gguf_file=smol_path.name)

@pytest.mark.parametrize('name', list(TASKS))
@pytest.mark.parametrize('k', [0, 5])
def test_foundry_prompts(name, k, toks):
    "llmlite's strings and token ids equal Foundry's construction for every example of the task, 0- and 5-shot."
    tok, hf = toks
    (t,) = check_task(dict(label=name, dataset_uri=f'{name}.jsonl', num_fewshot=[k], **TASKS[name]), DATA)
    kind, o = t.pop('kind'), {f: v for f, v in t.items() if f not in ('label', 'task', 'n_shot')}
    ours = icl_prompts(t['task'], kind, k, prefix_space=needs_prefix_space(tok), **o)
    ref = foundry(rows(name), kind, k, hf, **{f: v for f, v in TASKS[name].items() if f != 'icl_task_type'})
    assert len(ours) == len(ref) == 210
    for p, r in zip(ours, ref):
        if kind == 'generation_task_with_answers':
            assert p['pre'] + p['context'] == r[0][0]
            assert encode_pair(tok, p['pre'], p['context'], '')[0] == r[0][2]
            continue
        assert [(p['pre'] + c, x) for c, x in p['pairs']] == [(c, x) for c, x, _, _ in r]
        assert [encode_pair(tok, p['pre'], c, x) for c, x in p['pairs']] == [(ci + xi, len(xi)) for _, _, ci, xi in r]

@pytest.fixture(scope='module')
def tiny_hf(tmp_path_factory, toks):
    "A tiny random decoder over SmolLM2's tokenizer, and lm-eval's HFLM reading it from the directory save_model writes."
    from lm_eval.models.huggingface import HFLM
    tok, _ = toks
    torch.manual_seed(0)
    m = Decoder(Config(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden=128, tie_embeddings=True, max_seq_len=2048)).eval()
    with torch.no_grad(): m.emb.weight.mul_(0.05)      # a model's scale of log-likelihoods (about log(vocab) a token), so 1e-4 is a tight bound
    d = tmp_path_factory.mktemp('tiny')
    save_model(m, d, tok)
    return m, HFLM(pretrained=str(d), device='cpu', dtype='float32', batch_size=16)

@pytest.mark.parametrize('name,k', [('arc_easy', 5), ('piqa', 0), ('winogrande', 5), ('lambada_openai', 0)])
def test_lm_eval_loglikelihoods(name, k, toks, tiny_hf):
    "On the same token ids, lm-eval's log-likelihoods and greedy flags equal llmlite's (shared-prefix path), so every normalisation picks the same choice."
    tok, _ = toks
    model, lm = tiny_hf
    (t,) = check_task(dict(label=name, dataset_uri=f'{name}.jsonl', num_fewshot=[k], **TASKS[name]), DATA)
    kind, o = t.pop('kind'), {f: v for f, v in t.items() if f not in ('label', 'task', 'n_shot')}
    ps = icl_prompts(t['task'], kind, k, prefix_space=True, limit=24, **o)
    enc = [[encode_pair(tok, p['pre'], c, x) for c, x in p['pairs']] for p in ps]
    ours = score(model, enc)
    reqs = [((p['pre'] + c, x), ids[:-n], ids[-n:]) for p, e in zip(ps, enc) for (c, x), (ids, n) in zip(p['pairs'], e)]
    theirs = iter(lm._loglikelihood_tokens(reqs))
    for p, g in zip(ps, ours):
        ll = []
        for nll, greedy in g:
            l, gr = next(theirs)
            assert abs(-float(nll.sum()) - l) < 1e-4 and greedy == gr
            ll.append(l)
        if kind != 'language_modeling':     # lm-eval's acc: argmax of the log-likelihoods; acc_norm: divided by the choice's characters
            m = choice_metrics([p], [g])
            assert m['acc'] == float(np.argmax(ll) == p['gold']) and m['acc_norm'] == float(np.argmax(np.array(ll) / p['chars']) == p['gold'])

def test_lm_eval_tokenization(toks, tiny_hf):
    "convention='lm-eval' splits a pair as lm-eval's HFLM does: whitespace moved onto the continuation, one string tokenized."
    tok, _ = toks
    _, lm = tiny_hf
    ps = icl_prompts(DATA/'piqa.jsonl', 'multiple_choice', 2, continuation_delimiter='\nAnswer: ', strip_dataset=False, prefix_space=False, limit=30)
    for p in ps:
        for c, x in p['pairs']:
            ids, n = encode_pair(tok, p['pre'], c, x, 'lm-eval')
            cx, xx = lm._encode_pair(p['pre'] + c, x)
            assert (ids[:-n], ids[-n:]) == (cx, xx)

def test_lambada_space(toks):
    "LAMBADA read from Foundry's file gets Foundry's space before the continuation: the continuation is ' word', never 'word'."
    tok, _ = toks
    ps = icl_prompts(DATA/'lambada_openai.jsonl', 'language_modeling', prefix_space=needs_prefix_space(tok), limit=5)
    assert all(x.startswith(' ') and not c.endswith(' ') for p in ps for c, x in p['pairs'])
