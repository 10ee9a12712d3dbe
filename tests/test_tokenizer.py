"Parity and interop of `llmlite.tokenizer` with transformers: real SmolLM2 GGUF, a SentencePiece GGUF, HF directories, save round trips."
import json, warnings
from pathlib import Path
import gguf, numpy as np, pytest
from tokenizers import Tokenizer as TkTokenizer, decoders, models, pre_tokenizers, processors, trainers
from llmlite.core import LLMLiteError
from llmlite.tokenizer import Tokenizer, chatml_template, gguf_pre_splits
from llmlite.formats import GGUFFile

warnings.filterwarnings('ignore', message='.*(PyTorch|TensorFlow|Flax).*')
transformers = pytest.importorskip('transformers')
transformers.utils.logging.set_verbosity_error()
AutoTokenizer = transformers.AutoTokenizer

CORPUS = ['Hello world!', 'hello', ' Hello', '  two leading spaces', 'trailing spaces   ', '', ' ', '\n', '\n\n\n', '\r\n', '\t',
          'def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n',
          'class A:\n\tdef __init__(self): self.x = {"a": [1, 2, 3]}\n', '12345', ' 12345', '3.14', '-0.5e10', '1,000,000', '2024-01-01T12:00:00Z',
          'Emoji 🤗🚀👩‍👩‍👧 and CJK 你好世界, 日本語のテキスト, 한국어', 'ünïcödé café naïve Ελληνικά русский العربية',
          "I'm sure it's he'll we've they'd I'D", 'Mixed CASE and camelCase and snake_case_name', 'http://example.com/a?b=c&d=e#f',
          '<|im_start|>user\nhi<|im_end|>\n', 'a<|endoftext|>b', '<repo_name>x<file_sep>y', '<|im_start|><|im_end|>', '<|im_start', 'x' * 300,
          '   \n   \n', 'a  b   c    d', '$$\\frac{1}{2}$$', '¹²³ ½ Ⅻ']
MSGS = [dict(role='user', content='Hi there!'), dict(role='assistant', content='Hello! How can I help?'), dict(role='user', content='What is 2+2?')]
SYS = [dict(role='system', content='You are terse.')] + MSGS

def _ids(r): return r['input_ids'] if hasattr(r, 'keys') else r

@pytest.fixture(scope='module')
def smol_tok(smol_path): return Tokenizer.from_gguf(smol_path)

@pytest.fixture(scope='module')
def smol_ref_tok(smol_path): return AutoTokenizer.from_pretrained(smol_path.parent, gguf_file=smol_path.name)

def test_smol_attributes(smol_tok):
    assert (smol_tok.bos_id, smol_tok.eos_id, smol_tok.pad_id, smol_tok.unk_id) == (1, 2, 2, 0)
    assert smol_tok.stop_ids == [2, 0]
    assert smol_tok.vocab_size == 49152 and smol_tok.add_bos is False
    assert 'SmolLM' in smol_tok.chat_template

@pytest.mark.parametrize('special', [True, False])
def test_smol_ids_match_transformers(smol_tok, smol_ref_tok, special):
    for s in CORPUS: assert smol_tok.encode(s, special=special) == smol_ref_tok(s, add_special_tokens=special)['input_ids'], s
    assert smol_tok.encode_batch(CORPUS, special=special) == [smol_ref_tok(s, add_special_tokens=special)['input_ids'] for s in CORPUS]

def test_smol_decode(smol_tok, smol_ref_tok):
    for s in CORPUS:
        ids = smol_tok.encode(s)
        assert smol_tok.decode(ids, skip_special=False) == s
        assert smol_tok.decode(ids) == smol_ref_tok.decode(ids, skip_special_tokens=True)
        assert smol_tok.decode(ids, skip_special=False) == smol_ref_tok.decode(ids, skip_special_tokens=False)

