#!/bin/sh
# On a lent GPU machine, from the repository root, with .gpu/ carried (`make gpu-wheels` wrote
# it): install the wheels beside the image's torch, run the CUDA tests, then the benchmark
# (arguments go to bench.gpu, e.g. --e2e). Results land in $OUT when it is set.
set -eu
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl
export PYTHONPATH="/tmp/site:$PWD"
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
# The image's own pytest plugins (xdist, cov, benchmark, ...) stay out: they were built for its pytest.
# A hung test must not take the benchmark's time: the tests get 150 s at most.
LIMIT=""; command -v timeout >/dev/null && LIMIT="timeout 150"
CHAT_TEST_TOKENIZER=.gpu/tokenizer PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 $LIMIT python3 -m pytest -q -p no:cacheprovider \
	-p pytest_django.plugin -p pytest_asyncio.plugin tests/inference/test_cuda.py tests/inference/test_gpu_runner.py || true
# Straight into $OUT, part by part: what comes back from a run stopped at its time limit.
python3 -m bench.gpu --tokenizer .gpu/tokenizer --name "${OUT:-$PWD/bench/results}/gpu" "$@"
