"""QLoRA on CPU, llmlite vs transformers + PEFT + bitsandbytes, same model, data, batch, sequence length and rank.

SmolLM2-135M-Instruct with an NF4 base (fp32 compute) and LoRA r=16 on every linear layer of the blocks,
trained with AdamW on the same batches of the bundled date task (loss on the responses): llmlite through its
`Learner`, transformers + PEFT through a plain loop over the same batches. Each side runs in a fresh
subprocess and reports training tokens/s (after warm-up steps) and peak RSS (sampled) during training; the
parent prints ratios and the achieved GFLOP/s against a measured fp32 matmul ceiling.
Usage: python bench/qlora_cpu.py [--steps 10] [--warmup 2] [--bs 8]
"""
import argparse, json, subprocess, sys, tempfile, time, warnings
from pathlib import Path
import torch

def loader(bs):
    "The bundled date task's training batches: the same for both sides (the order is a function of the seed)."
    from llmlite.cli import default_model, bundled
    from llmlite.data import chat_data
    from llmlite.tokenizer import Tokenizer
    return chat_data(bundled('dates_train.jsonl'), Tokenizer.from_gguf(default_model()), seq_len=128, bs=bs, seed=0)

def train(side, hf_dir, steps, warmup, bs):
    warnings.filterwarnings('ignore')
    from llmlite.core import MemoryMeter
    from llmlite.data import lm_loss
    dl = loader(bs)
    if side == 'llmlite':   # the Learner's own step: scheduled AdamW, logits only where a label follows
        from llmlite.checkpoints import load
        from llmlite.cli import default_model
        from llmlite.adapters import add_adapters
        from llmlite.learner import Learner
        model, _ = load(default_model(), quant='nf4')
        add_adapters(model, 'lora', r=16, alpha=32)
        learn = Learner(model.train(), dl, lr=1e-3, clip=None, show_every=0)
        learn.total = steps + warmup
        step = lambda i: learn.one_step(i + 1)['loss']
    else:
        import transformers, peft
        qc = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
        model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, quantization_config=qc, device_map='cpu', dtype=torch.float32)
        model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0., target_modules='all-linear', task_type='CAUSAL_LM')).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        def step(i):
            b = dl.batch(i)
            loss = lm_loss(model(input_ids=b['input_ids']).logits, b['labels']); loss.backward(); opt.step(); opt.zero_grad()
            return loss.item()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for i in range(warmup): step(i)
    with MemoryMeter() as mem:
        t = time.perf_counter()
        losses = [step(i) for i in range(warmup, warmup + steps)]
        dt = time.perf_counter() - t
    toks = sum(dl.batch(i)['input_ids'].numel() for i in range(warmup, warmup + steps))
    print(json.dumps(dict(tok_s=toks / dt, step_s=dt / steps, peak=mem.peak, trainable=trainable, last_loss=losses[-1])))

def matmul_ceiling(n=2048, reps=5):
    "Measured fp32 matmul GFLOP/s on this machine (best of `reps`)."
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--steps', type=int, default=10); ap.add_argument('--warmup', type=int, default=2); ap.add_argument('--bs', type=int, default=8)
    ap.add_argument('--side', nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side: train(*a.side, a.steps, a.warmup, a.bs); sys.exit()
    from llmlite.cli import default_model
    from llmlite.models import Config
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        # transformers + bitsandbytes quantize from a dense HF directory: write the GGUF's weights as one, outside the timing
        from llmlite.checkpoints import load, save_model
        model, tok = load(default_model())
        save_model(model, d/'hf', tok)
        del model
        res = {}
        for side in ('llmlite', 'transformers'):
            r = subprocess.run([sys.executable, __file__, '--side', side, str(d/'hf'), '--steps', str(a.steps), '--warmup', str(a.warmup), '--bs', str(a.bs)],
                               capture_output=True, text=True)
            if r.returncode: sys.exit(f"{side} failed:\n{r.stderr[-3000:]}")
            res[side] = json.loads(r.stdout.strip().splitlines()[-1])
    cfg = Config.from_name('SmolLM2-135M')
    n_lin = cfg.n_params - (2 * cfg.n_layers + 1) * cfg.dim   # every matmul weight: the blocks' linears and the (tied) head
    ceil = matmul_ceiling()
    l, t = res['llmlite'], res['transformers']
    print(f"QLoRA SmolLM2-135M-Instruct, NF4 base, LoRA r=16 all linear, fp32, bs {a.bs}, date task (~74 tokens/row), {a.steps} timed steps after {a.warmup} warm-up, {torch.get_num_threads()} threads")
    print(f"fp32 matmul ceiling (2048^3): {ceil:.1f} GFLOP/s; GFLOP/s below are model FLOPs (as in MFU): 4 x matmul params x tokens")
    print("(frozen base: forward + input gradient), whether or not a side skips work such as the head where no label follows")
    print(f"{'':14}{'tokens/s':>10}{'step s':>9}{'peak RSS MiB':>14}{'GFLOP/s':>9}{'% ceiling':>11}{'last loss':>11}")
    for k, o in res.items():
        g = 4 * n_lin * o['tok_s'] / 1e9
        print(f"{k:14}{o['tok_s']:>10.1f}{o['step_s']:>9.2f}{o['peak'] / 2**20:>14.0f}{g:>9.1f}{100 * g / ceil:>10.1f}%{o['last_loss']:>11.4f}")
    print(f"llmlite / transformers: {l['tok_s'] / t['tok_s']:.2f}x tokens/s, {l['peak'] / t['peak']:.2f}x peak RSS")
