"""`llmlite serve` driven by the official `openai` client, and mixed-adapter batches: one batch over one 4-bit base, each row
through its own adapter (or none), token for token what each prompt gets alone."""
import os, signal, socket, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
import httpx, openai, pytest, torch
from tokenizers import Tokenizer as TkTokenizer, models, pre_tokenizers, decoders, trainers
import llmlite.serve as serve_mod
from llmlite.core import seed_everything
from llmlite.models import Config, Decoder
from llmlite.tokenizer import Tokenizer
from llmlite.loading import load, save_model
from llmlite.adapters import add_adapters, adapter_layers
from llmlite.peft import load_adapter, save_adapter
from llmlite.generate import generate, generate_ids
from llmlite.serve import Engine, serve_app, running

ADAPTERS = {'a': ('lora', 4, 'all-linear'), 'b': ('dora', 4, 'all-linear'), 'c': ('lora', 8, ['wq', 'wv']), 'd': ('dora', 2, ['up', 'down'])}
NAMES = ['a', 'b', 'c', 'd', None]
TEXTS = ["the cat sat on the mat", "def f(x):\n    return x + 1", "numbers 12345 and 3.14", "hello there, how are you"]
PROMPTS = [f"{t[:6 + i]} {i}" for i, t in enumerate(TEXTS * 4)]     # 16 prompts of different lengths

