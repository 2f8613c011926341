"""A bounded coverage-guided fuzz run of ingest and query in every test run (longer runs by
hand)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_fuzzing_ingest_finds_no_crash(tmp_path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(HERE / "corpus", corpus)
    run = subprocess.run(
        [sys.executable, str(HERE / "fuzz_ingest.py"), "-max_total_time=20",
         f"-dict={HERE / 'ingest.dict'}", f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    done = re.search(r"Done (\d+) runs", run.stderr)
    assert run.returncode == 0, run.stderr[-3000:]
    assert done and int(done.group(1)) > 1000, run.stderr[-2000:]
    print(f"atheris: {done.group(1)} inputs, no finding")


def test_the_corpus_holds_every_seed() -> None:
    from tests.fuzz.corpus_seeds import SEEDS

    assert {p.stem: p.read_bytes() for p in (HERE / "corpus").glob("*.bin")} == SEEDS
