#!/usr/bin/env bash
# Finish the v2 embedded model on a lent GPU (the device tool), in two calls that each fit its 10-minute limit.
#
#   STEP=1  import the VAE, render and encode the 128x128 scenes, fine-tune at 128x128 starting from $INIT:
#           by default the shipped v2 model (assets/tiny-flux-scenes: fine-tuned 1,200 steps, then 1,500 more at
#           timestep shift 3, then distilled at shift 3, on a CPU), so a GPU continues where the CPU stopped. To redo the 128x128 phases from the 64x64 pretraining
#           instead, restore it first (`git checkout d94d142 -- assets/tiny-flux-scenes-v2-pretrain`, 20 MB, not
#           in the tree since v2 shipped) and set INIT=assets/tiny-flux-scenes-v2-pretrain.
#           PAIR_WEIGHT=W (and PAIR_MIN_T, default 0.6) fine-tunes on shape pairs with the pair error
#           (--pair-weight; see the model card for what it did on a CPU before spending a GPU call on it).
#           TIMESTEP_SHIFT=S (default 3) trains at noise levels shifted towards pure noise (--timestep-shift;
#           on a CPU, 3 against 1 took striped backgrounds from 38% to 90%, see the model card); give STEP=2
#           the same value, so that the distillation and the exported scheduler use it too.
#   STEP=2  distil true CFG into the guidance embedding, export the FluxPipeline directory, judge prompt
#           adherence on 200 held-out prompts at 10, 28 and 50 steps
#
# The work directory (runs/embedded-v2-gpu) stays on the warm machine between the two calls; each phase resumes
# from its checkpoint if a call is cut short, so running a STEP again continues it. What comes back under $OUT:
# loss logs, eval.json, samples.png, and the exported model as a tar in 15 MB parts (the tool returns files of
# at most 16 MiB): `cat model.tar.part-* | tar -x -C runs/` here. The device machine has PyTorch but not
# diffusers; carry its wheel in .whl/ (see /work/.library/device/README.md).
#
# Example (device tool): run(command="STEP=1 bash devtools/train_v2_on_gpu.sh", carry=[".whl"], timeout_s=560)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-runs/embedded-v2-gpu}
OUT=${OUT:-runs/embedded-v2-gpu-out}
mkdir -p "$OUT"
train() { python3 -m embedded_model.training --arch v2 --work "$WORK" --device "$DEVICE" --images "${IMAGES:-40000}" \
  --timestep-shift "${TIMESTEP_SHIFT:-3}" "$@"; }

case "${STEP:-1}" in
1)
  train --stage vae --vae-from assets/tiny-flux-scenes
  init=()
  [ -f "$WORK/finetune.pt" ] || init=(--init-from "${INIT:-assets/tiny-flux-scenes}")
  pairs=()
  [ -z "${PAIR_WEIGHT:-}" ] || pairs=(--pair-weight "$PAIR_WEIGHT" --pair-min-t "${PAIR_MIN_T:-0.6}")
  train --stage finetune --finetune-steps "${FINETUNE_STEPS:-6000}" --minutes "${FINETUNE_MINUTES:-6}" "${init[@]}" "${pairs[@]}"
  cp "$WORK"/*_loss.csv "$OUT"/ 2>/dev/null || true  # written every 50 steps
  ;;
2)
  train --stage distill --distill-steps "${DISTILL_STEPS:-3000}" --minutes "${DISTILL_MINUTES:-3}"
  train --stage export --out "$WORK/tiny-flux-scenes"
  cp "$WORK"/*_loss.csv "$OUT"/ 2>/dev/null || true  # written every 50 steps
  python3 -m embedded_model.training.evaluate --model "$WORK/tiny-flux-scenes" --prompts "${EVAL_PROMPTS:-200}" \
      --steps 10 28 50 --device "$DEVICE" --out "$OUT"
  tar -C "$WORK" -cf - tiny-flux-scenes | split -b 15m - "$OUT/model.tar.part-"
  ;;
*)
  echo "STEP must be 1 or 2" >&2
  exit 2
  ;;
esac
