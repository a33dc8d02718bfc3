"""Write README.md from nbs/index.ipynb (nbdev's own nbdev_readme needs Quarto, which cannot be installed here).

`python tools/readme.py` writes it; `python tools/readme.py --check` exits 1 when README.md is stale."""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb = json.loads((root / "nbs" / "index.ipynb").read_text(encoding="utf-8"))
parts = []
for cell in nb["cells"]:
    src = "".join(cell["source"]).strip()
    if cell["cell_type"] == "markdown": parts.append(src)
    elif cell["cell_type"] == "code" and src and not src.startswith("#|"): parts.append(f"```python\n{src}\n```")
text = "\n\n".join(parts) + "\n"
readme = root / "README.md"
if "--check" in sys.argv:
    if not readme.exists() or readme.read_text(encoding="utf-8") != text:
        sys.exit("README.md is out of date with nbs/index.ipynb: run `python tools/readme.py` and commit it.")
else:
    readme.write_text(text, encoding="utf-8")
