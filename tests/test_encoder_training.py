"Encoders and encoder-decoders train: data for classifiers, masked LMs and seq2seq; the Learner on each shape; a real QLoRA BERT classifier."
import random, time
from pathlib import Path
import pytest, torch
from tokenizers import Tokenizer as Tk, models, pre_tokenizers, processors
import llmlite
from llmlite.core import LLMLiteError, seed_everything
from llmlite.tokenizer import Tokenizer
from llmlite.models import Config
from llmlite.encoders import MaskedLM
from llmlite.seq2seq import EncoderDecoder
from llmlite.data import cls_data, mlm_data, seq2seq_data
from llmlite.learner import Learner, const
from llmlite.eval import accuracy, exact_match

FILES = Path(llmlite.__file__).parent/'files'
WORDS = 'zero one two three four five six seven eight nine red blue cat dog big small'.split()

@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def word_tok(specials, post, **kw):
    "A word-level tokenizer over WORDS with `specials` first (the last one is the unknown token)."
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tk = Tk(models.WordLevel(vocab, unk_token=specials[-1])); tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(specials); tk.post_processor = post(vocab)
    return Tokenizer(tk, unk_token=specials[-1], **kw)

def bert_tok(): return word_tok(['[PAD]', '[CLS]', '[SEP]', '[MASK]', '[UNK]'], lambda v: processors.BertProcessing(('[SEP]', 2), ('[CLS]', 1)),
                                pad_token='[PAD]', config=dict(mask_token='[MASK]'))
def t5_tok(): return word_tok(['<pad>', '</s>', '<unk>'], lambda v: processors.TemplateProcessing(single='$A </s>', special_tokens=[('</s>', 1)]),
                              eos_token='</s>', pad_token='<pad>')

def bert_cfg(vocab): return Config(arch='bert', vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden=64, max_seq_len=32, norm_eps=1e-12, pos='abs',
                                   norm='ln', gated=False, act='gelu', bias=True, pre_norm=False, type_vocab_size=2, tie_embeddings=True)

def test_cls_tokens_match_transformers(minilm_dir):
    "Single texts and pairs, cut longest-first to seq_len: the ids and token types transformers' tokenizer gives."
    transformers = pytest.importorskip('transformers')
    ref = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    tok = Tokenizer.from_dir(minilm_dir)
    recs = [dict(a='A man is eating food.', b='Someone eats.', y=1), dict(a='word ' * 40, b='short', y=0), dict(a='tiny', b='more words ' * 30, y=0),
            dict(a='both long ' * 20, b='both long too ' * 20, y=1)]
    for pair in (None, 'b'):
        with pytest.warns(UserWarning, match='truncated 3 of 4 examples' if pair else 'truncated 2 of 4 examples'):
            dl = cls_data(recs, tok, seq_len=24, text='a', label='y', pair=pair, shuffle=False)
        want = ref([o['a'] for o in recs], [o['b'] for o in recs] if pair else None, truncation=True, max_length=24)
        for i in range(len(recs)):
            r = dl.sources[0].row(i)
            assert r['ids'].tolist() == want['input_ids'][i] and r['types'].tolist() == want['token_type_ids'][i]

def test_bad_cls_input(tmp_path):
    tok = bert_tok()
    (tmp_path/'c.jsonl').write_text('{"text": "one two", "label": "a"}\n{"text": "three", "label": "b"}\n{"text": "four", "label": "c"}\n')
    with pytest.raises(LLMLiteError, match=r"c.jsonl line 3: label 'c' \(field 'label'\) is not one of the 2 labels"):
        cls_data(tmp_path/'c.jsonl', tok, labels=['a', 'b'])
    with pytest.raises(LLMLiteError, match="c.jsonl line 1: no field 'sentence'"): cls_data(tmp_path/'c.jsonl', tok, text='sentence')
    (tmp_path/'e.jsonl').write_text('\n')
    with pytest.raises(LLMLiteError, match='empty dataset'): cls_data(tmp_path/'e.jsonl', tok)