@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "One thread: a model this small gains nothing from two, and a loaded machine makes the second one cost a lot."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def tiny_tok():
    "A small byte-level BPE tokenizer with ChatML's special tokens, so the default chat template applies."
    tk = TkTokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tk.train_from_iterator(TEXTS * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=['<|im_start|>', '<|im_end|>'], show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return Tokenizer(tk, bos_token='<|im_start|>', eos_token='<|im_end|>')

@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
    "A tiny random decoder saved with its tokenizer, and four trained-looking adapters saved in PEFT's format."
    d = tmp_path_factory.mktemp('serve')
    tok = tiny_tok()
    seed_everything(0)
    m = Decoder(Config(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden=128, max_seq_len=96))
    save_model(m, d/'base', tok)
    for name, (kind, r, targets) in ADAPTERS.items():
        add_adapters(m, kind, r=r, targets=targets, name=name)
        with torch.no_grad():
            for lyr in adapter_layers(m).values():
                if name in lyr.lora_b: lyr.lora_b[name].normal_(0, .3); lyr.lora_a[name].normal_(0, .3)
                if name in lyr.magnitude: lyr.magnitude[name].mul_(1 + .3 * torch.randn_like(lyr.magnitude[name]))
        save_adapter(m, d/name, name)
    return d

@pytest.fixture(scope='module')
def served(dirs):
    "The base loaded in 4 bits (NF4) with the four adapters, as `llmlite serve --quant nf4` loads them."
    model, tok = load(dirs/'base', quant='nf4')
    for n in ADAPTERS: load_adapter(model, dirs/n, n)
    return model.eval(), tok

@pytest.fixture(scope='module')
def server(served):
    eng = Engine(*served, max_batch=16, max_tokens=16)
    with running(serve_app(eng)) as url: yield eng, url

def client(url): return openai.OpenAI(base_url=url, api_key='none', max_retries=0)
def alone(served, prompt, name, n=16): return generate(*served, prompt, max_new_tokens=n, adapter=[name])
def chat(p): return [dict(role='user', content=p)]

def test_mixed_batch_equals_one_by_one(served):
    model, tok = served
    names = [NAMES[i % 5] for i in range(16)]
    ids = [tok.encode(p) for p in PROMPTS]
    batch = torch.stack(list(generate_ids(model, ids, 8, adapter=names)), 1)            # (16, 8): every row runs 8 tokens
    for i, (x, n) in enumerate(zip(ids, names)):
        assert batch[i].tolist() == torch.stack(list(generate_ids(model, [x], 8, adapter=[n])), 1)[0].tolist(), (i, n)
    outs = {n: torch.stack(list(generate_ids(model, [ids[0]], 8, adapter=[n])), 1)[0].tolist() for n in NAMES}
    assert len({tuple(o) for o in outs.values()}) == 5                                 # each adapter changes the tokens

def test_openai_client_chat_and_completions(served, server):
    eng, url = server
    cl = client(url)
    assert [m.id for m in cl.models.list()] == ['base', *ADAPTERS]
    for name in ['base', *ADAPTERS]:
        ad = None if name == 'base' else name
        res = cl.chat.completions.create(model=name, messages=chat('hello there'), temperature=0)
        assert res.choices[0].message.content == alone(served, chat('hello there'), ad)
        assert res.model == name and res.usage.completion_tokens <= 16 and res.choices[0].finish_reason in ('stop', 'length')
        chunks = list(cl.chat.completions.create(model=name, messages=chat('hello there'), temperature=0, stream=True))
        assert ''.join(c.choices[0].delta.content or '' for c in chunks) == res.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason == res.choices[0].finish_reason
    res = cl.completions.create(model='c', prompt='the cat', temperature=0, max_tokens=6)
    assert res.choices[0].text == alone(served, 'the cat', 'c', 6)
    assert ''.join(c.choices[0].text for c in cl.completions.create(model='c', prompt='the cat', temperature=0, max_tokens=6, stream=True)) == res.choices[0].text
    sampled = [cl.completions.create(model='a', prompt='the cat', temperature=1., seed=3, max_tokens=8).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]                                                     # a seed gives the same sample again

def test_16_concurrent_clients(served, server):
    "16 clients at once, over all five models: each gets what its prompt gets alone, and they are decoded together (bench/serve.py times it)."
    eng, url = server
    names = [(['base', *ADAPTERS])[i % 5] for i in range(16)]
    before = dict(eng.stats)
    with ThreadPoolExecutor(16) as ex:
        conc = list(ex.map(lambda i: client(url).chat.completions.create(model=names[i], messages=chat(PROMPTS[i]), temperature=0), range(16)))
    steps, rows = eng.stats['steps'] - before['steps'], eng.stats['rows'] - before['rows']
    assert rows > 1.5 * steps                   # several requests per decode step
    for i, c in enumerate(conc): assert c.choices[0].message.content == alone(served, chat(PROMPTS[i]), None if names[i] == 'base' else names[i]), i

def test_bad_requests(served, server, monkeypatch):
    eng, url = server
    cl = client(url)
    with pytest.raises(openai.NotFoundError) as e: cl.chat.completions.create(model='zz', messages=chat('hi'))
    assert e.value.status_code == 404 and "model 'zz' does not exist; this server has ['base', 'a', 'b', 'c', 'd']" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e: cl.completions.create(model='a', prompt='the cat sat on the mat ' * 40)
    assert e.value.status_code == 400 and "this model's context is 96 tokens" in str(e.value)
    post = lambda body: httpx.post(f"{url}/chat/completions", content=body, headers={'content-type': 'application/json'})
    r = post('{"model": "a", "messages": [')
    assert r.status_code == 400 and 'not valid JSON' in r.json()['error']['message']
    r = post('{"model": "a", "messages": [{"role": "user"}]}')
    assert r.status_code == 422 and 'messages.0.content: Field required' in r.json()['error']['message']
    with pytest.raises(openai.UnprocessableEntityError): cl.chat.completions.create(model='a', messages=chat('hi'), n=2)
    with pytest.raises(openai.UnprocessableEntityError): cl.chat.completions.create(model='a', messages=chat('hi'), temperature=-1)
    assert httpx.get(f"{url}/chat/completions").status_code == 405
    # an error inside one request fails that request only: the others, and the server, go on
    real = serve_mod.sample
    monkeypatch.setattr(serve_mod, 'sample', lambda l, t, *a: (_ for _ in ()).throw(RuntimeError('boom')) if t == 1.5 else real(l, t, *a))
    with ThreadPoolExecutor(4) as ex:
        bad = ex.submit(lambda: cl.chat.completions.create(model='b', messages=chat('hi'), temperature=1.5))
        good = list(ex.map(lambda i: cl.chat.completions.create(model='b', messages=chat(PROMPTS[i]), temperature=0), range(3)))
        with pytest.raises(openai.InternalServerError) as e: bad.result()
    assert e.value.status_code == 500 and 'generation failed: RuntimeError: boom' in str(e.value)
    assert [g.choices[0].message.content for g in good] == [alone(served, chat(PROMPTS[i]), 'b') for i in range(3)]
    with pytest.raises(openai.APIError, match='boom'): list(cl.chat.completions.create(model='b', messages=chat('hi'), temperature=1.5, stream=True))
    assert cl.completions.create(model='a', prompt='the cat', temperature=0, max_tokens=4).choices[0].text == alone(served, 'the cat', 'a', 4)

def test_queue_full_is_429(served):
    class Held(Engine):
        "An engine that admits nothing until `gate` is set, so requests pile up in its queue."
        gate = threading.Event()
        def admit(self): return super().admit() if self.gate.wait(.02) else []
    eng = Held(*served, max_queue=1, max_tokens=4)
    with running(serve_app(eng)) as url, ThreadPoolExecutor(1) as ex:
        first = ex.submit(lambda: client(url).completions.create(model='a', prompt='the cat', temperature=0))
        while eng.waiting.qsize() < 1: time.sleep(.01)
        with pytest.raises(openai.RateLimitError) as e: client(url).completions.create(model='a', prompt='the cat', temperature=0)
        assert e.value.status_code == 429 and '1 requests are waiting already' in str(e.value)
        eng.gate.set()
        assert first.result().choices[0].text == alone(served, 'the cat', 'a', 4)

def test_llmlite_serve_command(dirs, served):
    "`llmlite serve` in a process of its own: one command, local only, the adapters by name."
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    args = ['serve', '--model', dirs/'base', '--quant', 'nf4', '--port', port, '--max-tokens', 16, *[x for n in ADAPTERS for x in ('--adapter', f"{n}={dirs/n}")]]
    p = subprocess.Popen([sys.executable, '-c', 'from llmlite.cli import main; main()', *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=os.environ | {'OMP_NUM_THREADS': '1'})
    try:
        seen = []
        for line in p.stdout:                   # libraries may speak first (bitsandbytes' kernels: "Skipping publisher trust check ... offline mode")
            seen.append(line)
            if line.startswith('llmlite serve:') or len(seen) >= 50: break
        assert seen and seen[-1].startswith(f"llmlite serve: models base, a, b, c, d at http://127.0.0.1:{port}/v1"), ''.join(seen)   # never a blocking read of a live server's output
        cl, t0 = client(f"http://127.0.0.1:{port}/v1"), time.time()
        while True:
            try: ms = [m.id for m in cl.models.list()]; break
            except openai.APIConnectionError: assert time.time() - t0 < 120 and p.poll() is None; time.sleep(.1)
        assert ms == ['base', *ADAPTERS]
        for n in ('d', 'base'):
            res = cl.chat.completions.create(model=n, messages=chat('hello there'), temperature=0)
            assert res.choices[0].message.content == alone(served, chat('hello there'), None if n == 'base' else n)
    finally:
        p.terminate()                           # as Ctrl-C would: uvicorn shuts the app down (the engine stops), then re-raises the signal
        assert p.wait(60) in (0, -signal.SIGTERM)
    assert 'Application shutdown complete' in p.stdout.read()
