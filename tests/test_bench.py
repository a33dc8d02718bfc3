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


def test_bench_speed_smoke(tmp_path):
    out = tmp_path / "speed.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_speed.py"), "--smoke", "--out", str(out)], check=True,
                   capture_output=True, text=True, timeout=600)
    r = json.loads(out.read_text())
    assert set(r["sections"]) == {"compile", "memory", "fp8", "teacache"}, r["sections"].keys()
    # only the SageAttention rows may fail on a machine without the sageattention package (CUDA + Triton)
    assert all("SageAttention" in k for k in r["errors"]), r["errors"]
    fp8 = {row["variant"]: row for row in r["sections"]["fp8"]["rows"]}
    assert any("regional compile" in v for v in fp8) and all(row["rel_err"] < 1e-2 for row in fp8.values()), fp8


def test_bench_attention_smoke(tmp_path):
    out = tmp_path / "attention.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_attention.py"), "--smoke", "--out", str(out)], check=True,
                   capture_output=True, text=True, timeout=300)
    rows = json.loads(out.read_text())["rows"]
    assert {row["backend"] for row in rows} == {"math", "sdpa"} and all(row["rel_err"] < 1e-5 for row in rows), rows


def test_bench_block_memory_smoke(tmp_path):
    out = tmp_path / "block_memory.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_block_memory.py"), "--smoke", "--tokens", "512", "1024",
                    "--out", str(out)], check=True, capture_output=True, text=True, timeout=300)
    r = json.loads(out.read_text())
    small, large = r["rows"]
    assert large["whole"] > small["whole"] > 0  # activations grow with the tokens
    assert all(row["sliced"] < row["whole"] for row in r["rows"]), r["rows"]  # one CFG row at a time needs less
    assert set(r["extrapolated"]) == {"384x672x49", "576x1008x49", "768x1344x49"}
