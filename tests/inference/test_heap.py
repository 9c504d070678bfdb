"""A worker's long-lived heap leaves the garbage collector's sight once its engine has loaded.
Each test runs in a fresh interpreter: freezing is once per process."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_freezing_moves_what_exists_out_of_the_collectors_generations_once():
    out = run(
        "import gc\n"
        "from inference.heap import heap_freeze\n"
        "kept = [[] for _ in range(1000)]\n"
        "garbage = []; garbage.append(garbage); del garbage\n"  # a cycle: collected, not frozen
        "assert heap_freeze() is True\n"
        "assert gc.get_freeze_count() >= 1000\n"
        "assert not any(o is kept for o in gc.get_objects())\n"
        "later = [[]]\n"
        "assert any(o is later for o in gc.get_objects())\n"  # what comes after is collected as before
        "assert heap_freeze() is False\n"
        "print('frozen', gc.get_freeze_count())\n"
    )
    assert out.startswith("frozen")


def test_a_process_freezes_its_heap_when_its_engine_has_loaded(tiny_model_dir):
    out = run(
        "import gc\n"
        "from inference import EngineConfig\n"
        "from inference.worker import engine_get, engine_shutdown\n"
        "assert gc.get_freeze_count() == 0\n"
        f"engine_get(EngineConfig(model={tiny_model_dir!r}, dtype='fp32', max_running=2))\n"
        "print(gc.get_freeze_count())\n"
        "engine_shutdown()\n"
    )
    assert int(out.splitlines()[-1]) > 10_000  # torch's and transformers' objects among them