@pytest.mark.parametrize('msgs', [MSGS, SYS, MSGS[:1]])
@pytest.mark.parametrize('agp', [True, False])
def test_smol_chat_matches_transformers(smol_tok, smol_ref_tok, msgs, agp):
    assert smol_tok.apply_chat_template(msgs, add_generation_prompt=agp) == smol_ref_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp)
    assert smol_tok.encode_chat(msgs, add_generation_prompt=agp) == _ids(smol_ref_tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=agp))

def test_smol_save_loads_in_transformers(smol_tok, tmp_path):
    out = smol_tok.save(tmp_path/'smol_tok')
    ref, back = AutoTokenizer.from_pretrained(out), Tokenizer.from_dir(out)
    for s in CORPUS:
        assert ref(s)['input_ids'] == smol_tok.encode(s) == back.encode(s), s
        assert ref.decode(smol_tok.encode(s), skip_special_tokens=True) == smol_tok.decode(smol_tok.encode(s))
    for m in (MSGS, SYS):
        assert ref.apply_chat_template(m, tokenize=False, add_generation_prompt=True) == smol_tok.apply_chat_template(m)
        assert _ids(ref.apply_chat_template(m, tokenize=True, add_generation_prompt=True)) == smol_tok.encode_chat(m)
    assert (back.bos_id, back.eos_id, back.pad_id, back.stop_ids) == (smol_tok.bos_id, smol_tok.eos_id, smol_tok.pad_id, smol_tok.stop_ids)

def test_pre_split_regexes_match_transformers():
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    assert gguf_pre_splits['qwen2'] == PRETOKENIZE_REGEX
    assert 'smollm' not in gguf_pre_splits

