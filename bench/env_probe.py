"""Print the GPU machine's environment (device, driver, versions) for bench/RESULTS.md, and check that the
carried wheels import. Run first on a fresh device machine: `python bench/env_probe.py`."""
import importlib, platform, subprocess, sys
import torch

print("python", sys.version.split()[0], platform.machine())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"{p.total_memory / 2**30:.1f} GiB", "SMs", p.multi_processor_count)
    print(subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip())
for name in ["diffusers", "transformers", "accelerate", "safetensors", "peft", "triton", "flash_attn", "torchao", "easyanimate"]:
    try: print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e: print(name, "MISSING", type(e).__name__, str(e)[:120])
