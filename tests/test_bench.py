"The GPU benchmark scripts run end to end on the CPU in their --smoke form (their figures are in bench/RESULTS.md)."
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_load_smoke(tmp_path):
    out = tmp_path / "load.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_load.py"), "--smoke", "--out", str(out)], check=True,
                   capture_output=True, text=True, timeout=300)
    r = json.loads(out.read_text())
    loads = {row["loader"]: row for row in r["loads"]}
    assert set(loads) == {"ours", "diffusers"} and not any("error" in row for row in r["loads"]), r["loads"]
    assert loads["ours"]["checksum"] == loads["diffusers"]["checksum"]  # the same file gives both the same weights
