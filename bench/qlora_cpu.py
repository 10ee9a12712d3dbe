"""QLoRA on CPU, llmlite vs transformers + PEFT + bitsandbytes, same model, data, batch, sequence length and rank.

SmolLM2-135M-Instruct with an NF4 base and LoRA (or DoRA) r=16 on every linear layer of the blocks, in fp32 or bf16 compute,
trained with AdamW on the same batches of the bundled date task (loss on the responses): llmlite through its
`Learner`, transformers + PEFT through a plain loop over the same batches. Each side lives in its own
subprocess (so peak RSS, sampled during training, is its own); after loading and warm-up the parent runs them
in alternating rounds (by default one step each, on the same batch), so a busy machine slows both alike: the tokens/s
ratio is the median of the rounds' ratios, printed with its quartiles, since on a shared 2-core machine single rounds
scatter by +-10%. The parent also prints the achieved GFLOP/s against a measured matmul ceiling in the same precision.
`--precision bf16`: both sides compute in bf16 (llmlite's `Learner(precision='bf16')`; transformers under bf16 autocast with
bitsandbytes' bf16 compute dtype, fp32 adapter weights), and a third side, llmlite in fp32, runs in the same rounds.
`--seq 1024`: rows packed to 1024 tokens (llmlite attends within each conversation; transformers over the whole row).
Usage: python bench/qlora_cpu.py [--steps 20] [--rounds 20] [--warmup 2] [--bs 8] [--seq 128] [--kind lora|dora] [--precision fp32|bf16]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time, warnings
from pathlib import Path
import torch

def loader(bs, seq=128):
    "The bundled date task's training batches: the same for every side (the order is a function of the seed); packed past 128 tokens."
    from llmlite.cli import default_model, bundled
    from llmlite.data import chat_data
    from llmlite.tokenizer import Tokenizer
    return chat_data(bundled('dates_train.jsonl'), Tokenizer.from_gguf(default_model()), seq_len=seq, bs=bs, seed=0, pack=seq > 128)

def say(**kw): print('@' + json.dumps(kw), flush=True)

def train(side, hf_dir, steps, warmup, bs, seq, kind, precision):
    "Child: load, warm up, then run the parent's `<first step> <count>` commands until an empty line; report peak RSS."
    warnings.filterwarnings('ignore')
    from llmlite.core import MemoryMeter
    from llmlite.data import lm_loss
    dl = loader(bs, seq)
    if side.startswith('llmlite'):   # the Learner's own step: scheduled AdamW, logits only where a label follows
        from llmlite.loading import load
        from llmlite.cli import default_model
        from llmlite.adapters import add_adapters
        from llmlite.learner import Learner
        model, _ = load(default_model(), quant='nf4')
        add_adapters(model, kind, r=16, alpha=32)
        learn = Learner(model.train(), dl, lr=1e-3, clip=None, show_every=0, precision='fp32' if side == 'llmlite-fp32' else precision)
        learn.total = steps + warmup
        step = lambda i: learn.one_step(i + 1)['loss']
    else:
        import transformers, peft
        dt = torch.bfloat16 if precision == 'bf16' else torch.float32
        qc = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dt)
        model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, quantization_config=qc, device_map='cpu', dtype=torch.float32)
        model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0., target_modules='all-linear', use_dora=kind == 'dora', task_type='CAUSAL_LM')).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        def step(i):
            b = dl.batch(i)
            with torch.autocast('cpu', torch.bfloat16, enabled=precision == 'bf16'): logits = model(input_ids=b['input_ids']).logits
            loss = lm_loss(logits, b['labels']); loss.backward(); opt.step(); opt.zero_grad()
            return loss.item()
    for i in range(warmup): step(i)
    say(ready=True)
    with MemoryMeter() as mem:
        for line in sys.stdin:
            if not line.strip(): break
            i0, n = map(int, line.split())
            t = time.perf_counter()
            losses = [step(i) for i in range(i0, i0 + n)]
            say(dt=time.perf_counter() - t, toks=sum(dl.batch(i)['input_ids'].numel() for i in range(i0, i0 + n)), loss=losses[-1])
    say(peak=mem.peak, trainable=sum(p.numel() for p in model.parameters() if p.requires_grad))

def matmul_ceiling(dtype=torch.float32, n=2048, reps=5):
    "Measured `dtype` matmul GFLOP/s on this machine (best of `reps`)."
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9

def ask(p, cmd=None):
    "Send `cmd` to child `p` (if any) and return its next report."
    if cmd is not None: p.stdin.write(cmd + '\n'); p.stdin.flush()
    for line in p.stdout:
        if line.startswith('@'): return json.loads(line[1:])
    sys.exit(f"a side exited early:\n{p.stderr.read()[-3000:]}")

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--steps', type=int, default=20, help='timed steps per side, in all')
    ap.add_argument('--rounds', type=int, default=20, help='alternating rounds the timed steps are split into')
    ap.add_argument('--warmup', type=int, default=2); ap.add_argument('--bs', type=int, default=8)
    ap.add_argument('--seq', type=int, default=128, help='row length (rows are packed past 128)')
    ap.add_argument('--kind', choices=('lora', 'dora'), default='lora')
    ap.add_argument('--precision', choices=('fp32', 'bf16'), default='fp32')
    ap.add_argument('--side', nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side: train(*a.side, a.steps, a.warmup, a.bs, a.seq, a.kind, a.precision); sys.exit()
    sys.stdout.reconfigure(line_buffering=True)   # each line out as soon as it is measured
    from llmlite.cli import default_model
    from llmlite.models import Config
    sides = ('llmlite', 'transformers') + (('llmlite-fp32',) if a.precision == 'bf16' else ())
    per = [a.steps // a.rounds + (r < a.steps % a.rounds) for r in range(a.rounds)]
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        # transformers + bitsandbytes quantize from a dense HF directory: write the GGUF's weights as one, outside the timing
        from llmlite.loading import load, save_model
        model, tok = load(default_model())
        save_model(model, d/'hf', tok)
        del model
        ps = {s: subprocess.Popen([sys.executable, __file__, '--side', s, str(d/'hf'), '--steps', str(a.steps), '--warmup', str(a.warmup), '--bs', str(a.bs), '--seq', str(a.seq), '--kind', a.kind, '--precision', a.precision],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in sides}
        for p in ps.values(): ask(p)
        rounds, i0 = [], a.warmup
        for r, n in enumerate(per):
            order = sides[r % len(sides):] + sides[:r % len(sides)]   # rotate who goes first
            rounds.append({s: ask(ps[s], f"{i0} {n}") for s in order})
            i0 += n
        res = {s: ask(ps[s], '') for s in sides}
        for p in ps.values(): p.wait()
    for s in sides:
        res[s] |= dict(tok_s=sum(r[s]['toks'] for r in rounds) / sum(r[s]['dt'] for r in rounds), step_s=sum(r[s]['dt'] for r in rounds) / a.steps, last_loss=rounds[-1][s]['loss'])
    rate = lambda r, s: r[s]['toks'] / r[s]['dt']
    cfg = Config.from_name('SmolLM2-135M')
    n_lin = cfg.n_params - (2 * cfg.n_layers + 1) * cfg.dim   # every matmul weight: the blocks' linears and the (tied) head
    for other in sides[1:]:
        ratios = [rate(r, 'llmlite') / rate(r, other) for r in rounds]
        print(f"llmlite / {other} tokens/s per round: {' '.join(f'{x:.2f}' for x in ratios)}")
        q1, med, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        print(f"llmlite / {other}: {med:.2f}x tokens/s (median of rounds; quartiles {q1:.2f}-{q3:.2f}), {res['llmlite']['peak'] / res[other]['peak']:.2f}x peak RSS")
    # the ceilings last: an emulated bf16 product (a CPU without bf16 instructions) takes minutes, and the ratios above are printed by then
    dt = torch.bfloat16 if a.precision == 'bf16' else torch.float32
    ceil = {a.precision: matmul_ceiling(dt)} | ({'fp32': matmul_ceiling()} if a.precision == 'bf16' else {})
    print(f"QLoRA SmolLM2-135M-Instruct, NF4 base, {a.kind} r=16 all linear, {a.precision}, bs {a.bs}, seq {a.seq}{' packed' if a.seq > 128 else ' (date task, ~74 tokens/row)'}, "
          f"{a.steps} timed steps in {a.rounds} rotating rounds after {a.warmup} warm-up, {torch.get_num_threads()} threads; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print(f"matmul ceiling (2048^3): {', '.join(f'{k} {v:.1f}' for k, v in ceil.items())} GFLOP/s; GFLOP/s below are model FLOPs (as in MFU): 4 x matmul params x tokens")
    print("(frozen base: forward + input gradient), whether or not a side skips work such as the head where no label follows; % of the side's own precision's ceiling")
    print(f"{'':14}{'tokens/s':>10}{'step s':>9}{'peak RSS MiB':>14}{'GFLOP/s':>9}{'% ceiling':>11}{'last loss':>11}")
    for k, o in res.items():
        g = 4 * n_lin * o['tok_s'] / 1e9
        print(f"{k:14}{o['tok_s']:>10.1f}{o['step_s']:>9.2f}{o['peak'] / 2**20:>14.0f}{g:>9.1f}{100 * g / ceil['fp32' if k.endswith('fp32') else a.precision]:>10.1f}%{o['last_loss']:>11.4f}")
