#!/usr/bin/env bash
# Here, before a device call: what bench/gpu/checks.sh needs that the GPU machine lacks (docs/gpu.md).
#   .gpu/minilm16  MiniLM-L6 as a local Hugging Face directory, its weights in float16 (the float32 file is
#                  90 MB, over the 64 MiB a call carries; dht widens them to float32 when it loads them)
#   .whl/          Python 3.12 wheels of dht's needs the GPU machine's image lacks (torchrl and tensordict
#                  for Transformer⁻¹'s PPO, pydantic for the run files), and the versions they need of two
#                  it has (typing_extensions, zipp). Not lightgbm: with the tracked
#                  files the two folders fill about 60.5 of the 64 MiB a call carries, so the GPU's
#                  Transformer⁻¹ run takes --predictor logistic.
# Both folders are ignored by git (.gitignore) and travel by name: carry=[".gpu", ".whl"].
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
rm -rf .gpu/minilm16 && mkdir -p .gpu/minilm16
"$PY" - <<'PYTHON'
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from dht.model.backbones import minilm_dir

source, target = minilm_dir(), Path(".gpu/minilm16")
for name in ("config.json", "tokenizer.json"):
    if (source / name).is_file():
        shutil.copy(source / name, target / name)
weights = load_file(str(source / "model.safetensors"))
save_file({key: value.half().contiguous() for key, value in weights.items()}, str(target / "model.safetensors"))
print(f"{target}: {len(weights)} tensors in float16")
PYTHON
rm -rf .whl && mkdir .whl
version() { "$PY" -m pip show "$1" 2>/dev/null | awk '/^Version:/{print $2}'; }
wheels=()
for name in torchrl tensordict pyvers hoptorch orjson importlib_metadata lazy-importer pydantic pydantic_core \
            annotated-types typing-inspection typing_extensions zipp; do
  wheels+=("$name==$(version "$name")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wheels[@]}"
du -sh .gpu .whl
