# The stage runner of the campaign scripts (sourced by experiments/campaign_*.sh after they define
# STAGES, result_of STAGE and run_stage STAGE): each named stage (all of STAGES by default) in order,
# skipped once result_of's file exists; under DRY=1 each stage's command and state, nothing run.

run() {  # the command, or under DRY=1 its quoted form
  if [ -n "${DRY:-}" ]; then printf '  '; printf '%q ' "$@"; echo; else "$@"; fi
}

valid_stage() {  # the stage is one of STAGES (a script's patterns may accept more names than that)
  local known
  for known in "${STAGES[@]}"; do [ "$known" = "$1" ] && return 0; done
  echo "$(basename "$0"): unknown stage '$1' (stages: ${STAGES[*]})" >&2
  return 2
}

main() {
  local wanted=("$@")
  [ ${#wanted[@]} -gt 0 ] || wanted=("${STAGES[@]}")
  for stage in "${wanted[@]}"; do valid_stage "$stage" || exit 2; done
  [ -n "${DRY:-}" ] || mkdir -p "$OUT"
  for stage in "${wanted[@]}"; do
    local result
    result=$(result_of "$stage")
    if [ -e "$result" ]; then
      echo "[$stage] done: $result"
    elif [ -n "${DRY:-}" ]; then
      echo "[$stage] to run:"
      run_stage "$stage"
    else
      echo "[$stage] $(date -u +%FT%TZ) running, log $OUT/$stage.log"
      run_stage "$stage" 2>&1 | tee -a "$OUT/$stage.log"
      [ -e "$result" ] || { echo "[$stage] finished without $result" >&2; exit 1; }
    fi
  done
}
