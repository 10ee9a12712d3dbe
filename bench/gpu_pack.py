"""Copy the pure-Python packages that `bench/gpu.sh` needs and the GPU machine's image lacks into one folder, from this venv.

The GPU machine has no network and its image (python3 with CUDA torch, transformers, peft, accelerate ...) lacks bitsandbytes,
fastcore and gguf (llmlite's own dependencies) and nbdev with execnb and IPython (to run the notebooks' cuda cells). This
copies each of those distributions and, recursively, their requirements that the image does not have: `.py` files only, so
they run under another Python version, except bitsandbytes' kernel libraries (loaded with ctypes, not Python extensions),
trimmed to the CPU one and the CUDA 13 ones (the image's torch is cu130), and stable-ABI (abi3) extensions. A distribution
with another compiled Python extension is refused: it would not run on another Python. `gpu.sh` puts the folder first on PYTHONPATH when it finds it.
Usage: python bench/gpu_pack.py DIR [--have KINDS.md]   (then carry DIR: ignored by git, under the 64 MiB a run may carry)
"""
import argparse, re, shutil, sys
from importlib import metadata
from pathlib import Path

NEED = ['bitsandbytes', 'fastcore', 'gguf', 'nbdev', 'execnb']
BNB_LIBS = re.compile(r'libbitsandbytes_(cpu|cuda13\d)\.so$')

def norm(n): return re.sub(r'[-_.]+', '_', n).lower()

def image_has(kinds):
    "Distribution names the GPU image holds, from the 'Packages:' line of the device notes (KINDS.md)."
    txt = Path(kinds).read_text()
    return {norm(x.strip().rstrip('.')) for x in txt.split('Packages: ', 1)[1].split('\n', 1)[0].split(',')}

def wanted(have):
    "NEED and, recursively, every requirement (without extras or markers that fail here) that the image lacks."
    todo, seen = list(NEED), {}
    while todo:
        n = norm(todo.pop())
        if n in seen or n in have: continue
        d = metadata.distribution(n)
        seen[n] = d
        for r in d.requires or []:
            if 'extra ==' in r: continue
            name, _, marker = r.partition(';')
            if marker and not eval_marker(marker): continue
            todo.append(re.split(r'[\s<>=!~\[(]', name.strip(), maxsplit=1)[0])
    return seen

def eval_marker(m):
    from packaging.markers import Marker
    return Marker(m.strip()).evaluate()

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('dir'); ap.add_argument('--have', default='/work/.library/device/KINDS.md')
    a = ap.parse_args()
    out = Path(a.dir)
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    total = 0
    for n, d in sorted(wanted(image_has(a.have)).items()):
        files = [f for f in d.files or [] if not str(f).startswith(('..', '/')) and '__pycache__' not in str(f)]
        ext = [f for f in files if f.suffix in ('.so', '.pyd') and '.abi3.' not in f.name and not (n == 'bitsandbytes' and f.name.startswith('libbitsandbytes_'))]
        if ext: sys.exit(f"{n}: has compiled Python extensions ({ext[0]}), which would not run under the GPU machine's Python")
        size = 0
        for f in files:
            if f.suffix == '.so' and n == 'bitsandbytes' and not BNB_LIBS.search(f.name): continue
            src = Path(d.locate_file(f))
            if not src.is_file() or '.dist-info' in str(f) and f.name not in ('METADATA', 'RECORD', 'entry_points.txt', 'top_level.txt'): continue
            dst = out/f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst); size += src.stat().st_size
        total += size
        print(f"{d.metadata['Name']:20}{d.version:>12}{size / 2**20:>8.1f} MiB")
    print(f"{'total':32}{total / 2**20:>8.1f} MiB in {out}")

if __name__ == '__main__': main()
