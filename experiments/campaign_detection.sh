#!/usr/bin/env bash
# Issue 21's campaign: the detection row (SSD300-MobileNetV1 on the detection scenes), from the data to
# the searches, on this host. Every stage is resumable and skipped once its result exists, so after a
# kill or in a new session the same command continues where it stopped:
#
#   bash experiments/campaign_detection.sh                  # every stage, in order
#   bash experiments/campaign_detection.sh backbone ssd     # the named stages only (same order rules)
#   DRY=1 bash experiments/campaign_detection.sh            # print each stage's command and state, run nothing
#
# Stages (what each writes; the figures go to docs/results.md):
#   scenes       the detection scenes from the Imagenette photos (= make scenes)  $SCENES/annotations/instances_holdout.json
#   backbone     MobileNetV1 (imagenet stem) trained on Imagenette at 128 px      $A0_ROOT/mobilenet_v1-imagenette-128/a0.json
#   ssd          the a0: SSD300 from that backbone, 12 epochs on the scenes       $A0_ROOT/ssd_mobilenet_v1-scenes-300/a0.json
#   int8_avx2    a0 in FP32 / FP16 / INT8 (PTQ, heads in FP32, accuracy control): mAP on validation
#   int8_vnni    and held-out scenes (experiments/detection_int8.py)             $OUT/int8-<profile>.json
#   supernet     the detection supernet from a0 (recipe ssd_from_a0)            $OUT/supernet/supernet.pt
#   search_avx2  model-based PPO, finalists, export (experiment ssd_scenes_avx2)  $OUT/avx2-ppo_model/export/report.json
#   search_vnni  the same on icelake_vnni (accuracy cached: mostly latency)
#   row_avx2     the seed table's row: a0 FP32 / FP16 / INT8 and the export, held-out mAP, speed-ups in
#   row_vnni     the same rounds, IR sizes, decoding + NMS apart (experiments/seed_row.py)
#                                                              $OUT/<avx2|vnni>-ppo_model/seed_row/seed_row.json
#
# Logs: $OUT/<stage>.log. Time nothing else while a timing stage runs (int8_*, search_*, row_*): no tests,
# no training.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-outputs/campaign-detection}
A0_ROOT=${A0_ROOT:-outputs/a0}
SCENES=${SCENES:-data/scenes-300}
BIN=.venv/bin
BACKBONE=$A0_ROOT/mobilenet_v1-imagenette-128
SSD=$A0_ROOT/ssd_mobilenet_v1-scenes-300
STAGES=(scenes backbone ssd int8_avx2 int8_vnni supernet search_avx2 search_vnni row_avx2 row_vnni)
# channels-last, and bf16 autocast where the CPU computes it natively: SSD300 trains at 9-10 img/s
# instead of ~7 in the recipe's fp32 NCHW on a 2-core AVX-512-BF16 Xeon (session 18, 150 s runs;
# channels-last is the gain: fp32 and bf16 with it were within noise, ~10 and ~9.3 img/s), so an
# epoch of the scenes is ~18 min and the a0's 12 epochs ~3.6 h
FAST=(recipe.precision=auto recipe.channels_last=true)

device_of() {  # the device profile of a stage: kabylake_avx2 or icelake_vnni
  case $1 in *avx2) echo kabylake_avx2 ;; *) echo icelake_vnni ;; esac
}

result_of() {  # the file whose existence marks the stage done
  case $1 in
    scenes) echo "$SCENES/annotations/instances_holdout.json" ;;
    backbone) echo "$BACKBONE/a0.json" ;;
    ssd) echo "$SSD/a0.json" ;;
    int8_*) echo "$OUT/int8-$(device_of "$1").json" ;;
    supernet) echo "$OUT/supernet/supernet.pt" ;;
    search_avx2) echo "$OUT/avx2-ppo_model/export/report.json" ;;
    search_vnni) echo "$OUT/vnni-ppo_model/export/report.json" ;;
    row_*) echo "$OUT/${1#row_}-ppo_model/seed_row/seed_row.json" ;;
  esac
}

run_stage() {
  case $1 in
    scenes) run "$BIN/python" experiments/make_detection_scenes.py --source data/imagenette-128 --out "$SCENES" ;;
    backbone) run "$BIN/python" experiments/train_a0.py --model mobilenet_v1 --stem imagenet --dataset imagenette \
                --resolution 128 --epochs 40 --out "$BACKBONE" ;;
    ssd) run "$BIN/python" experiments/train_a0.py --model ssd_mobilenet_v1 --dataset scenes --resolution 300 \
           --backbone "$BACKBONE/a0.pt" --epochs 12 --eval-every 3 --override "dataset.root=$SCENES" \
           $(printf -- '--override %s ' "${FAST[@]}") --out "$SSD" ;;
    int8_*) run "$BIN/python" experiments/detection_int8.py --a0 "$SSD" --device "$(device_of "$1")" \
              --accuracy-control --json "$(result_of "$1")" ;;
    supernet) run "$BIN/rlnas-train-supernet" model=ssd_mobilenet_v1 dataset=scenes "dataset.root=$SCENES" \
                resolution=300 recipe=ssd_from_a0 "${FAST[@]}" "a0.checkpoint=$SSD/a0.pt" \
                "output_dir=$OUT/supernet" ;;
    search_*) run "$BIN/rlnas-search" "experiment=ssd_scenes_${1#search_}" reward=hard agent=ppo_model \
                "dataset.root=$SCENES" "a0.checkpoint=$SSD/a0.pt" "supernet.checkpoint=$OUT/supernet" \
                "run_dir=$OUT/${1#search_}-ppo_model" ;;
    row_*) run "$BIN/python" experiments/seed_row.py "$OUT/${1#row_}-ppo_model" --passes 3 ;;
  esac
}

# shellcheck source=experiments/campaign_stages.sh
source experiments/campaign_stages.sh
main "$@"
