#!/usr/bin/env bash
# Issue 23's campaign: ResNet-50 on Imagenette at 128 px, from the a0 to the comparisons, on this host.
# Every stage is resumable and skipped once its result exists, so after a kill or in a new session
# the same command continues where it stopped:
#
#   bash experiments/campaign_128.sh                  # every stage, in order
#   bash experiments/campaign_128.sh supernet search_avx2   # the named stages only (same order rules)
#   DRY=1 bash experiments/campaign_128.sh            # print each stage's command and state, run nothing
#
# Stages (what each writes; the figures go to docs/results.md):
#   a0              the ResNet-50 a0 (experiments/train_a0.py)             $A0/a0.json
#   supernet        the supernet from a0 (recipe from_a0)                  $OUT/supernet/supernet.pt
#   search_avx2     model-based PPO, finalists, export on kabylake_avx2    $OUT/avx2-ppo_model/export/report.json
#   search_vnni     the same on icelake_vnni (accuracy cached: mostly latency)
#   resnet18        the baselines a user would pick instead, a0's recipe   outputs/a0/<model>-imagenette-128/a0.json
#   mobilenet_v2
#   baselines_avx2  baselines timed beside a0 and the finalists            <run>/baselines/baselines.json
#   baselines_vnni
#   row_avx2        the seed table's row of search_avx2's export: a0 FP32 / FP16 / INT8 beside it, held-out
#   row_vnni        top-1, speed-ups in the same rounds, IR sizes (experiments/seed_row.py)  <run>/seed_row/seed_row.json
#   agreement_avx2  20 candidates of avx2-ppo_model re-timed: search vs confirmation vs benchmark_app
#                                                                          <run>/latency_agreement.json
#   evolution_avx2  evolution at the same budget                           $OUT/avx2-evolution/export/report.json
#   evolution_vnni
#   hardware        one candidate pool timed on every profile              $OUT/hardware_awareness/hardware_awareness.json
#   supernet_r18    a space that reaches ResNet-18: the ResNet-18 family (basic blocks, 1-2 blocks a
#                   stage) from the ResNet-18 trained with a0's recipe   $OUT/supernet-resnet18/supernet.pt
#   search_r18_avx2 model-based PPO, finalists, export in that space on kabylake_avx2 (a0 = that
#                   ResNet-18)                                            $OUT/avx2-r18-ppo_model/export/report.json
#   search_r18_vnni the same on icelake_vnni (accuracy cached: mostly latency)
#                                                                          $OUT/vnni-r18-ppo_model/export/report.json
#   baselines_r18_avx2  the ResNet-50 a0 and MobileNetV2 timed beside that run's a0 and finalists, the
#                   bound and the ratios against the ResNet-50   $OUT/avx2-r18-ppo_model/baselines/baselines.json
#   baselines_r18_vnni
#   agreement_r18_vnni  agreement_avx2's check on vnni-r18-ppo_model
#   search_r18_avx2_seed1, _seed2 (and baselines_r18_avx2_seed1, _seed2)  search_r18_avx2 with another
#                   search seed (the same supernet)              $OUT/avx2-r18-ppo_model-seed<N>/export/report.json
#   supernet_mnv2   a space that reaches MobileNetV2 (elastic depth, width, expand ratio) from the
#                   MobileNetV2 trained with a0's recipe             $OUT/supernet-mobilenet_v2/supernet.pt
#   search_mnv2_avx2, _vnni  model-based PPO, finalists, export in that space (a0 = that MobileNetV2)
#                                                                    $OUT/avx2-mnv2-ppo_model/export/report.json
#   baselines_mnv2_avx2, _vnni  the ResNet-50 a0 and ResNet-18 beside it, the ResNet-50 the reference
#
# Logs: $OUT/<stage>.log. Time nothing else while it runs (it times latency): no tests, no training.
set -euo pipefail
cd "$(dirname "$0")/.."

