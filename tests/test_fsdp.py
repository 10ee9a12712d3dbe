"FSDP2 on CPU with gloo: 2-rank QLoRA equals 1 process, 4-bit bytes gather exactly, checkpoints resume across world sizes, a killed rank fails fast; the Learner and `llmlite finetune` under torchrun on 2 ranks."
import gc, json, os, shutil, signal, subprocess, sys
from pathlib import Path
import pytest, torch, torch.nn as nn, torch.nn.functional as F, torch.distributed as dist
from safetensors.torch import load_file
from llmlite.core import LLMLiteError, MemoryMeter, rss
from llmlite.models import Config, Decoder
from llmlite.quant import quantize, QTensor
from llmlite.adapters import add_adapters, unload_adapters
from llmlite.peft import save_adapter
from llmlite.learner import Learner
from llmlite.dist import launch
from llmlite.fsdp import shard, check_world_size
from llmlite.checkpoints import save_checkpoint, read_checkpoint, load_checkpoint, checkpoints
from llmlite.plan import plan

STEPS = 6

def tiny(dim=256, hidden=512):
    "2-layer NF4 + LoRA decoder."
    torch.manual_seed(0)
    m = quantize(Decoder(Config(vocab_size=256, dim=dim, n_layers=2, n_heads=4, hidden=hidden, max_seq_len=64)), 'nf4')
    add_adapters(m, 'lora', r=4)
    for n, p in m.named_parameters():
        if 'lora_b' in n: nn.init.normal_(p, std=0.02)
    return m

def opt_for(m): return torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)

def step(m, o, i):
    "One QLoRA step on batch `i` (the same batch on every rank)."
    x = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(i))
    l = F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    l.backward(); o.step(); o.zero_grad()
    return l.item()

def _inner(w): return {k: getattr(w, k).clone() for k in w.names}

def work(out, ck, kw): _work(out, ck, **kw)
def _work(out, ck, start_from=None, steps=STEPS, save_every=0, kill_at=None, checkpointing=False, check_bytes=False, adapter=None, extra=False):
    "One rank's job: shard, maybe check the gathered 4-bit bytes, maybe resume, train, save, report losses (rank 0 writes `out`)."
    torch.set_num_threads(1)
    rank, ws = dist.get_rank(), dist.get_world_size()
    m = shard(tiny(), checkpointing=checkpointing); o = opt_for(m)
    res = {}
    if check_bytes:
        ref = {n: _inner(p) for n, p in tiny().named_parameters() if isinstance(p, QTensor)}
        same, smaller = True, True
        for i, b in enumerate(m.blocks):
            b.unshard()  # FSDP's all-gather, through QTensor's hooks
            for n, p in b.named_parameters(prefix=f"blocks.{i}"):
                if n in ref: same &= all(torch.equal(getattr(p, k), v) and getattr(p, k).dtype == v.dtype for k, v in ref[n].items())
            b.reshard()
        for n, p in m.named_parameters():
            if n in ref: smaller &= p.to_local().qdata.numel() * ws == ref[n]['qdata'].numel()
            if 'lora_b' in n: smaller &= p.to_local().shape[0] * ws == p.shape[0]
        res.update(bytes_equal=bool(same), sharded=bool(smaller), n_qtensors=len(ref))
    first = 0
    if start_from: first = load_checkpoint(m, o, read_checkpoint(start_from))['step']
    losses = {}
    for i in range(first, steps):
        if i == kill_at and rank == 1: os.kill(os.getpid(), signal.SIGKILL)
        losses[i] = step(m, o, i)
        if save_every and (i + 1) % save_every == 0: save_checkpoint(ck, m, o, i + 1)
    if adapter: save_adapter(m, adapter)
    if extra: res.update(learner=learner_losses(shard(tiny())), dora=run_steps(shard(tiny_dora())),
                         bf16=run_steps(shard(tiny(), mixed_precision='bf16', cpu_offload=True)))
    if rank == 0: open(out, 'w').write(json.dumps(dict(res, losses=losses, ws=ws)))

