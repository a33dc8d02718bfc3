#!/usr/bin/env bash
# Train the demo model on the lent GPU machine in two calls of the `device` tool, each under its 600 s limit, each
# sending back what it made (the tool returns at most 8 files of 16 MiB from $OUT, so folders travel as split .tgz).
#
#   stage 1 (`vae`):         render the shapes dataset, train the VAE, assemble the model folder  (~8 min on an H200)
#   stage 2 (`transformer`): cache latents, train the transformer, install it, quick check        (~20 min: three calls)
#
# The wheels carried on 2026-12-07 (the device image has torch, transformers, accelerate and the rest):
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
#     -d .whl diffusers==0.42.1 fastcore==1.14.5 importlib_metadata av==13.1.0 execnb==0.1.18 ipython \
#     ipython_pygments_lexers decorator matplotlib-inline pexpect ptyprocess prompt_toolkit stack_data executing \
#     asttokens pure_eval traitlets wcwidth
# Call from the repo root with carry [".whl"] (wheels of packages the device image already has, such as matplotlib,
# stay out of .whl: the working tree and the wheels must fit in 64 MiB; beside the ~22 MiB tree that takes av 13.1.0,
# 33 MiB, as av 16's 39 MiB wheel no longer fits). Stage 1's trained VAE ships as easyanimate/demo_model/vae/, and on a
# cold machine stage 2 assembles the folder around it (`assemble_demo_model`
# from the same seed: the same tokenizer, text encoder, scaling factor and untrained transformer), so stage 2 needs no
# stage 1 on the same machine. A stage cut off by
# STAGE_LIMIT (default 540 s) leaves checkpoints (VAE every 300 steps, transformer every 1000): call the stage again with
# `-p resume latest` while the machine is still warm (it keeps /tmp/site and outputs/).
#   bash tools/train_demo_on_device.sh vae
#   bash tools/train_demo_on_device.sh transformer
# SKIP_INSTALL=1 skips the wheel install (a machine that has the packages). INIT_TRANSFORMER=folder starts stage 2 from
# trained weights instead of the untrained transformer (e.g. easyanimate/demo_model/transformer: more training of the
# shipped model, with a fresh optimiser). Notebook parameters can follow the stage name as extra `-p name value` pairs.
# Measured on an H200 (2026-12-03): VAE 0.14-0.22 s/step at batch 16; latent cache ~27 ms/clip read serially, ~50 ms
# with DataLoader reader processes; transformer 14.7-34 steps/s at batch 64, ~10 steps/s at batch 256 (H100: ~8.5)
# (bench/RESULTS.md); a cold machine takes
# ~2-3 min before the command starts, and assembling the folder pre-trains the demo text encoder (400 small steps).
# The log goes to $OUT as it is written: the device tool returns no output of a command it stops at its limit, but it
# does return $OUT (twice this session a stage was stopped with nothing to show where its time went).
set -uo pipefail
stage=${1:?stage: vae or transformer}; shift
[ -n "${SKIP_INSTALL:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
OUT=${OUT:-outputs/device_out}; mkdir -p "$OUT" outputs/demo
pack() { tar czf - -C outputs/demo "$@" | split -b 15M - "$OUT/$name.tgz."; }
case $stage in
  vae)
    timeout "${STAGE_LIMIT:-540}" python3 tools/run_notebook.py nbs/examples/train_demo_vae.ipynb "$OUT/train_demo_vae.ipynb" "$@" 2>&1 | grep --line-buffered -v Warning | tee "$OUT/vae.log"
    if [ -f outputs/demo/model/model_index.json ]; then name=model_stage1; pack model vae_run/summary.json
    else echo "cut off before the model folder was written: on this warm machine, run again with -p resume latest"; fi ;;
  transformer)
    if [ ! -f outputs/demo/data/dataset.json ]; then  # same seed and count as stage 1 -> the same clips
      python3 -c "from easyanimate.shapes import write_dataset; write_dataset('outputs/demo/data', num_clips=6000, seed=0, workers=16)"
    fi
    if [ ! -f outputs/demo/model/model_index.json ]; then  # a cold machine: the folder around stage 1's committed VAE
      python3 -c "from easyanimate.shapes import assemble_demo_model; assemble_demo_model('outputs/demo/model', 'easyanimate/demo_model/vae', 'outputs/demo/data/dataset.json', seed=0)" || exit 1
    fi
    if [ -n "${INIT_TRANSFORMER:-}" ] && [ -z "$(find outputs/demo/transformer_run -name 'checkpoint-*' -print -quit 2>/dev/null)" ]; then
      rm -rf outputs/demo/model/transformer && cp -r "$INIT_TRANSFORMER" outputs/demo/model/transformer || exit 1
      echo "starting from the transformer in $INIT_TRANSFORMER"
    fi
    timeout "${STAGE_LIMIT:-540}" python3 tools/run_notebook.py nbs/examples/train_demo_transformer.ipynb "$OUT/train_demo_transformer.ipynb" "$@" 2>&1 | grep --line-buffered -v Warning | tee "$OUT/transformer.log"
    if [ -f outputs/demo/transformer_run/summary.json ]; then name=model_trained; pack model transformer_run/summary.json
    else echo "cut off before the trained transformer was installed: see $OUT/transformer.log; on this warm machine, run again with -p resume latest"; fi ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
ls -la "$OUT"; echo "stage $stage: ${SECONDS} s"