# The supernet's recipe: from_a0_long (8 epochs). Session 12's run used from_a0 (3 epochs) in
# outputs/campaign-128: OUT=outputs/campaign-128 RECIPE=from_a0 continues that one.
RECIPE=${RECIPE:-from_a0_long}
OUT=${OUT:-outputs/campaign-128-long}
A0_ROOT=${A0_ROOT:-outputs/a0}
A0=${A0:-$A0_ROOT/resnet50-imagenette-128}
BIN=.venv/bin
R18=$A0_ROOT/resnet18-imagenette-128
MOBILENET_V2=$A0_ROOT/mobilenet_v2-imagenette-128
STAGES=(a0 supernet search_avx2 search_vnni resnet18 mobilenet_v2 baselines_avx2 baselines_vnni row_avx2 row_vnni
        agreement_avx2 evolution_avx2 evolution_vnni hardware
        supernet_r18 search_r18_avx2 baselines_r18_avx2 search_r18_vnni baselines_r18_vnni agreement_r18_vnni
        search_r18_avx2_seed1 baselines_r18_avx2_seed1 search_r18_avx2_seed2 baselines_r18_avx2_seed2
        supernet_mnv2 search_mnv2_avx2 baselines_mnv2_avx2 search_mnv2_vnni baselines_mnv2_vnni)

# The two search spaces: the ResNet-50 a0's, and the ResNet-18 family from the ResNet-18 of a0's recipe
# (then that ResNet-18 is the run's a0, and the ResNet-50 a0 the reference of baselines_r18_*).
R50_SPACE=("supernet.checkpoint=$OUT/supernet")
R18_SPACE=(model=resnet18 "a0.checkpoint=$R18/a0.pt" "supernet.checkpoint=$OUT/supernet-resnet18")
MNV2_SPACE=(model=mobilenet_v2 "a0.checkpoint=$MOBILENET_V2/a0.pt" "supernet.checkpoint=$OUT/supernet-mobilenet_v2")

train_a0() {  # train_a0 MODEL: a0's recipe at 128 px, 40 epochs
  run "$BIN/python" experiments/train_a0.py --model "$1" --dataset imagenette --resolution 128 --epochs 40 \
    --out "$A0_ROOT/$1-imagenette-128"
}

search() {  # search STAGE AGENT SPACE_OVERRIDES...: one search run on the stage's profile, in its run
  local stage=$1 agent=$2
  shift 2
  run "$BIN/rlnas-search" "experiment=resnet50_imagenette_$(profile_of "$stage")" reward=hard "$@" "agent=$agent" \
    "run_dir=$OUT/$(run_of "$stage")"
}

baselines() {  # baselines STAGE ARGS...: experiments/baselines.py on the stage's run (the networks, the reference)
  local stage=$1
  shift
  run "$BIN/python" experiments/baselines.py --run "$OUT/$(run_of "$stage")" "$@"
}

agreement() {  # agreement STAGE
  run "$BIN/python" experiments/latency_agreement.py --run "$OUT/$(run_of "$1")" --n 20 --passes 3 --benchmark-app
}

profile_of() {  # the profile a stage runs on: avx2 (kabylake_avx2) or vnni (icelake_vnni)
  case $1 in *avx2*) echo avx2 ;; *) echo vnni ;; esac
}

run_of() {  # the search run (under $OUT) a search, baselines or agreement stage makes or reads
  local profile
  profile=$(profile_of "$1")
  case $1 in
    search_avx2 | search_vnni | baselines_avx2 | baselines_vnni | row_avx2 | row_vnni | agreement_avx2)
      echo "$profile-ppo_model" ;;
    evolution_*) echo "$profile-evolution" ;;
    *_r18_avx2_seed[0-9]) echo "$profile-r18-ppo_model-seed${1##*seed}" ;;
    *_r18_*) echo "$profile-r18-ppo_model" ;;
    *_mnv2_*) echo "$profile-mnv2-ppo_model" ;;
    *) return 2 ;;
  esac
}