def run(tmp, name, ws, **kw):
    out = tmp/f"{name}.json"
    launch(work, ws, str(out), str(tmp/f"ck_{name}"), kw, timeout=30)
    r = json.loads(out.read_text()); r['losses'] = {int(k): v for k, v in r['losses'].items()}
    return r

@pytest.fixture(scope='module')
def ref():
    "Single-process losses and adapter after each step."
    torch.manual_seed(0)
    m = tiny(); o = opt_for(m)
    return [step(m, o, i) for i in range(STEPS)], m

@pytest.fixture(scope='module')
def two(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('fsdp')
    return tmp, run(tmp, 'two', 2, save_every=2, check_bytes=True, adapter=str(tmp/'adapter'), extra=True)

def test_two_ranks_match_one(ref, two):
    tmp, r = two
    assert r['ws'] == 2 and r['bytes_equal'] and r['sharded'] and r['n_qtensors'] == 14
    assert max(abs(r['losses'][i] - ref[0][i]) for i in range(STEPS)) < 1e-5, (r['losses'], ref[0])
    assert [p.name for p in checkpoints(tmp/'ck_two')] == [f"step-{i:06d}" for i in (2, 4, 6)]

def test_export_adapter_peft(ref, two, tmp_path):
    tmp, _ = two
    save_adapter(ref[1], tmp_path)
    got, want = load_file(tmp/'adapter'/'adapter_model.safetensors'), load_file(tmp_path/'adapter_model.safetensors')
    assert sorted(got) == sorted(want) and len(got) == 28
    assert max((got[k] - want[k]).abs().max().item() for k in got) < 1e-5
    assert json.loads((tmp/'adapter'/'adapter_config.json').read_text()) == json.loads((tmp_path/'adapter_config.json').read_text())

def test_resume_2_to_1(ref, two):
    tmp, _ = two
    r = run(tmp, 'two_to_one', 1, start_from=str(tmp/'ck_two'/'checkpoints'/'step-000004'), steps=6)
    assert sorted(r['losses']) == [4, 5]
    assert max(abs(r['losses'][i] - ref[0][i]) for i in (4, 5)) < 1e-5

def test_resume_1_to_2(ref, tmp_path):
    a = run(tmp_path, 'one', 1, steps=4, save_every=4)
    b = run(tmp_path, 'one_to_two', 2, start_from=str(tmp_path/'ck_one'), steps=6, checkpointing=True)
    assert sorted(b['losses']) == [4, 5]
    assert max(abs(x[i] - ref[0][i]) for x, ks in ((a['losses'], range(4)), (b['losses'], (4, 5))) for i in ks) < 1e-5

def test_killed_rank_fails_fast_and_resumes(ref, tmp_path):
    "The launcher reports the dead rank itself (not a collective timeout on the survivor: that error names no signal), then a resume ends as 1 process does."
    with pytest.raises(LLMLiteError, match='rank 1 of 2 died .*SIGKILL.*resume from the last checkpoint'):
        run(tmp_path, 'killed', 2, save_every=2, kill_at=5)
    ck = tmp_path/'ck_killed'
    assert [p.name for p in checkpoints(ck)] == ['step-000002', 'step-000004']
    launch(work, 2, str(tmp_path/'resumed.json'), str(ck), dict(start_from=str(ck), save_every=2), timeout=30)
    losses = {int(k): v for k, v in json.loads((tmp_path/'resumed.json').read_text())['losses'].items()}
    assert sorted(losses) == [4, 5]
    assert max(abs(losses[i] - ref[0][i]) for i in losses) < 1e-5

def test_bad_world_size_and_wrong_checkpoint(two):
    tmp, _ = two
    for ws in (2, 3, 4): check_world_size(tiny(), ws); check_world_size(tiny(128, 576), ws)
    with pytest.raises(LLMLiteError, match=r"blocks.0.attn.wq.weight: a nf4 weight of shape \(72, 72\) can't be split over 2 ranks \(a shard of 36 rows holds 2592 weights"):
        check_world_size(quantize(Decoder(Config(vocab_size=256, dim=72, n_layers=2, n_heads=4, hidden=256)), 'nf4'), 2)
    m = tiny(256, 1024)
    with pytest.raises(LLMLiteError, match=r"checkpoint is from another model: 'blocks.0.mlp.gate.lora_b.default' has shape \[512, 4\] there, \[1024, 4\] here"):
        load_checkpoint(m, opt_for(m), read_checkpoint(tmp/'ck_two'))

WIDE = [dict(dim=128, hidden=576), dict(dim=128, hidden=577)]   # 128- and 576-wide layers (SmolLM2's width); 577 rows split unevenly, 289 + 288
WSTEPS = 10

def gathered_equal(m, ref):
    "For each block: all-gather it through QTensor's hooks and compare every 4-bit weight's inner tensors with the unsharded model's, byte for byte."
    got = []
    for i, b in enumerate(m.blocks):
        b.unshard()
        got += [p.names == ref[n].names and all(torch.equal(getattr(p, k), v) and getattr(p, k).dtype == v.dtype for k, v in ref[n].inner.items())
                for n, p in b.named_parameters(prefix=f"blocks.{i}") if n in ref]
        b.reshard()
    return got

def wide_work(out):
    "2 ranks: per model of WIDE, whether the gathered weights equal the unsharded ones, the packed bytes each rank holds, 10 QLoRA steps' losses."
    torch.set_num_threads(1)
    res = []
    for kw in WIDE:
        ref = {n: p for n, p in tiny(**kw).named_parameters() if isinstance(p, QTensor)}
        m = shard(tiny(**kw)); o = opt_for(m)
        held = [None] * dist.get_world_size()
        dist.all_gather_object(held, sum(p.to_local().qdata.numel() for n, p in m.named_parameters() if n in ref))
        res.append(dict(same=gathered_equal(m, ref), held=held, whole=sum(p.qdata.numel() for p in ref.values()), losses=[step(m, o, i) for i in range(WSTEPS)]))
    if dist.get_rank() == 0: open(out, 'w').write(json.dumps(res))

def test_any_shape_two_ranks(tmp_path):
    "NF4 QLoRA on 128- and 576-wide layers (and rows that split unevenly) over 2 ranks: gathered 4-bit weights are the unsharded bytes, each rank holds its half, 10 steps' losses are one process's."
    launch(wide_work, 2, str(tmp_path/'wide.json'), timeout=60)
    for kw, r in zip(WIDE, json.loads((tmp_path/'wide.json').read_text())):
        m = tiny(**kw); o = opt_for(m); want = [step(m, o, i) for i in range(WSTEPS)]
        print(kw, 'max |loss difference| over', WSTEPS, 'steps:', max(abs(a - b) for a, b in zip(r['losses'], want)), 'packed bytes per rank', r['held'], 'of', r['whole'])
        assert len(r['same']) == 14 and all(r['same']), r['same']
        assert sum(r['held']) == r['whole'] and max(r['held']) < r['whole'] * 0.51, r
        assert max(abs(a - b) for a, b in zip(r['losses'], want)) < 1e-5, (r['losses'], want)

MEM = dict(vocab_size=8192, dim=1024, n_layers=4, n_heads=8, hidden=2048, max_seq_len=1024)
def mem_work(out, bs, T):
    "Peak RSS growth of one rank over its first QLoRA step (optimizer state included), from before the model exists (after a warm-up step on another model)."
    torch.set_num_threads(1)
    w = shard(tiny()); step(w, opt_for(w), 0); del w; gc.collect()  # warm-up: libraries, thread pools and allocator arenas a first step sets up for good
    base = rss()
    torch.manual_seed(0)
    m = quantize(Decoder(Config(**MEM)), 'nf4'); add_adapters(m, 'lora', r=8)
    m = shard(m, checkpointing=True); o = opt_for(m)
    x = torch.randint(0, MEM['vocab_size'], (bs, T + 1))
    def one():
        l = F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()); l.backward(); o.step(); o.zero_grad()
    with MemoryMeter() as mm: one()
    open(f"{out}.{dist.get_rank()}", 'w').write(json.dumps((mm.peak - base) / 2**30))

