"""llmlite's in-context-learning scoring against lm-evaluation-harness on identical prompts, and its speed.

Foundry's own task files (the first 210 examples of arc_easy, piqa, winogrande, lambada_openai and triviaqa_sm_sub from LLM
Foundry's scripts/eval/local_data, in bench/data/icl) with Foundry's task settings, 0- and 5-shot, on SmolLM2-135M-Instruct:
multiple choice, schema, language modelling and generation with answers.
llmlite builds each example's prompt by Foundry's rules and tokenizes it (tests/test_eval_parity.py checks those
prompts against Foundry's construction); both sides then score the very same token ids: llmlite with `score` (the
shared context run once, every choice packed after it in the same row), lm-eval with HFLM's `_loglikelihood_tokens` on the
transformers model of the same GGUF file. Printed per task: per-example agreement of the chosen answer under each
normalisation (sum, per character, per token; greedy match for LAMBADA), the largest log-likelihood difference
(absolute, relative, and per token), accuracies, a float64 control on the examples that differ most (llmlite's model in
float64 against both sides' results, which says how much of the difference is rounding on either side),
and the time of each side, run alternately (which side goes first alternates), with the load average. For triviaqa both
sides decode greedily from the same token ids for Foundry's length (the longest answer's tokens), llmlite with
`greedy_ids` (continuous batching, as `evaluate` generates), lm-eval with HFLM's `_model_generate` (the longest prompts first in
left-padded batches, as its `generate_until` calls it); printed: the
share of identical generations and of equal exact-match verdicts (Foundry's normalised match), and each side's accuracy.
`--dtype` is the dtype transformers' model is made in (default float64, lm-eval's most exact setting: transformers still
computes the matmuls over the GGUF file's weights in float32 -- transformers 5 keeps them packed, its kernels cast each
matmul's input and output -- and its RMSNorm and rotary angles, so its log-likelihoods sit about 1.5e-5 from exact; in
float32 it takes torch's float32 log-softmax, which put llmlite's float32 logits of a 111-token piqa continuation 9.2e-4
from float64 before llmlite's scores took a float64 log-sum-exp). `--ours` is llmlite's dtype
(default float32: its log-sum-exp runs in float64, so its float32 scores sit within 1e-4 of exact; float64 makes them exact,
and the control is then llmlite itself).

    nice python bench/eval_parity.py --n 200 --n5 200       # the full run
    nice python bench/eval_parity.py --n 40 --n5 20 --tasks piqa,lambada_openai
    nice python bench/eval_parity.py --dtype float32 --ours float32 --n 200 --n5 0    # both sides in float32
"""
import argparse, copy, json, os, resource, time
from pathlib import Path
import numpy as np, torch, transformers
from lm_eval.models.huggingface import HFLM
from llmlite.cli import default_model
from llmlite.eval import check_task, icl_prompts, encode_pair, needs_prefix_space, score, choice_metrics, lm_metrics, answer_match
from llmlite.generate import greedy_ids
from llmlite.loading import load

DATA = Path(__file__).parent/'data'/'icl'
TASKS = {'arc_easy': dict(icl_task_type='multiple_choice', continuation_delimiter='\nAnswer: '),    # Foundry's tasks_v0.3.yaml
         'piqa': dict(icl_task_type='multiple_choice', continuation_delimiter='\nAnswer: '),
         'winogrande': dict(icl_task_type='schema'), 'lambada_openai': dict(icl_task_type='language_modeling'),
         'triviaqa_sm_sub': dict(icl_task_type='generation_task_with_answers')}

def shared(e):
    "Tokens the pairs of one example share at the start (not beyond any pair's context)."
    seqs = [ids for ids, _ in e]
    n = next((t for t in range(min(map(len, seqs))) if any(s[t] != seqs[0][t] for s in seqs)), min(map(len, seqs)))
    return min([n] + [len(ids) - m for ids, m in e])

def load_avg(): return '/'.join(f'{x:.1f}' for x in os.getloadavg())

def cut(ts, stop):
    "Token ids `ts` up to the first of `stop`."
    return next((ts[:i] for i, t in enumerate(ts) if t in stop), ts)

