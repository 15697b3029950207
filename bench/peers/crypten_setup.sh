#!/usr/bin/env bash
# Install CrypTen 0.4.1 into its own virtual environment, bench/peers/.venv-crypten, for the
# peer benchmark bench/peers/crypten_resnet32.py. Idempotent: a second run reinstalls nothing
# that is already there and applies the two source edits below only where still needed.
#
# CrypTen's wheel declares torchvision, tensorboard, pandas, scikit-learn ("sklearn"), future
# and scipy as requirements. None of them is imported by the code paths the benchmark uses, and
# an unpinned torchvision would pull a multi-GB CUDA torch, so the wheel goes in with --no-deps
# and only what `import crypten` and crypten.nn.from_pytorch really need is added.
#
# Usage: bash bench/peers/crypten_setup.sh   (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-crypten"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

# torch first, pinned: 2.13.0 is the CPU build these machines have locally (pip's find-links);
# anything unpinned would fetch the newest CUDA build from the registry.
"${PIP[@]}" "torch==2.13.0"

# CrypTen itself, without its declared requirements (see the header).
"${PIP[@]}" --no-deps "crypten==0.4.1"

# Runtime needs, found by importing crypten and converting a model under torch 2.13:
#   numpy      - crypten/common/util.py, crypten/encoder.py, the communicator (torch 2.13
#                does not require it)
#   pyyaml     - crypten/config/config.py reads the default YAML config
#   omegaconf  - crypten/config/config.py
#   onnx       - crypten/nn/onnx_converter.py (from_pytorch goes through ONNX)
# onnx brings protobuf and ml_dtypes. Pinned to the versions this was run with.
"${PIP[@]}" numpy==2.4.6 pyyaml==6.0.4 omegaconf==2.4.0 onnx==1.23.2

# Two edits to the installed crypten/nn/onnx_converter.py (this venv only), each printed:
# 1. The stale import. When torch.onnx.symbolic_registry is missing (torch >= 1.13) CrypTen
#    falls back to `from torch.onnx._internal.registration import registry`; since torch 2.9
#    that module is torch.onnx._internal.torchscript_exporter.registration, so `import crypten`
#    fails with ModuleNotFoundError.
# 2. torch.onnx.export uses the torch.export-based exporter by default since torch 2.9. That
#    needs onnxscript, and even with it the graph it writes (integer initializers) cannot be
#    read by CrypTen's converter. CrypTen was written for the TorchScript exporter, whose
#    symbolic registry it patches, so ask for that one explicitly.
"$PY" - <<'EOF'
import importlib.util
import pathlib

spec = importlib.util.find_spec("crypten")
path = pathlib.Path(spec.submodule_search_locations[0]) / "nn" / "onnx_converter.py"
edits = [  # (line as shipped, the lines that replace it)
    (
        "    from torch.onnx._internal.registration import registry  # noqa",
        ["    from torch.onnx._internal.torchscript_exporter.registration import registry  # noqa"],
    ),
    (
        '        "do_constant_folding": False,',
        ['        "do_constant_folding": False,', '        "dynamo": False,'],
    ),
]
lines = path.read_text().splitlines()
changed = False
for old, new in edits:
    done = [i for i in range(len(lines)) if lines[i : i + len(new)] == new]
    if done:
        print(f"already patched: {path}:{done[0] + 1}: {new[-1].strip()}")
        continue
    at = [i for i, line in enumerate(lines) if line == old]
    if len(at) != 1:
        raise SystemExit(f"expected one line {old.strip()!r} in {path}, found {len(at)}")
    print(f"patching {path}:{at[0] + 1}")
    print(f"  - {old}")
    for line in new:
        print(f"  + {line}")
    lines[at[0] : at[0] + 1] = new
    changed = True
if changed:
    path.write_text("\n".join(lines) + "\n")
    for cached in path.parent.glob("__pycache__/onnx_converter.*.pyc"):
        cached.unlink()
EOF

"$PY" -c "import crypten, torch; print('crypten', crypten.__version__, 'torch', torch.__version__)"
