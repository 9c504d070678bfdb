"""`python -m bench.gpu --smoke`: the GPU benchmark's whole script on the CPU with a tiny shape,
so that its mistakes show here and not in the few minutes a GPU is lent for."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_benchmark_runs_and_writes_every_figure_it_reports(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--smoke", "--name", str(tmp_path / "gpu")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((tmp_path / "gpu.json").read_text())
    assert written["shape"] == "tiny" and written["new_tokens"] == 64
    for level in ("1", "4"):
        row = written["engine"][level]
        assert row["tok_s"] > 0 and row["ms_per_step"] > 0 and 0 < row["ttft_p50_s"] < 10
    assert written["hf_naive"]["1"]["tok_s"] > 0
    assert written["priority"]["free_waiting"] == 64 and written["priority"]["plus_ttft_s"] > 0
    assert "engine x  4" in result.stdout