def theirs_generate(lm, ids, n, bs, stop):
    "lm-eval's greedy continuations (HFLM._model_generate, as its generate_until calls it: the longest prompts first, `bs` a left-padded batch) of the same token ids."
    out, pad = [None] * len(ids), lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else stop[0]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for j in range(0, len(ids), bs):
        b = [ids[i] for i in order[j:j + bs]]; T = max(map(len, b))
        x = torch.tensor([[pad] * (T - len(i)) + i for i in b]); mask = torch.tensor([[0] * (T - len(i)) + [1] * len(i) for i in b])
        with torch.no_grad(): y = lm._model_generate(x, T + n, [], attention_mask=mask)
        for i, r in zip(order[j:j + bs], y): out[i] = cut(r[T:].tolist(), stop)
    return out

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=200, help='examples per task, 0-shot')
    ap.add_argument('--n5', type=int, default=200, help='examples per task, 5-shot')
    ap.add_argument('--tasks', default=','.join(TASKS))
    ap.add_argument('--bs', type=int, default=16, help="lm-eval's batch size (requests) and llmlite's (examples)")
    ap.add_argument('--threads', type=int, default=0)
    ap.add_argument('--dtype', choices=('float32', 'float64'), default='float64', help="transformers' model (lm-eval's side) in this dtype")
    ap.add_argument('--ours', choices=('float32', 'float64'), default='float32', help="llmlite's model in this dtype")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    gguf = default_model()
    model, tok = load(gguf)
    model = model.eval().to(getattr(torch, a.ours))
    exact = model if a.ours == 'float64' else copy.deepcopy(model).double()          # the float64 control
    hf = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, a.dtype)).eval()
    hft = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    lm = HFLM(pretrained=hf, tokenizer=hft, batch_size=a.bs, device='cpu')
    print(f"SmolLM2-135M-Instruct: llmlite in {a.ours}, transformers in {a.dtype}; torch threads {torch.get_num_threads()}, load {load_avg()}")
    rows, turn = [], 0
    for name in a.tasks.split(','):
        for k, n in ((0, a.n), (5, a.n5)):
            if not n: continue
            (t,) = check_task(dict(label=name, dataset_uri=f'{name}.jsonl', num_fewshot=[k], **TASKS[name]), DATA)
            kind, o = t.pop('kind'), {f: v for f, v in t.items() if f not in ('label', 'task', 'n_shot')}
            ps = icl_prompts(t['task'], kind, k, prefix_space=needs_prefix_space(tok), limit=n, **o)
            if kind == 'generation_task_with_answers':      # greedy answers from the same token ids; Foundry's length: the longest answer's tokens
                ids, n_new = [encode_pair(tok, p['pre'], p['context'], '')[0] for p in ps], max(len(tok.encode(x)) for p in ps for x in p['answers'])
                eos = hf.generation_config.eos_token_id                 # an id, a list of them or None
                stop = list(dict.fromkeys(tok.stop_ids + (eos if isinstance(eos, list) else [] if eos is None else [eos])))
                res, secs, la = {}, {}, {}
                for side in (['llmlite', 'lm-eval'] if turn % 2 == 0 else ['lm-eval', 'llmlite']):
                    t0 = time.perf_counter()
                    res[side] = greedy_ids(model, ids, n_new, tok.stop_ids, tok.pad_id, a.bs) if side == 'llmlite' else theirs_generate(lm, ids, n_new, a.bs, stop)
                    secs[side], la[side] = time.perf_counter() - t0, load_avg()
                turn += 1
                hits = {s_: [answer_match(tok.decode(o), p['answers']) for o, p in zip(res[s_], ps)] for s_ in res}
                r = dict(task=f'{name}/{k}-shot', n=len(ps), new_tokens=n_new, tokens=dict.fromkeys(('llmlite', 'lm_eval'), sum(map(len, ids))),
                         same_tokens=float(np.mean([a_ == b_ for a_, b_ in zip(res['llmlite'], res['lm-eval'])])),
                         agreement=dict(exact_match=float(np.mean([a_ == b_ for a_, b_ in zip(hits['llmlite'], hits['lm-eval'])]))),
                         llmlite=dict(exact_match=float(np.mean(hits['llmlite']))), lm_eval=dict(exact_match=float(np.mean(hits['lm-eval']))),
                         secs=secs, speedup=secs['lm-eval'] / secs['llmlite'], load=la)
                rows.append(r); print(json.dumps(r), flush=True)
                continue
            enc = [[encode_pair(tok, p['pre'], c, x) for c, x in p['pairs']] for p in ps]
            reqs = [((p['pre'] + c, x), ids[:-m], ids[-m:]) for p, e in zip(ps, enc) for (c, x), (ids, m) in zip(p['pairs'], e)]
            def ours():
                with torch.no_grad(): return score(model, enc, a.bs)
            def theirs(): return lm._loglikelihood_tokens(reqs, disable_tqdm=True)
            res, secs, la = {}, {}, {}
            for side in (['llmlite', 'lm-eval'] if turn % 2 == 0 else ['lm-eval', 'llmlite']):
                t0 = time.perf_counter(); res[side] = (ours if side == 'llmlite' else theirs)(); secs[side] = time.perf_counter() - t0
                la[side] = load_avg()
            turn += 1
            it, agree, theirs_hits, gaps = iter(res['lm-eval']), {}, {}, []
            for i, (p, g) in enumerate(zip(ps, res['llmlite'])):
                th = [next(it) for _ in g]
                gaps += [(abs(-float(nll.sum()) - l), abs(-float(nll.sum()) - l) / abs(l), abs(-float(nll.sum()) - l) / len(nll), i, j, l)
                         for j, ((nll, _), (l, _)) in enumerate(zip(g, th))]
                if kind == 'language_modeling':
                    agree.setdefault('greedy', []).append(g[0][1] == th[0][1]); theirs_hits.setdefault('greedy', []).append(th[0][1])
                    continue
                ll, nt, nc = np.array([l for l, _ in th]), np.array([len(n) for n, _ in g]), np.maximum(p['chars'], 1)
                m = choice_metrics([p], [g])
                for key, v in (('acc', ll), ('acc_norm', ll / nc), ('acc_token', ll / nt)):
                    hit = float(int(np.argmax(v)) == p['gold'])
                    agree.setdefault(key, []).append(m[key] == hit); theirs_hits.setdefault(key, []).append(hit)
            worst = sorted(gaps, reverse=True)[:16]
            with torch.no_grad(): f64 = score(exact, [enc[i] for _, _, _, i, _, _ in worst], a.bs)
            vs64 = dict(llmlite=max(abs(float(res['llmlite'][i][j][0].sum()) - float(e[j][0].sum())) for (_, _, _, i, j, _), e in zip(worst, f64)),
                        lm_eval=max(abs(l + float(e[j][0].sum())) for (_, _, _, i, j, l), e in zip(worst, f64)))
            ours_m = lm_metrics(res['llmlite']) if kind == 'language_modeling' else choice_metrics(ps, res['llmlite'])
            toks = dict(llmlite=sum(p + sum(len(ids) - p for ids, _ in e) if p else sum(len(ids) for ids, _ in e) for p, e in ((shared(e), e) for e in enc)),
                        lm_eval=sum(len(ids) - 1 for e in enc for ids, _ in e))   # tokens each side runs through the model
            r = dict(task=f'{name}/{k}-shot', n=len(ps), pairs=len(reqs), tokens=toks, max_ll_diff=max(x[0] for x in gaps), max_ll_rel=max(x[1] for x in gaps),
                     max_ll_diff_per_token=max(x[2] for x in gaps), worst16_vs_float64=vs64, agreement={key: float(np.mean(v)) for key, v in agree.items()},
                     llmlite={key: ours_m[key] for key in agree}, lm_eval={key: float(np.mean(v)) for key, v in theirs_hits.items()},
                     secs=secs, speedup=secs['lm-eval'] / secs['llmlite'], load=la)
            rows.append(r)
            print(json.dumps(r), flush=True)
    tot, ll = {s: sum(r['secs'][s] for r in rows) for s in ('llmlite', 'lm-eval')}, [r for r in rows if 'max_ll_diff' in r]
    sp = [r['speedup'] for r in rows]
    print(f"total: llmlite {tot['llmlite']:.1f} s, lm-eval {tot['lm-eval']:.1f} s, ratio {tot['lm-eval'] / tot['llmlite']:.2f}x; "
          f"per task speedup median {np.median(sp):.2f}x (quartiles {np.quantile(sp, .25):.2f}-{np.quantile(sp, .75):.2f}); "
          f"all agreement 100%: {all(v == 1. for r in rows for v in r['agreement'].values())}; " + (f"max |ll diff| {max(r['max_ll_diff'] for r in ll):.2e} (relative {max(r['max_ll_rel'] for r in ll):.1e}, per token {max(r['max_ll_diff_per_token'] for r in ll):.1e}; against float64 on the worst pairs: llmlite {max(r['worst16_vs_float64']['llmlite'] for r in ll):.2e}, lm-eval {max(r['worst16_vs_float64']['lm_eval'] for r in ll):.2e}); " if ll else '') +
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB; load {load_avg()}")

if __name__ == '__main__': main()
