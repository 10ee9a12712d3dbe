"""Merge the parts `bench/gpu.sh` wrote into one results.json and a short summary.md: each step's outcome, the measured
figures, and each "must show" target of issue 19 as met, missed (with the figure) or not measured.
Usage: python bench/gpu_report.py PARTS_DIR OUT_DIR
"""
import json, sys
from pathlib import Path

def load(d, name):
    p = Path(d)/name
    return json.loads(p.read_text()) if p.exists() else None

def verdict(ok, fig): return ('met' if ok else 'MISSED') + f" ({fig})"

def targets(r):
    "Each must-show target: met / MISSED with the figure / not measured."
    t, q, d, steps = {}, r.get('qlora'), r.get('decode'), r['steps']
    tests = steps.get('pytest', {})
    cells = [v for k, v in steps.items() if k.startswith('cells')]
    if r['dry_run']: t['every cuda-flagged test passes on the GPU'] = 'not measured (dry run on CPU)'
    else: t['every cuda-flagged test passes on the GPU'] = verdict(tests.get('rc') == 0 and all(c.get('rc') == 0 for c in cells),
                                                                  f"pytest: {tests.get('summary', 'no result')}; notebooks: {sum(c.get('rc') == 0 for c in cells)}/{len(cells)} pass")
    if q and 'lora' in q['kinds']:
        for bs, o in q['kinds']['lora'].items():
            l, p = o['sides']['llmlite'], o['sides']['transformers']
            rt, mem = o['ratio_tok_s']['median'], l['peak_alloc_gib'] / p['peak_alloc_gib'] if p['peak_alloc_gib'] else float('nan')
            t[f"QLoRA bs {bs}: >= 1.5x tokens/s at <= 0.7x peak memory"] = verdict(rt >= 1.5 and mem <= 0.7, f"{rt:.2f}x tokens/s, {mem:.2f}x peak allocated; MFU {100 * l['mfu_measured']:.1f}% of measured matmul")
            t[f"QLoRA bs {bs}: planner within 10% of measured peak"] = verdict(abs(o['plan_err']) <= 0.10, f"plan {o['plan_peak_gib']:.2f} GiB vs measured {l['peak_alloc_gib']:.2f} GiB: {100 * o['plan_err']:+.1f}%")
        for bs, x in (q.get('dora_vs_lora_step') or {}).items():
            t[f"DoRA bs {bs}: within +10% of LoRA's step time"] = verdict(x <= 1.10, f"{x:.2f}x")
    else: t['QLoRA 8B-shape targets'] = 'not measured'
    if d and '1' in d['eager']:
        best = max(d[m]['1']['roofline_frac'] for m in ('eager', 'compiled') if m in d)
        t['4-bit decode bs 1: >= 60% of the copy-bandwidth roofline'] = verdict(best >= 0.6, f"{100 * best:.1f}% (eager {100 * d['eager']['1']['roofline_frac']:.1f}%) of {d['copy_gbs']:.0f} GB/s")
    else: t['4-bit decode targets'] = 'not measured'
    return t

def main():
    parts, out = Path(sys.argv[1]), Path(sys.argv[2])
    r = dict(steps=load(parts, 'steps.json') or {}, env=load(parts, 'env.json'), qlora=load(parts, 'qlora.json'), decode=load(parts, 'decode.json'))
    r['dry_run'] = bool((r['env'] or {}).get('dry_run'))
    r['targets'] = {k: 'not measured (dry run on CPU)' for k in targets(r)} if r['dry_run'] else targets(r)
    (out/'results.json').write_text(json.dumps(r, indent=1))
    e = r['env'] or {}
    lines = [f"# bench/gpu.sh {'(dry run, CPU)' if r['dry_run'] else ''}", '',
             f"device: {e.get('device')}, torch {e.get('torch')}, bitsandbytes {e.get('bitsandbytes')}, transformers {e.get('transformers')}, peft {e.get('peft')}; load average {e.get('load_avg')}", '',
             '| step | result | seconds |', '| --- | --- | --- |']
    lines += [f"| {k} | {v.get('summary', 'rc ' + str(v.get('rc')))} | {v.get('s', 0):.0f} |" for k, v in r['steps'].items()]
    q = r['qlora']
    if q:
        lines += ['', f"QLoRA {q['shape']}, seq {q['seq']}, NF4 + r16 all linear, checkpointing; matmul ceiling {q['matmul_tflops']:.0f} TFLOP/s", '',
                  '| kind | bs | side | tokens/s | step s | peak alloc GiB | peak reserved GiB | MFU | first loss |', '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
        for kind, kr in q['kinds'].items():
            for bs, o in kr.items():
                for s, v in o['sides'].items():
                    lines.append(f"| {kind} | {bs} | {s} | {v['tok_s']:.0f} | {v['step_s']:.3f} | {v['peak_alloc_gib']:.2f} | {v['peak_reserved_gib']:.2f} | {100 * v['mfu_measured']:.1f}% | {v['first_loss']:.3f} |")
                lines.append(f"| {kind} | {bs} | ratio | {o['ratio_tok_s']['median']:.2f}x ({o['ratio_tok_s']['q1']:.2f}-{o['ratio_tok_s']['q3']:.2f}) | | plan {o['plan_peak_gib']:.2f} | | | |")
    d = r['decode']
    if d:
        lines += ['', f"NF4 decode {d['shape']}: copy bandwidth {d['copy_gbs']:.0f} GB/s" + (f"; compile {d['compile_s']:.1f} s" if 'compile_s' in d else ''), '',
                  '| mode | bs | tokens/s | ms/step | GB/s | roofline |', '| --- | --- | --- | --- | --- | --- |']
        lines += [f"| {m} | {bs} | {o['tok_s']:.1f} | {o['step_ms']:.2f} | {o['achieved_gbs']:.1f} | {100 * o['roofline_frac']:.1f}% |" for m in ('eager', 'compiled') for bs, o in d.get(m, {}).items()]
    lines += ['', '## Targets (issue 19)', ''] + [f"- {k}: {v}" for k, v in r['targets'].items()]
    (out/'summary.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))

if __name__ == '__main__': main()
