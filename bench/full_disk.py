"""Every save path on a disk that fills up half-way: the error names the file being written and the previous version still loads.

Needs root (it mounts a small tmpfs): `sudo python bench/full_disk.py`. For each save path: save once, fill the disk but
for a few KB, save again with different contents, and check the error and that the first version loads unchanged.
The sharded path runs on 2 ranks (FSDP2 over gloo): a sharded model's training checkpoint and adapter, gathered and
written by rank 0.
"""
import os, subprocess, sys, tempfile
from pathlib import Path
import torch
from llmlite.errors import LLMLiteError
from llmlite.loading import load, save_model
from llmlite.models import Config, Decoder
from llmlite.tokenizer import Tokenizer
from llmlite.adapters import add_adapters
from llmlite.peft import save_adapter, load_adapter
from llmlite.generate import make_prefix, save_prefix, load_prefix
from llmlite.checkpoints import save_checkpoint, read_checkpoint
from llmlite.dist import launch
from llmlite.fsdp import shard
from tokenizers import Tokenizer as Tk, models as tkm, pre_tokenizers

def model(seed):
    torch.manual_seed(seed)
    return Decoder(Config(vocab_size=64, dim=64, n_layers=2, n_heads=4, hidden=128, max_seq_len=32))

def lora(v):
    "The tiny model with LoRA whose B matrices all hold `v`."
    m = model(0); add_adapters(m, 'lora', r=8)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if 'lora_b' in n: p.fill_(v)
    return m

def sharded_save(v, out):
    "On each of 2 ranks: the LoRA model sharded, then its training checkpoint (step `v`) and adapter saved under `out`."
    m = lora(v); shard(m)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad])
    save_checkpoint(out/'srun', m, opt, v); save_adapter(m, out/'sad')

def launched(v):
    "`sharded_save` on 2 ranks; a rank's error comes back as the launcher's exception, holding the rank's traceback."
    try: launch(sharded_save, 2, v, mnt, timeout=60)
    except Exception as e:
        msg = str(e)
        raise (LLMLiteError if 'LLMLiteError' in msg else RuntimeError)(msg.strip().splitlines()[-1]) from None

if __name__ == '__main__':   # (the ranks of the sharded trial import this file)
    mnt = Path(tempfile.mkdtemp())
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(mnt)], check=True)

    def fill(leave:int):
        "Take all free space on the tmpfs but `leave` bytes."
        st = os.statvfs(mnt); free = st.f_bavail * st.f_frsize
        with open(mnt/'filler', 'wb') as f: f.write(b'\0' * max(0, free - leave))

    tk = Tk(tkm.WordLevel({f'w{i}': i for i in range(64)}, unk_token='w0')); tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = Tokenizer(tk, unk_token='w0', pad_token='w0', eos_token='w63')
    x = torch.arange(8)[None]
    results = []

    def trial(name, save, check_old):
        "Save version 1 with room, version 2 on a full disk; report the error and whether version 1 is intact."
        (mnt/'filler').unlink(missing_ok=True)
        save(1)
        fill(leave=0)
        try: save(2); err = None
        except LLMLiteError as e: err = str(e)
        except Exception as e: err = f"RAW {type(e).__name__}: {e}"
        (mnt/'filler').unlink(missing_ok=True)
        ok = check_old()
        results.append((name, err, ok))
        print(f"{name:16} previous version intact: {ok}; error: {err}")

    with torch.no_grad():
        ref = model(1)(x)
        trial('save_model', lambda v: save_model(model(v), mnt/'m', tok), lambda: torch.equal(load(mnt/'m')[0](x), ref))
        def ad(v): save_adapter(lora(v), mnt/'ad')
        def ad_old():
            m = model(0); load_adapter(m, mnt/'ad')
            return all(bool((p == 1).all()) for n, p in m.named_parameters() if 'lora_b' in n)
        trial('save_adapter', ad, ad_old)
        base = model(0)
        trial('save_prefix', lambda v: save_prefix(make_prefix(base, tok, ' '.join(f'w{i}' for i in range(v, v + 20))), mnt/'p.safetensors', base),
              lambda: load_prefix(mnt/'p.safetensors', base).text.startswith('w1 '))
        mc = model(0); opt = torch.optim.AdamW(mc.parameters())
        trial('checkpoint', lambda v: save_checkpoint(mnt/'run', mc, opt, v), lambda: read_checkpoint(mnt/'run')['state']['step'] == 1)
        trial('Tokenizer.save', lambda v: Tokenizer(tk, unk_token='w0', pad_token='w0', eos_token=f'w{62 + v - 1}').save(mnt/'tk'),
              lambda: Tokenizer.from_dir(mnt/'tk').eos_token == 'w62')
        def sharded_old():
            m = model(0); load_adapter(m, mnt/'sad')
            return read_checkpoint(mnt/'srun')['state']['step'] == 1 and all(bool((p == 1).all()) for n, p in m.named_parameters() if 'lora_b' in n)
        trial('sharded save', launched, sharded_old)

    subprocess.run(['umount', str(mnt)])
    bad = [r for r in results if not r[2] or r[1] is None or r[1].startswith('RAW') or str(mnt) not in r[1]]
    print(f"{len(results) - len(bad)} of {len(results)} save paths: a clear error naming the file, and the previous version intact")
    sys.exit(1 if bad else 0)