def test_rank_parts_make_the_batch():
    "Each rank's contiguous part of batch k, concatenated, is the one-process batch k, for every kind of loader."
    btok, ttok = bert_tok(), t5_tok()
    rng = random.Random(0)
    texts = [' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(40)]
    loaders = [cls_data([dict(text=t, label=len(t) % 3) for t in texts], btok, bs=8), mlm_data(texts, btok, seq_len=16, bs=8),
               seq2seq_data([dict(source=t, target=t[::-1]) for t in texts], ttok, bs=8)]
    for dl in loaders:
        for k in (0, 3, 11):
            whole = dl.batch(k)
            for w in (2, 4):
                parts = []
                for r in range(w):
                    dl.rank, dl.world = r, w; parts.append(dl.batch(k))
                assert all(torch.equal(torch.cat([p[key] for p in parts]), whole[key]) for key in whole)
            dl.rank, dl.world = 0, 3
            with pytest.raises(LLMLiteError, match='bs=8 is the global batch and must split evenly over world=3'): dl.batch(0)
            dl.rank, dl.world = 0, 1

def test_mlm_step_tiny_bert():
    "One masked-LM step on a tiny BERT: the loss is the cross-entropy over the masked slots only, and it falls."
    tok = bert_tok()
    rng = random.Random(0)
    dl = mlm_data([' '.join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) for _ in range(64)], tok, seq_len=16, bs=16)
    seed_everything(0); m = MaskedLM(bert_cfg(tok.vocab_size))
    b = dl.batch(0)
    lab = b['labels']
    with torch.no_grad(): want = torch.nn.functional.cross_entropy(m(b['input_ids'], b['valid'])[lab != -100], lab[lab != -100])
    learn = Learner(m, dl, lr=const(3e-3), show_every=0, precision='fp32')   # fp32, as the loss it is compared with
    test_close = lambda a, b: abs(a - b) < 1e-5
    assert test_close(learn._loss(b).item(), want.item())
    learn.fit(steps=30)
    assert learn.log[-1]['loss'] < 0.8 * learn.log[0]['loss']

def test_tiny_t5_learns():
    "A tiny random T5 learns to reverse short word sequences: the loss falls and exact match rises from zero."
    tok = t5_tok()
    rng = random.Random(0)
    pairs = [dict(source=' '.join(ws), target=' '.join(reversed(ws))) for ws in ([rng.choice(WORDS[:10]) for _ in range(rng.randint(1, 3))] for _ in range(48))]
    dl = seq2seq_data(pairs, tok, seq_len=16, target_len=8, bs=16)
    cfg = Config(arch='t5', vocab_size=tok.vocab_size, dim=32, n_layers=2, n_dec_layers=2, n_heads=4, head_dim=8, hidden=64, pos='rel', gated=True,
                 act='gelu_tanh', attn_scale=1., rel_buckets=8, rel_max_dist=16)
    seed_everything(0); m = EncoderDecoder(cfg)
    e0 = exact_match(m, dl, tok)
    learn = Learner(m, dl, lr=const(3e-3), show_every=0)
    learn.fit(steps=60)
    e1 = exact_match(m, dl, tok)
    print(f"t5: loss {learn.log[0]['loss']:.3f} -> {learn.log[-1]['loss']:.3f}, exact match {e0['exact_match']:.2f} -> {e1['exact_match']:.2f}")
    assert learn.log[-1]['loss'] < 0.3 * learn.log[0]['loss'] and e1['exact_match'] > e0['exact_match'] + 0.3

@pytest.mark.slow
def test_qlora_minilm_classifier(minilm_dir):
    "all-MiniLM-L6-v2 in NF4 with LoRA and a fresh (trainable) classifier head learns the bundled review task: held-out accuracy from chance to > 80%."
    from llmlite.loading import load
    from llmlite.adapters import add_adapters
    torch.set_num_threads(2)
    model, tok = load(minilm_dir, task='cls', quant='nf4')
    train = cls_data(FILES/'reviews_train.jsonl', tok, seq_len=32, bs=16)
    test = cls_data(FILES/'reviews_test.jsonl', tok, seq_len=32, bs=50, shuffle=False)
    assert train.labels == test.labels == ['negative', 'positive']
    seed_everything(0)
    add_adapters(model, "lora", r=8, alpha=16)                                        # every linear layer; the new head trains in full
    a0 = accuracy(model, test)
    t = time.time()
    Learner(model, train, lr=1e-3, show_every=10).fit(steps=30)
    a1 = accuracy(model, test)
    print(f"MiniLM QLoRA: held-out accuracy {a0['accuracy']:.2f} -> {a1['accuracy']:.2f} (loss {a0['loss']:.3f} -> {a1['loss']:.3f}) in 30 steps, {time.time() - t:.0f} s")
    assert a0['accuracy'] < 0.65 and a1['accuracy'] > 0.8 and a1['loss'] < a0['loss']
