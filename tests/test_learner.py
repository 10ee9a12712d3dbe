"Learner: exact resume after SIGKILL at random moments, interrupted saves, spikes, NaN steps, schedules, QLoRA."
import math, os, random, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from llmlite.learner import Learner, linear, cosine
from llmlite.checkpoints import checkpoints, read_checkpoint
from llmlite.data import Loader, make_rows, lm_loss
from llmlite.models import Config, Decoder
from llmlite.core import LLMLiteError, seed_everything

@pytest.fixture(autouse=True)
def one_thread():
    "Tiny models run fastest, and steadiest when other processes share the cores, on one thread."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def tiny(seed=0):
    seed_everything(seed)
    return Decoder(Config(vocab_size=64, dim=64, n_layers=2, n_heads=4, hidden=128, max_seq_len=64))

def memo(n=16, seq_len=16, bs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    exs = [(torch.randint(0, 64, (seq_len,), generator=g).tolist(), [True] * seq_len) for _ in range(n)]
    return Loader([make_rows(exs, seq_len)], bs, seed=seed)

# The run that gets killed: a mixture whose weights follow progress, RNG noise from torch, NumPy and Python
# (so the generators must be restored), gradient accumulation, and a pause per step so the kill lands mid-run.
SCRIPT = r'''
import random, sys, time, numpy as np, torch
torch.set_num_threads(1)
from llmlite.core import seed_everything
from llmlite.models import Config, Decoder
from llmlite.data import make_rows, mix
from llmlite.learner import Learner
out, pause = sys.argv[1], float(sys.argv[2])
seed_everything(0)
m = Decoder(Config(vocab_size=64, dim=64, n_layers=2, n_heads=4, hidden=128, max_seq_len=64))
def noise(mod, args, y):
    if pause: time.sleep(pause)
    return y + 1e-2 * (1 + random.random() + float(np.random.rand())) * torch.randn_like(y)
m.emb.register_forward_hook(noise)
g = torch.Generator().manual_seed(0)
src = lambda n, L: make_rows([(torch.randint(0, 64, (L,), generator=g).tolist(), [True] * L) for _ in range(n)], L)
data = mix([src(12, 16), src(8, 12)], lambda p: [1 - p / 2, 0.5 + p / 2], bs=3, seed=0)
Learner(m, data, lr=5e-3, wd=0.05, accum=2, path=out, save_every=3, keep=2, snap_every=4, show_every=0).fit(steps=30)
'''

def _run(script, out, pause=0.):
    return subprocess.Popen([sys.executable, str(script), str(out), str(pause)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)

def _final(out):
    ck = read_checkpoint(out)
    assert ck['state']['step'] == 30
    return ck

def test_kill_and_resume_is_exact(tmp_path):
    script = tmp_path/'train.py'; script.write_text(SCRIPT)
    p = _run(script, tmp_path/'ref'); assert p.wait(240) == 0, p.stdout.read().decode()[-3000:]
    ref = _final(tmp_path/'ref')
    rng = random.Random(1234)
    for trial in range(3):
        out = tmp_path/f'kill{trial}'
        p = _run(script, out, pause=0.02)
        target, t0, log = rng.randrange(4, 25), time.time(), out/'metrics.jsonl'
        while p.poll() is None and time.time() - t0 < 120 and (not log.exists() or log.read_text().count('\n') < target): time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))                  # then anywhere: mid-step or mid-save
        os.kill(p.pid, signal.SIGKILL); p.wait()
        assert p.returncode == -signal.SIGKILL, f"trial {trial}: the run ended before the kill ({p.returncode})"
        killed_at = read_checkpoint(out)['state']['step']
        assert 0 < killed_at < 30
        print(f"trial {trial}: killed after checkpoint {killed_at}")
        p = _run(script, out); assert p.wait(240) == 0, p.stdout.read().decode()[-3000:]
        ck = _final(out)
        assert ck['state']['events'][0] == dict(event='resume', step=killed_at, checkpoint=f'step-{killed_at:06d}')
        assert set(ck['weights']) == set(ref['weights'])
        for k, v in ref['weights'].items(): assert torch.equal(ck['weights'][k], v), f"trial {trial} (killed after step {killed_at}): {k} differs"
        for k, v in ref['optimizer'].items(): assert torch.equal(ck['optimizer'][k], v), k
        assert not list((out/'checkpoints').glob('.*')), "a temporary directory was left behind"
        assert len(checkpoints(out)) == 2

def test_interrupted_save_keeps_previous(tmp_path, monkeypatch):
    learn = Learner(tiny(), memo(), lr=1e-2, path=tmp_path, save_every=5, show_every=0).fit(steps=10)
    assert [p.name for p in checkpoints(tmp_path)] == ['step-000005', 'step-000010']
    # a kill while writing leaves a temporary directory; a damaged newest checkpoint falls back to the one before
    part = tmp_path/'checkpoints'/'.tmp-step-000015-abc'; part.mkdir(); (part/'weights.safetensors').write_bytes(b'\0' * 7)
    (tmp_path/'checkpoints'/'step-000010'/'optimizer.safetensors').write_bytes(b'garbage')
    ck = read_checkpoint(tmp_path)
    assert ck['dir'].name == 'step-000005' and ck['state']['step'] == 5
    import llmlite.checkpoints as L
    def boom(*a, **k): raise OSError('disk full')
    monkeypatch.setattr(L, 'save_file', boom)
    learn.step = 12
    with pytest.raises(LLMLiteError, match=r'step-000012: could not be written \(OSError: disk full\); the previous version is untouched'): learn.save()
    monkeypatch.undo()
    assert [p.name for p in checkpoints(tmp_path)] == ['step-000005', 'step-000010']
    learn2 = Learner(tiny(1), memo(), lr=1e-2, path=tmp_path, save_every=5, show_every=0).fit(steps=10)
    assert learn2.events[0]['step'] == 5 and not part.exists()
    assert all(torch.equal(a, b) for a, b in zip(learn.params, learn2.params))