def test_plan_matches_measured_peak_rss(tmp_path, monkeypatch):
    monkeypatch.setenv('MALLOC_MMAP_THRESHOLD_', '65536')  # freed tensors go back to the OS, so RSS tracks what is live
    launch(mem_work, 2, str(tmp_path/'mem'), 2, 256, timeout=60)
    got = [json.loads((tmp_path/f'mem.{r}').read_text()) for r in range(2)]
    want = plan(Config(**MEM), world_size=2, seq_len=256, bs=2, r=8, dtype='fp32', checkpointing=True)['peak_gib']
    print(f'measured peak RSS growth per rank {got} GiB, planned {want} GiB')
    assert all(abs(g / want - 1) < 0.15 for g in got), (got, want)

def tiny_dora():
    m = tiny(); unload_adapters(m)
    torch.manual_seed(1); add_adapters(m, 'dora', r=4)
    for n, p in m.named_parameters():
        if 'lora_b' in n: nn.init.normal_(p, std=0.02)
    return m

class Batches:
    "The smallest loader a Learner takes: batch `i` is fixed by its seed."
    def __init__(self): self.step, self.steps = 0, 0
    def __len__(self): return 4
    def batch(self, i):
        x = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(i)); return dict(input_ids=x, labels=x)
    def state_dict(self): return dict(step=self.step)
    def load_state_dict(self, d): self.step = d['step']

