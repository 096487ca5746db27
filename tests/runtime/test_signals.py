"""Signals after compiled models come and go: the cause of the suite's old one-process segfault, kept fixed."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import cache_dir, torch_model  # noqa: F401
from medsamlite.export import compile

# Opens two OpenVINO models, frees them oldest first, then handles a signal on the main thread. With one
# ov.Core per model the second free put back the first model's (already unmapped) alternate signal stack,
# and the handler's signal frame killed the process with SIGSEGV (rc -11) before any Python code ran.
SCRIPT = textwrap.dedent("""
    import gc, signal, sys, threading
    from medsamlite.runtime.compiled import load
    first, second = load(sys.argv[1]), load(sys.argv[1])
    del first; gc.collect()
    del second; gc.collect()
    signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))
    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
    print("survived", flush=True)
""")


def test_a_signal_after_freeing_two_openvino_models_is_handled(cache_dir: Path) -> None:
    folder = compile(torch_model("repvit_m0_6_medsam"), "openvino", cache_dir=cache_dir).path
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(folder)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"rc {run.returncode}: {run.stderr[-2000:]}"
    assert run.stdout.split() == ["handled", "survived"]