def test_schedules_reach_optimizer():
    learn = Learner(tiny(), memo(), lr=linear(1e-3, 1e-4), wd=cosine(0.1, 0.), eps=linear(1e-6, 1e-9), betas=lambda p: (0.9 - 0.1 * p, 0.99), show_every=0)
    seen, step = {}, learn.one_step
    def spy(n):
        r = step(n); seen[n] = [dict(g) for g in learn.opt.param_groups]
        return r
    learn.one_step = spy
    learn.fit(steps=21)
    for n in (1, 6, 11, 21):
        p, (g, g0) = (n - 1) / 20, seen[n]
        assert math.isclose(g['lr'], 1e-3 + (1e-4 - 1e-3) * p) and math.isclose(g0['lr'], g['lr'])
        assert math.isclose(g['weight_decay'], 0.05 * (1 + math.cos(math.pi * p)), abs_tol=1e-12) and g0['weight_decay'] == 0
        assert math.isclose(g['eps'], 1e-6 + (1e-9 - 1e-6) * p) and math.isclose(g['betas'][0], 0.9 - 0.1 * p) and g['betas'][1] == 0.99

def test_nonfinite_steps_skipped():
    learn = Learner(tiny(), memo(), lr=1e-2, show_every=0)
    learn.loss_fn = lambda lg, lb: lm_loss(lg, lb) * (math.nan if learn.step + 1 == 4 else 1.)
    w = learn.params[0]
    w.register_hook(lambda g: g * math.inf if learn.step + 1 == 9 else g)       # a non-finite gradient with a finite loss
    learn.fit(steps=30)
    assert [(e['event'], e['step']) for e in learn.events] == [('nonfinite', 4), ('nonfinite', 9)]
    assert learn.opt.state[w]['step'].item() == 28
    assert all(torch.isfinite(p).all() for p in learn.params)
    assert sum(r['loss'] for r in learn.log[-5:]) / 5 < 1.

def test_spike_rollback():
    data = memo(); batch = data.batch
    def corrupt(k):
        b = batch(k)
        if 60 <= k < 64: b['input_ids'] = b['labels'] = torch.randint(0, 64, b['input_ids'].shape)
        return b
    data.batch = corrupt
    learn = Learner(tiny(), data, lr=1e-2, show_every=0).fit(steps=120)
    rb = [e for e in learn.events if e['event'] == 'rollback']
    assert len(rb) >= 1 and rb[0]['to'] == 50 and rb[0]['skipped'] == [61, 63]
    assert learn.lr_mult == 0.5 ** len(rb)
    assert {61, 62, 63} <= learn.skip and learn.step == 120
    assert sum(r['loss'] for r in learn.log[-10:]) / 10 < 0.5

def test_qlora_learns(tmp_path):
    pytest.importorskip('llmlite.adapters')
    from llmlite.quant import quantize
    from llmlite.adapters import add_adapters
    m = add_adapters(quantize(tiny(), 'nf4'), 'lora', r=8, alpha=16)
    learn = Learner(m, memo(), lr=2e-2, path=tmp_path, show_every=0).fit(steps=80)
    first, last = learn.log[0]['loss'], sum(r['loss'] for r in learn.log[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    w = read_checkpoint(tmp_path)['weights']
    assert w and all('lora_' in k for k in w)        # the frozen 4-bit base is not in the checkpoint

def test_lr_find_restores():
    learn = Learner(tiny(), memo(), show_every=0)
    w0, rs = [p.clone() for p in learn.params], torch.get_rng_state()
    lr = learn.lr_find(n=60)
    assert 1e-6 < lr < 1
    assert all(torch.equal(a, b) for a, b in zip(w0, learn.params)) and torch.equal(rs, torch.get_rng_state())
    assert learn.opt.state == {} and learn.data.step == 0

def test_grad_ckpt_same_result():
    a = Learner(tiny(), memo(), lr=1e-2, show_every=0).fit(steps=5)
    b = Learner(tiny(), memo(), lr=1e-2, grad_ckpt=True, show_every=0).fit(steps=5)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a.params, b.params))
    assert 'forward' not in vars(b.model.blocks[0])       # turned off again after fit

def test_other_run_refused(tmp_path):
    Learner(tiny(), memo(), path=tmp_path, show_every=0).fit(steps=4)
    with pytest.raises(LLMLiteError, match='different run'): Learner(tiny(), memo(), path=tmp_path, show_every=0).fit(steps=6)
    # resume=False starts over; a finished run re-run is a no-op that loads its final state
    l = Learner(tiny(), memo(), path=tmp_path, show_every=0).fit(steps=6, resume=False)
    assert [p.name for p in checkpoints(tmp_path)] == ['step-000005', 'step-000006']
    l2 = Learner(tiny(3), memo(), path=tmp_path, show_every=0).fit(steps=6)
    assert l2.log == [] and all(torch.equal(a, b) for a, b in zip(l.params, l2.params))
