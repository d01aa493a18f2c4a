"""Files written by the local store get the permissions the umask asks for, not mkstemp's 0600."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# In a child process, so that the test's umask never leaks into other tests (or their threads).
SCRIPT = """
import json, os, sys
os.umask(int(sys.argv[2], 8))
from dfd.storage import LocalStore, atomic_write_local
root = sys.argv[1]
store = LocalStore(root + "/store")
store.write_bytes("runs/v1/model.keras", b"model")
store.write_json("champion.json", {"version": "v1"})
store.write_if_unchanged("champion.json", b"{}", store.read_versioned("champion.json")[1])
with open(root + "/results.csv", "w") as fh:
    fh.write("a,b\\n")
store.upload_file(root + "/results.csv", "scores/b1/results.csv")
store.download_file("runs/v1/model.keras", root + "/cache/model.keras")
atomic_write_local(root + "/plain/metrics.json", b"{}")
paths = ["store/runs/v1/model.keras", "store/champion.json", "store/scores/b1/results.csv",
         "cache/model.keras", "plain/metrics.json"]
print(json.dumps({p: oct(os.stat(os.path.join(root, p)).st_mode & 0o777) for p in paths}))
"""


@pytest.mark.parametrize(("umask", "mode"), [("022", "0o644"), ("027", "0o640"), ("077", "0o600")])
def test_written_files_follow_the_umask(tmp_path: Path, umask: str, mode: str):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), umask], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    modes = json.loads(proc.stdout)
    assert modes and set(modes.values()) == {mode}, modes
    assert not list(tmp_path.rglob(".tmp-*"))  # no temporary file left behind