# the file whose existence marks the stage done
result_of() {
  case $1 in
    a0) echo "$A0/a0.json" ;;
    supernet) echo "$OUT/supernet/supernet.pt" ;;
    supernet_r18) echo "$OUT/supernet-resnet18/supernet.pt" ;;
    supernet_mnv2) echo "$OUT/supernet-mobilenet_v2/supernet.pt" ;;
    resnet18 | mobilenet_v2) echo "$A0_ROOT/$1-imagenette-128/a0.json" ;;
    hardware) echo "$OUT/hardware_awareness/hardware_awareness.json" ;;
    search_* | evolution_*) echo "$OUT/$(run_of "$1")/export/report.json" ;;
    baselines_*) echo "$OUT/$(run_of "$1")/baselines/baselines.json" ;;
    agreement_*) echo "$OUT/$(run_of "$1")/latency_agreement.json" ;;
    row_*) echo "$OUT/$(run_of "$1")/seed_row/seed_row.json" ;;
    *) echo "campaign_128.sh: unknown stage '$1' (stages: ${STAGES[*]})" >&2; return 2 ;;
  esac
}

run_stage() {
  case $1 in
    a0) train_a0 resnet50 ;;
    supernet) run "$BIN/rlnas-train-supernet" model=resnet50 dataset=imagenette resolution=128 "recipe=$RECIPE" \
                "a0.checkpoint=$A0/a0.pt" "output_dir=$OUT/supernet" ;;
    supernet_r18) run "$BIN/rlnas-train-supernet" model=resnet18 dataset=imagenette resolution=128 "recipe=$RECIPE" \
                    "a0.checkpoint=$R18/a0.pt" "output_dir=$OUT/supernet-resnet18" ;;
    supernet_mnv2) run "$BIN/rlnas-train-supernet" model=mobilenet_v2 dataset=imagenette resolution=128 \
                     "recipe=$RECIPE" "a0.checkpoint=$MOBILENET_V2/a0.pt" "output_dir=$OUT/supernet-mobilenet_v2" ;;
    resnet18 | mobilenet_v2) train_a0 "$1" ;;
    hardware) run "$BIN/python" experiments/hardware_awareness.py --supernet "$OUT/supernet" \
                --experiment resnet50_imagenette_avx2 --candidates-from "$OUT/$(run_of search_avx2)" \
                --out "$OUT/hardware_awareness" ;;
    search_avx2 | search_vnni) search "$1" ppo_model "${R50_SPACE[@]}" ;;
    row_*) run "$BIN/python" experiments/seed_row.py "$OUT/$(run_of "$1")" --passes 3 ;;
    evolution_*) search "$1" evolution "${R50_SPACE[@]}" ;;
    search_r18_avx2 | search_r18_vnni) search "$1" ppo_model "${R18_SPACE[@]}" ;;
    search_r18_avx2_seed[0-9]) search "$1" ppo_model "${R18_SPACE[@]}" "seed=${1##*seed}" ;;
    search_mnv2_avx2 | search_mnv2_vnni) search "$1" ppo_model "${MNV2_SPACE[@]}" ;;
    # the ResNet-18 and MobileNetV2 spaces' runs: the ResNet-50 a0 is the reference of the bound and the ratios
    baselines_r18_*) baselines "$1" --baseline "$A0/a0.pt" --baseline "$MOBILENET_V2/a0.pt" --reference resnet50 ;;
    baselines_mnv2_*) baselines "$1" --baseline "$A0/a0.pt" --baseline "$R18/a0.pt" --reference resnet50 ;;
    baselines_*) baselines "$1" --baseline "$R18/a0.pt" --baseline "$MOBILENET_V2/a0.pt" ;;
    agreement_*) agreement "$1" ;;
  esac
}

# shellcheck source=experiments/campaign_stages.sh
source experiments/campaign_stages.sh
main "$@"
