"""A model fine-tuned with `llmlite finetune`, exported with `save_gguf` and run by llama.cpp (llama-cpp-python): greedy outputs on held-out
prompts beside llmlite's, for an f16 and a q8_0 export, and the adapter as a GGUF LoRA file applied by llama.cpp over the exported base.

    llmlite finetune --out out/finetune                      # the README's job (or --steps 16 --eval-n 8 for a shorter one)
    python bench/gguf_out.py --adapter out/finetune/adapter  # [--quant nf4] [--n 40] [--max-new 24] [--threads 2]

Greedy decoding is argmax over each engine's logits, both fed the same prompt ids (llmlite's tokenizer); llama.cpp's own tokenizer of the exported
file is checked on the same prompt texts. Prints the agreement per comparison, export times and file sizes, peak RSS and the load average."""
import argparse, json, os, resource, tempfile, time
from pathlib import Path
import numpy as np, torch
from llama_cpp import Llama
from llmlite.loading import load, load_gguf
from llmlite.peft import load_adapter
from llmlite.adapters import disable_adapters
from llmlite.generate import generate_ids
from llmlite.data import read_records
from llmlite.cli import default_model, bundled
from llmlite.export import save_gguf, save_gguf_lora

def ours(model, tok, ids, n):
    "Greedy new tokens of llmlite for prompt ids `ids`, up to a stop token (kept) or `n` tokens."
    out = []
    for t in generate_ids(model, [ids], n, stop_ids=tok.stop_ids):
        out.append(int(t[0]))
        if out[-1] in tok.stop_ids: break
    return out

def theirs(llm, ids, n, stops):
    "Greedy new tokens of llama.cpp: the argmax of its logits at each step."
    llm.reset(); llm.eval(ids); out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        if out[-1] in stops: break
        llm.eval([out[-1]])
    return out

def agreement(a:list, b:list) -> tuple:
    "(outputs equal, fraction of tokens equal position by position over the longer output) for lists of outputs."
    same = sum(x == y for x, y in zip(a, b))
    pos = [sum(p == q for p, q in zip(x, y)) / max(len(x), len(y)) for x, y in zip(a, b)]
    return same, float(np.mean(pos))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--adapter', required=True, help='PEFT adapter directory written by `llmlite finetune`')
    ap.add_argument('--model', default=None, help='base (default: the embedded SmolLM2-135M-Instruct)')
    ap.add_argument('--quant', default='nf4', help="the base's quantization in training ('' for a dense base)")
    ap.add_argument('--n', type=int, default=40, help='held-out prompts')
    ap.add_argument('--max-new', type=int, default=24)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--out', default=None, help='directory for the GGUF files (default: a temporary one)')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    d = Path(a.out or tempfile.mkdtemp(prefix='gguf_out_')); d.mkdir(parents=True, exist_ok=True)
    model, tok = load(a.model or default_model(), quant=a.quant or None)
    load_adapter(model, a.adapter); model.eval()
    recs = read_records(bundled('dates_test.jsonl'))[:a.n]
    prompts = [tok.encode_chat(r['messages'][:-1]) for r in recs]
    texts = [tok.apply_chat_template(r['messages'][:-1]) for r in recs]
    print(f"{len(prompts)} held-out prompts of {bundled('dates_test.jsonl').name}, greedy, up to {a.max_new} new tokens, {a.threads} threads; load average {os.getloadavg()}")

    files, secs = {}, {}
    for q in ('f16', 'q8_0'):
        t0 = time.perf_counter(); files[q] = save_gguf(model, tok, d/f'merged_{q}.gguf', q); secs[q] = time.perf_counter() - t0
    with disable_adapters(model):
        t0 = time.perf_counter(); files['base'] = save_gguf(model, tok, d/'base_f16.gguf', 'f16'); secs['base'] = time.perf_counter() - t0
    t0 = time.perf_counter(); files['lora'] = save_gguf_lora(model, d/'lora.gguf'); secs['lora'] = time.perf_counter() - t0
    for k, f in files.items(): print(f"  save {k:5} {f.name:18} {f.stat().st_size / 2**20:7.1f} MiB in {secs[k]:5.1f} s")

    t0 = time.perf_counter()
    ref = [ours(model, tok, p, a.max_new) for p in prompts]
    print(f"llmlite, NF4 base + LoRA as trained: {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()}")
    m16, _ = load_gguf(files['f16']); m16.eval()
    ref16 = [ours(m16, tok, p, a.max_new) for p in prompts]
    del m16
    stops = set(tok.stop_ids)
    kw = dict(n_ctx=512, n_threads=a.threads, n_batch=512, logits_all=True, verbose=False)   # without logits_all, 0.3.36 leaves `scores` zero
    res = {}
    for name, path, lora in (('f16', files['f16'], None), ('q8_0', files['q8_0'], None), ('base+lora', files['base'], files['lora'])):
        llm = Llama(model_path=str(path), lora_path=str(lora) if lora else None, **kw)
        if name == 'f16':
            tk_ok = sum(llm.tokenize(t.encode(), add_bos=False, special=True) == p for t, p in zip(texts, prompts))
            print(f"llama.cpp's tokenizer of the exported file: {tk_ok}/{len(texts)} prompts tokenized as llmlite does; "
                  f"chat template {'equal' if llm.metadata.get('tokenizer.chat_template') == tok.chat_template else 'DIFFERENT'}")
        t0 = time.perf_counter()
        res[name] = [theirs(llm, p, a.max_new, stops) for p in prompts]
        print(f"llama.cpp {name}: {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()}")
        del llm
    rows = [('llama.cpp f16 merged   vs llmlite (NF4 + LoRA, fp32)', res['f16'], ref),
            ('llama.cpp f16 merged   vs llmlite on the same f16 GGUF', res['f16'], ref16),
            ('llama.cpp q8_0 merged  vs llmlite (NF4 + LoRA, fp32)', res['q8_0'], ref),
            ('llama.cpp base+LoRA    vs llama.cpp f16 merged', res['base+lora'], res['f16']),
            ('llama.cpp base+LoRA    vs llmlite (NF4 + LoRA, fp32)', res['base+lora'], ref)]
    print("\noutputs equal / token agreement (position by position):")
    for label, x, y in rows:
        same, pos = agreement(x, y)
        print(f"  {label}: {same}/{len(x)} equal, {pos:.1%} of tokens")
    show = min(3, len(recs))
    for r, o, l in zip(recs[:show], ref[:show], res['base+lora'][:show]):
        print(f"  {r['messages'][-2]['content'][:60]!r}: llmlite {tok.decode(o)!r}, llama.cpp base+LoRA {tok.decode(l)!r}, expected {r['messages'][-1]['content']!r}")
    print(f"exact match of llama.cpp f16 output to the expected answers: {sum(tok.decode(o).strip() == r['messages'][-1]['content'] for o, r in zip(res['f16'], recs))}/{len(recs)}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB; load average {os.getloadavg()}")

if __name__ == '__main__': main()