# A byte-level GGUF with a Llama 3 style pre-tokenizer: reuse SmolLM2's vocabulary under other `pre` names.
def _bpe_gguf(path, src:Path, pre:str, add_bos=True):
    g = GGUFFile(src).meta.get
    w = gguf.GGUFWriter(str(path), 'llama')
    w.add_tokenizer_model('gpt2'); w.add_tokenizer_pre(pre)
    w.add_token_list(g('tokenizer.ggml.tokens')); w.add_token_types(g('tokenizer.ggml.token_type')); w.add_token_merges(g('tokenizer.ggml.merges'))
    w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_add_bos_token(add_bos)
    w.add_tensor('token_embd.weight', np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return Path(path)

@pytest.mark.slow
@pytest.mark.parametrize('pre', ['llama-bpe', 'qwen2', 'default'])
def test_bpe_pre_tokenizers_match_transformers(smol_path, tmp_path, pre):
    p = _bpe_gguf(tmp_path/f'{pre}.gguf', smol_path, pre)
    ours, ref = Tokenizer.from_gguf(p), AutoTokenizer.from_pretrained(tmp_path, gguf_file=p.name)
    for s in CORPUS: assert ours.encode(s) == ref(s)['input_ids'], (pre, s)
    assert ours.encode('hi')[0] == 1

# A SentencePiece (`llama`) GGUF written here.
PIECES = ['▁t', 'he', '▁the', 'in', '▁a', 'at', '▁c', '▁cat', 'er', '▁s', 'is', '▁is', 'on', '▁on', '▁m', '▁ma', '▁mat',
          'll', '▁h', '▁he', 'llo', '▁hello', '▁w', 'or', 'ld', '▁wor', '▁world', '▁▁', '▁▁▁▁', '12', '▁1']
CHARS = list('abcdefghijklmnopqrstuvwxyzTHEAI▁,.!?0123456789')

def _spm_gguf(path, model='llama', **kw):
    toks = ['<unk>', '<s>', '</s>'] + [f'<0x{i:02X}>' for i in range(256)] + PIECES + CHARS + ['<|user|>', '<|end|>', '<think>']
    types = [2, 3, 3] + [6]*256 + [1]*(len(PIECES)+len(CHARS)) + [3, 3, 4]
    scores = [0.]*259 + [-float(i) for i in range(len(PIECES))] + [-1000.-i for i in range(len(CHARS))] + [0.]*3
    w = gguf.GGUFWriter(str(path), 'llama')
    w.add_tokenizer_model(model); w.add_token_list(toks); w.add_token_types(types); w.add_token_scores(scores)
    w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)
    for k, v in kw.items(): getattr(w, f'add_{k}')(v)
    w.add_tensor('token_embd.weight', np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return Path(path)

SPM_TEXT = ['the cat is on the mat', ' hello  world', 'héllo 😀\nthe    world', '<|user|>hi</s>', 'think <think>ok<|end|>', '',
            ' ', '12 121 1', 'THE END.', '\tthe\n\nmat ', '你好']

@pytest.mark.parametrize('kw', [{}, dict(add_bos_token=False), dict(add_eos_token=True)])
def test_spm_gguf_matches_transformers(tmp_path, kw):
    p = _spm_gguf(tmp_path/'spm.gguf', **kw)
    ours, ref = Tokenizer.from_gguf(p), AutoTokenizer.from_pretrained(tmp_path, gguf_file=p.name)
    for s in SPM_TEXT:
        assert ours.encode(s) == ref(s)['input_ids'], s
        assert ours.encode(s, special=False) == ref(s, add_special_tokens=False)['input_ids'], s
        assert ours.decode(ours.encode(s)) == ref.decode(ref(s)['input_ids'], skip_special_tokens=True), s
    assert ours.stop_ids == [2, ours.token_to_id('<|end|>')]
    assert ours.chat_template == chatml_template
    out = ours.save(tmp_path/'saved')
    ref2 = AutoTokenizer.from_pretrained(out)
    for s in SPM_TEXT: assert ref2(s)['input_ids'] == ours.encode(s), s

def test_spm_no_space_prefix(tmp_path):
    tok = Tokenizer.from_gguf(_spm_gguf(tmp_path/'spm.gguf', add_space_prefix=False))
    assert tok.tokens('the cat') == ['t', 'he', '▁cat']
    assert tok.decode(tok.encode(' the cat')) == ' the cat'

def _tiny_dir(path, cfg=None, files=None):
    tk = TkTokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tk.train_from_iterator(['the cat sat on the mat', 'x = 12345 + 3.14', 'héllo 你好'] * 10,
                           trainers.BpeTrainer(vocab_size=300, special_tokens=['<|begin|>', '<|eot_id|>', '<|end_of_text|>'],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tk.post_processor = processors.TemplateProcessing(single='<|begin|> $A', special_tokens=[('<|begin|>', 0)])
    path.mkdir(parents=True, exist_ok=True); tk.save(str(path/'tokenizer.json'))
    cfg = dict(tokenizer_class='PreTrainedTokenizerFast', bos_token='<|begin|>', eos_token='<|end_of_text|>', **(cfg or {}))
    (path/'tokenizer_config.json').write_text(json.dumps(cfg))
    for k, v in (files or {}).items(): (path/k).write_text(v)
    return path

LLAMA3_TMPL = ("{{ bos_token }}{% for m in messages %}{{ '<|start|>' + m['role'] + '\n\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|start|>assistant\n\n' }}{% endif %}")

@pytest.mark.parametrize('where', ['config', 'jinja', 'json', 'named'])
def test_dir_chat_template_sources(tmp_path, where):
    cfg, files = {}, {}
    if where == 'config': cfg['chat_template'] = LLAMA3_TMPL
    if where == 'named': cfg['chat_template'] = [dict(name='tool_use', template='x'), dict(name='default', template=LLAMA3_TMPL)]
    if where == 'jinja': files['chat_template.jinja'] = LLAMA3_TMPL
    if where == 'json': files['chat_template.json'] = json.dumps(dict(chat_template=LLAMA3_TMPL))
    d = _tiny_dir(tmp_path/'d', cfg, files)
    tok, ref = Tokenizer.from_dir(d), transformers.AutoTokenizer.from_pretrained(d)
    # transformers' AutoTokenizer reads chat_template.json only for processors, so hand it the template there
    kw = dict(chat_template=LLAMA3_TMPL) if where == 'json' else {}
    assert tok.apply_chat_template(SYS) == ref.apply_chat_template(SYS, tokenize=False, add_generation_prompt=True, **kw)
    assert tok.encode_chat(SYS) == _ids(ref.apply_chat_template(SYS, tokenize=True, add_generation_prompt=True, **kw))

def test_dir_special_ids_and_save(tmp_path):
    d = _tiny_dir(tmp_path/'d', dict(pad_token='<|eot_id|>', model_max_length=128), {'generation_config.json': json.dumps(dict(eos_token_id=[2, 1]))})
    tok = Tokenizer.from_dir(d)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.stop_ids) == (0, 2, 1, [2, 1])
    assert tok.chat_template == chatml_template
    out = tok.save(tmp_path/'saved')
    ref, back = AutoTokenizer.from_pretrained(out), Tokenizer.from_dir(out)
    for s in ['the cat sat', ' x = 12345', '<|begin|>héllo<|eot_id|>', '']:
        assert ref(s)['input_ids'] == tok.encode(s) == back.encode(s)
    assert ref.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True) == tok.apply_chat_template(MSGS)
    assert (ref.pad_token_id, ref.bos_token_id, ref.eos_token_id, ref.model_max_length) == (1, 0, 2, 128)

def test_errors(tmp_path):
    with pytest.raises(LLMLiteError, match='missing/tokenizer.json'): Tokenizer.from_dir(tmp_path/'missing')
    d = _tiny_dir(tmp_path/'d'); (d/'tokenizer_config.json').write_text('{not json')
    with pytest.raises(LLMLiteError, match='tokenizer_config.json'): Tokenizer.from_dir(d)
    (d/'tokenizer.json').write_text('{}')
    with pytest.raises(LLMLiteError, match='tokenizer.json'): Tokenizer.from_dir(d)
    with pytest.raises(LLMLiteError, match=r"bert\.gguf.*tokenizer\.ggml\.model = 'bert'"): Tokenizer.from_gguf(_spm_gguf(tmp_path/'bert.gguf', model='bert'))
    with pytest.raises(LLMLiteError, match=r'badbos\.gguf.*tokenizer\.ggml\.bos_token_id = 7'): Tokenizer.from_gguf(_bad_bos(tmp_path))
    with pytest.raises(LLMLiteError, match='tokenizer.ggml.tokens'): Tokenizer.from_gguf(_no_tokens(tmp_path))
    tok = Tokenizer.from_gguf(_spm_gguf(tmp_path/'t.gguf'))
    with pytest.raises(LLMLiteError, match='must alternate'):
        Tokenizer(tok.tk, chat_template="{{ raise_exception('roles must alternate') }}").apply_chat_template(MSGS)

def _no_tokens(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path/'notok.gguf'), 'llama')
    w.add_tensor('token_embd.weight', np.zeros((2, 4), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return tmp_path/'notok.gguf'

def _bad_bos(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path/'badbos.gguf'), 'llama')
    w.add_tokenizer_model('llama'); w.add_token_list(['<unk>', 'a']); w.add_token_scores([0., 0.]); w.add_bos_token_id(7)
    w.add_tensor('token_embd.weight', np.zeros((2, 4), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return tmp_path/'badbos.gguf'

def test_dir_ignores_saved_padding(minilm_dir):
    "all-MiniLM-L6-v2's tokenizer.json pads and truncates to 128; like transformers, `encode` applies neither."
    tok, ref = Tokenizer.from_dir(minilm_dir), transformers.AutoTokenizer.from_pretrained(minilm_dir)
    for s in ['hello world', 'word ' * 300]:
        assert tok.encode(s, special=True) == ref(s)["input_ids"]