def learner_losses(m):
    l = Learner(m, Batches(), lr=1e-2, show_every=0, clip=1.); l.fit(steps=3)
    return [r['loss'] for r in l.log]

def run_steps(m):
    o = opt_for(m); return [step(m, o, i) for i in range(3)]

def test_learner_dora_bf16(two):
    "The Learner's loop (clipping included) and DoRA run on a sharded model unchanged, with the single-process losses; bf16 gathers stay close."
    r = two[1]
    for got, want in ((r['learner'], learner_losses(tiny())), (r['dora'], run_steps(tiny_dora()))):
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5, (got, want)
    assert max(abs(a - b) for a, b in zip(r['bf16'], run_steps(tiny()))) < 0.05, r['bf16']

class Split:
    "Batch `i`: 4 rows of 17 tokens (two distinct batches, so the loss falls fast), labels masked unevenly, this rank's contiguous part of them."
    def __init__(self, spike=(), kill=None): self.step, self.steps, self.rank, self.world, self.spike, self.kill = 0, 0, 0, 1, spike, kill
    def __len__(self): return 8
    def batch(self, i):
        if i == self.kill and self.rank == 1: os.kill(os.getpid(), signal.SIGKILL)
        x = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(100 + i if i in self.spike else i % 2)); y = x.clone()
        for r in range(4): y[r, :(3 * r + i) % 7] = -100
        k = 4 // self.world
        return dict(input_ids=x[self.rank * k:(self.rank + 1) * k], labels=y[self.rank * k:(self.rank + 1) * k])
    def state_dict(self): return dict(step=self.step)
    def load_state_dict(self, d): self.step = d['step']

LSTEPS = 20
def fit_learner(path, kill=None):
    "A Learner run on tiny() (sharded in a process group) with random batches at steps 15-17, a spike it rolls back: its (step, loss) rows and events."
    torch.set_num_threads(1)
    m = shard(tiny()) if dist.is_initialized() else tiny()
    l = Learner(m, Split(spike=(14, 15, 16), kill=kill), lr=1e-2, spike=1.3, path=path, save_every=5, keep=5, show_every=0, precision='fp32').fit(steps=LSTEPS)
    return dict(rows=[(r['step'], r['loss']) for r in l.log], events=[e for e in l.events if e['event'] != 'resume'])

def learner_work(out, jobs):
    res = [fit_learner(**j) for j in jobs]
    if dist.get_rank() == 0: open(out, 'w').write(json.dumps(res))

def learn_on(tmp, ws, *jobs):
    launch(learner_work, ws, str(tmp/'out.json'), list(jobs), timeout=60)
    return json.loads((tmp/'out.json').read_text())

def same_rows(a, b): return [s for s, _ in a] == [s for s, _ in b] and max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-5

def cut(src, dst, step):
    "A copy of run folder `src` as if killed after the checkpoint of `step`."
    shutil.copytree(src, dst)
    for d in (dst/'checkpoints').glob('step-*'):
        if int(d.name[5:]) > step: shutil.rmtree(d)
    return dst

