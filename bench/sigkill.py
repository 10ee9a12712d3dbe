"""SIGKILL at random moments of a checkpointed training run (during steps, saves and log writes), then resume: the final
weights must be bit-identical to an uninterrupted run's, and metrics.jsonl must hold each step once.

`python bench/sigkill.py [trials]` (default 20). Each trial runs a tiny decoder for 60 steps, saving every 4, in a child
process killed at a random moment (a random part of a step after a random step's log line), then resumes it to the end in a fresh process.
"""
import hashlib, json, os, random, signal, subprocess, sys, tempfile, time
from pathlib import Path

CHILD = r'''
import sys, torch
from llmlite.learner import Learner
from llmlite.data import Loader
from llmlite.models import Config, Decoder
from llmlite.core import seed_everything
seed_everything(0)
m = Decoder(Config(vocab_size=64, dim=64, n_layers=2, n_heads=4, hidden=128, max_seq_len=32))
g = torch.Generator().manual_seed(0); seqs = torch.randint(0, 64, (64, 17), generator=g)
class Data:
    "Deterministic batches by step: 8 of the 64 sequences."
    def __init__(self): self.step, self.steps = 0, None
    def batch(self, n):
        b = seqs[(torch.arange(8) + 8 * n) % 64]; self.step = n + 1
        return dict(input_ids=b[:, :-1], labels=b[:, 1:])
    def __len__(self): return 8
    def state_dict(self): return dict(step=self.step)
    def load_state_dict(self, d): self.step = d['step']
l = Learner(m, Data(), lr=1e-2, path=sys.argv[1], save_every=4, show_every=0, log_to=None)
l.fit(steps=60)
'''

def run(out):
    return subprocess.Popen([sys.executable, '-c', CHILD, str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

def digest(out):
    ck = sorted((Path(out)/'checkpoints').glob('step-*'))[-1]
    rows = [json.loads(l) for l in (Path(out)/'metrics.jsonl').read_text().splitlines() if l.strip()]
    steps = [r['step'] for r in rows if 'loss' in r and 'event' not in r]
    return hashlib.sha256((ck/'weights.safetensors').read_bytes()).hexdigest(), ck.name, steps

n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
rng = random.Random(0)
ref_dir = Path(tempfile.mkdtemp())
t0 = time.time(); p = run(ref_dir); p.wait(); full = time.time() - t0
assert p.returncode == 0, p.stderr.read().decode()[-2000:]
ref = digest(ref_dir)
print(f"uninterrupted run: {full:.1f}s, final checkpoint {ref[1]}, weights {ref[0][:12]}; load {os.getloadavg()}")
good = landed = 0
for i in range(n):
    d = Path(tempfile.mkdtemp()); p = run(d)
    at, extra = rng.randint(3, 58), rng.uniform(0, 0.4)         # after a random step's log line, a random part of a step on
    while p.poll() is None and not ((d/'metrics.jsonl').exists() and (d/'metrics.jsonl').read_bytes().count(b'\n') >= at): time.sleep(0.002)
    time.sleep(extra); p.send_signal(signal.SIGKILL); p.wait()
    hit = p.returncode == -signal.SIGKILL; landed += hit          # not hit: the run had already finished (the machine sped up)
    q = run(d); q.wait()
    got = digest(d) if q.returncode == 0 else None
    ok = got is not None and got[0] == ref[0] and got[2] == list(range(1, 61))
    good += ok
    print(f"trial {i + 1:2}: {'killed' if hit else 'finished before the kill'} {extra:.2f} s after log line {at:2}; resumed {'ok' if q.returncode == 0 else 'FAILED'}; weights {'identical' if got and got[0] == ref[0] else 'DIFFER'}; "
          f"metric steps {'each once' if got and got[2] == list(range(1, 61)) else 'WRONG'}")
print(f"{good} of {n} trials ({landed} killed mid-run): resume bit-identical, metrics without duplicated steps; load {os.getloadavg()}")
sys.exit(0 if good == n else 1)
