"""Run a parameterised notebook in this process and save it with its outputs: papermill's `-p name value`, without a
Jupyter kernel (nbdev's execnb runs the cells). For machines where papermill's kernel stack is not installed, such as the
lent GPU machine; elsewhere `papermill` does the same. The overrides become a cell right after the `parameters` cell.

    python tools/run_notebook.py nbs/examples/train_demo_vae.ipynb out.ipynb -p max_train_steps 100 -p device cpu
"""
import argparse, ast, io, json, sys, time
from pathlib import Path


class _EchoingStringIO(io.StringIO):
    "What a cell prints is kept for the saved notebook and shown at once in the log (a run cut off by a limit still shows its progress)."
    def write(self, s):
        sys.__stdout__.write(s); sys.__stdout__.flush()
        return super().write(s)


def _value(text:str):
    "A literal (number, None, True, list ...) when it parses as one, else the text itself, as papermill's -p does."
    try: return ast.literal_eval(text)
    except (ValueError, SyntaxError): return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebook"); p.add_argument("output")
    p.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="parameter override")
    args = p.parse_args(argv)
    from execnb.nbio import read_nb, write_nb, mk_cell
    from execnb.shell import CaptureShell
    import IPython.utils.capture
    IPython.utils.capture.StringIO = _EchoingStringIO  # the buffers execnb captures cell output into
    nb = read_nb(args.notebook)
    where = next((i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if where is None and args.p: sys.exit(f"{args.notebook} has no cell tagged 'parameters' to override.")
    if args.p:
        code = "# Injected parameters\n" + "".join(f"{k} = {_value(v)!r}\n" for k, v in args.p)
        cell = mk_cell(code); cell["metadata"] = {"tags": ["injected-parameters"]}
        nb.cells.insert(where + 1, cell)
    out = Path(args.output); out.parent.mkdir(parents=True, exist_ok=True)
    def save(cell=None):  # after every cell, atomically: a run cut off by a time limit still leaves what it did
        if cell is not None and cell.cell_type == "code": print(f"[{time.time() - t0:.0f} s] cell {cell.idx_} done", flush=True)
        tmp = out.with_name(out.name + ".partial"); write_nb(nb, tmp); tmp.replace(out)
    shell, t0 = CaptureShell(), time.time()
    shell.run_cell("%matplotlib inline")
    try: shell.run_all(nb, exc_stop=True, postproc=save)  # stop at the first error, as papermill does
    except Exception as e: print(f"{args.notebook}: {type(e).__name__}: {e}", file=sys.stderr)
    finally: save()
    failed = [i for i, c in enumerate(nb.cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    print(f"{args.notebook} -> {out} in {time.time() - t0:.0f} s" + (f"; error in cell {failed[0]}" if failed else ""))
    return 1 if failed or shell.exc else 0


if __name__ == "__main__": sys.exit(main())