def rows(d): return [(r['step'], r['loss']) for r in map(json.loads, (d/'metrics.jsonl').read_text().splitlines()) if 'loss' in r]

@pytest.fixture(scope='module')
def lref(tmp_path_factory):
    "The Learner run in one process."
    tmp = tmp_path_factory.mktemp('lref')
    return tmp, fit_learner(tmp/'run')

@pytest.fixture(scope='module')
def ltwo(tmp_path_factory, lref):
    "The run on 2 ranks with rank 1 killed at step 13, then run again; the second launch also resumes the 1-process run's step-10 checkpoint."
    tmp = tmp_path_factory.mktemp('ltwo')
    with pytest.raises(LLMLiteError) as e: learn_on(tmp, 2, dict(path=str(tmp/'run'), kill=12))
    killed = dict(error=str(e.value), cks=[d.name for d in sorted((tmp/'run'/'checkpoints').glob('step-*'))], rows=rows(tmp/'run'))
    return tmp, killed, learn_on(tmp, 2, dict(path=str(tmp/'run')), dict(path=str(cut(lref[0]/'run', tmp/'from1', 10))))

def test_learner_killed_rank_resumes(lref, ltwo):
    "A rank killed at step 13 stops the job with an error naming it; running again resumes from the step-10 checkpoint and ends as 1 process does."
    tmp, killed, (again, _) = ltwo
    assert 'rank 1 of 2 died (signal SIGKILL)' in killed['error'], killed
    assert killed['cks'] == ['step-000005', 'step-000010'] and [s for s, _ in killed['rows']] == list(range(1, 13))
    assert same_rows(again['rows'], lref[1]['rows'][10:])

def test_learner_sharded(lref, ltwo):
    "On 2 ranks the Learner trains, rolls back the spike and checkpoints as 1 process; a 1-process checkpoint resumes on 2 ranks and a 2-rank one on 1."
    (t1, ref), (t2, _, (again, one_two)) = lref, ltwo
    assert [(e['event'], e['to'], e['skipped']) for e in ref['events']] == [('rollback', 10, [15, 17])]
    assert same_rows(rows(t2/'run'), ref['rows']) and rows(t1/'run') == ref['rows']    # every step's loss, logged once by rank 0 (steps 1-10 by the killed run)
    assert [(e['event'], e['step']) for e in again['events']] == [(e['event'], e['step']) for e in ref['events']]
    a, b = load_file(t2/'run/checkpoints/step-000020/weights.safetensors'), load_file(t1/'run/checkpoints/step-000020/weights.safetensors')
    assert sorted(a) == sorted(b) and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4   # 20 Adam steps amplify rounding
    assert (t2/'run'/'curves.png').exists() and same_rows(one_two['rows'], ref['rows'][10:])
    two_one = fit_learner(cut(t2/'run', t2/'from2', 10))
    assert same_rows(two_one['rows'], ref['rows'][10:]) and [e['step'] for e in two_one['events']] == [e['step'] for e in ref['events']]

def test_torchrun_finetune(smol_path, tmp_path):
    "`torchrun --nproc_per_node 2 llmlite finetune`: sharded over 2 gloo ranks, rank 0 alone prints and writes, the losses and adapter are one process's."
    from llmlite.loading import save_model
    from llmlite.tokenizer import Tokenizer
    from llmlite.jobs import finetune, Finetune
    torch.manual_seed(0)   # dim 256, 2 kv heads: every NF4 weight splits over 2 ranks
    save_model(Decoder(Config(vocab_size=49152, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, hidden=512, tie_embeddings=True)), tmp_path/'model', Tokenizer.from_gguf(smol_path))
    recs = [dict(messages=[dict(role='user', content=f'Say {w}.'), dict(role='assistant', content=w)]) for w in ['red', 'green', 'blue', 'cyan'] * 4]
    (tmp_path/'chat.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
    o = dict(model=tmp_path/'model', data=tmp_path/'chat.jsonl', eval_data=tmp_path/'chat.jsonl', steps=3, eval_n=1, bs=2, seq_len=64, show=0, precision='fp32')   # fp32: bf16 rounding differs between 1 and 2 ranks
    flags = [x for k, v in o.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '--no-python', Path(sys.executable).parent/'llmlite',
                        'finetune', *flags, '--out', tmp_path/'two'], capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'sharded over 2 ranks (gloo)' in r.stdout and r.stdout.count('held-out exact match before') == 1 and r.stdout.count('adapter saved to') == 1, r.stdout
    finetune(Finetune(**{k: str(v) if isinstance(v, Path) else v for k, v in o.items()}, out=str(tmp_path/'one')))
    two, one = rows(tmp_path/'two'), rows(tmp_path/'one')
    assert [s for s, _ in two] == [1, 2, 3] and all(abs(a / b - 1) < 1e-5 for (_, a), (_, b) in zip(two, one)), (two, one)
    a, b = (load_file(tmp_path/d/'adapter'/'adapter_model.safetensors') for d in ('two', 'one'))
    assert sorted(a) == sorted(b) and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5

def tiny_bert():
    "A BERT classifier, NF4 base (its fresh head dense), LoRA plus the head trained in full."
    from llmlite.encoders import SeqClassifier
    torch.manual_seed(0)
    m = SeqClassifier(Config(arch='bert', vocab_size=128, dim=256, n_layers=2, n_heads=4, hidden=512, max_seq_len=16, pos='abs', pre_norm=False,
                             norm='ln', bias=True, gated=False, act='gelu', type_vocab_size=2), n_labels=3)
    quantize(m, 'nf4', skip=('classifier', 'pooler')); add_adapters(m, 'lora', r=4)
    return m

def tiny_t5():
    "A T5 with LoRA on every linear layer (dense base)."
    from llmlite.seq2seq import EncoderDecoder
    torch.manual_seed(0)
    m = EncoderDecoder(Config(arch='t5', vocab_size=128, dim=64, n_layers=2, n_dec_layers=2, n_heads=4, hidden=128, pos='rel', attn_scale=1.))
    add_adapters(m, 'lora', r=4)
    for n, p in m.named_parameters():
        if 'lora_b' in n: nn.init.normal_(p, std=0.02)
    return m

class Shapes(Batches):
    "Classifier or seq2seq batches of 4 rows, split over the ranks as the Learner asks."
    def __init__(self, kind): super().__init__(); self.kind, self.rank, self.world = kind, 0, 1
    def batch(self, i):
        g = torch.Generator().manual_seed(i)
        x, valid = torch.randint(1, 128, (4, 12), generator=g), torch.ones(4, 12, dtype=torch.bool); valid[1, 7:] = False
        b = dict(input_ids=x, valid=valid, labels=torch.randint(0, 3, (4,), generator=g))
        if self.kind == 't5':
            y = torch.randint(2, 128, (4, 6), generator=g)
            b.update(dec_ids=torch.cat([torch.zeros(4, 1, dtype=torch.long), y[:, :-1]], 1), dec_valid=torch.ones(4, 6, dtype=torch.bool), labels=y)
        r = slice(self.rank * 4 // self.world, (self.rank + 1) * 4 // self.world)
        return {k: v[r] for k, v in b.items()}

def shape_losses(make, kind, sharded):
    m = make(); m = shard(m) if sharded else m
    l = Learner(m, Shapes(kind), lr=1e-2, show_every=0, precision='fp32'); l.fit(steps=3)
    return [r['loss'] for r in l.log]

def shapes_work(out):
    torch.set_num_threads(1)
    res = dict(bert=shape_losses(tiny_bert, 'bert', True), t5=shape_losses(tiny_t5, 't5', True))
    if dist.get_rank() == 0: open(out, 'w').write(json.dumps(res))

def test_learner_sharded_encoders(tmp_path):
    "A QLoRA BERT classifier (head trained in full) and a LoRA T5 train sharded over 2 ranks with the single-process losses."
    launch(shapes_work, 2, str(tmp_path/'shapes.json'), timeout=30)
    got = json.loads((tmp_path/'shapes.json').read_text())
    for k, make in (('bert', tiny_bert), ('t5', tiny_t5)):
        want = shape_losses(make, k, False)
        assert max(abs(a - b) for a, b in zip(got[k], want)) < 1e-5, (k, got[k], want)
