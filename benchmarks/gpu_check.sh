#!/usr/bin/env bash
# The GPU performance check of issue 7, as ONE device call (about 8 minutes; prepare first with
# benchmarks/gpu_prepare.sh on the CPU machine):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".gpu_carry"], timeout_s=560)
# In priority order, each step skipped when the time budget (BUDGET_S, default 480 s) is spent:
#   1. versions, GPU;  2. attention fwd+bwd probe at the ViT-S/16 shape (256 x 197 tokens x 6 heads
#      x 64): xla vs cudnn, unpadded and padded to 8/64/128 -> the attention setting used below;
#   3. ViT-B/16 -> ViT-S/16, batch 256, 224 px, bf16: peer (torch eager + torch.compile), then jkd
#      (XLA attention) with the bf16 matmul peak for MFU;  4. ViT-L/16 -> ViT-S/16 + ConvNeXt-T (one
#      step, one teacher forward): peer torch.compile, then jkd with the probe's attention;
#   5. ViT-B/16 -> ViT-S/16 with cuDNN attention (if the probe chose it);
#   6. spare time: ConvNeXt depthwise 'shift' variant, an XLA-flags variant.
# Everything goes to $OUT: results.jsonl (every JSON line), log.txt, summary.md (the table, also printed last).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/jkd_gpu_out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu_carry/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY="${PY:-python3}"
PEER="$PWD/benchmarks/peer_timm_kd.py"  # in the repository: travels with the working tree
RES="$OUT/results.jsonl"; LOG="$OUT/log.txt"
BUDGET_S="${BUDGET_S:-480}"; T0=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
# step NAME MIN_SECONDS CMD...: run CMD with the time that is left, if at least MIN_SECONDS are.
step() {
  local name=$1 need=$2; shift 2
  local l; l=$(left)
  if (( l < need )); then echo "== skip $name ($l s left, needs ~$need)" | tee -a "$LOG"; return 1; fi
  echo "== $name ($l s left) :: $*" | tee -a "$LOG"
  local t0; t0=$(date +%s)
  timeout -k 10 "$l" "$@" 2>&1 | grep -v -e '^WARNING' -e 'UserWarning' | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name rc=$rc in $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
  return "$rc"
}
B=(--batch 256 --image 224 --dtype bfloat16 --warmup 3 --steps 10 --repeats 5 --out "$RES")
TB=vit_b16 SB=vit_s16 TL=vit_l16 SL=vit_s16,convnext_t PROBE_S=256,197,6,64
PEER_B=(--peer "$PEER" --peer-modes eager,compile --peer-timeout 300)
PEER_L=(--peer "$PEER" --peer-modes compile --peer-timeout 300)
if [[ "${SMOKE:-0}" == 1 ]]; then  # CPU check of this script's logic: tiny models, no peer (no torch/GPU)
  B=(--batch 8 --image 16 --channels 1 --classes 10 --stem-stride 2 --dtype bfloat16 --warmup 1 --steps 1
     --repeats 2 --out "$RES")
  TB=vit_atto4 SB=vit_atto4 TL=vit_atto4 SL=vit_atto4,convnext_zepto PROBE_S=2,17,6,8
  PEER_B=() PEER_L=()
fi

[[ "${SMOKE:-0}" == 1 || ( -f "$PEER" && -d .gpu_carry/site/ml_collections ) ]] || { echo "run benchmarks/gpu_prepare.sh first (and carry .gpu_carry)"; exit 2; }
step env 5 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; $PY -c 'import jax, flax, optax, torch, timm; print(\"jax\", jax.__version__, jax.devices(), \"flax\", flax.__version__, \"optax\", optax.__version__, \"torch\", torch.__version__, \"timm\", timm.__version__)'"
step attention_probe 40 "$PY" -m jkd.bench --attention-probe "$PROBE_S" --dtype bfloat16 --out "$RES"
# cuDNN at the fastest padding that compiled, if it beat XLA's unpadded attention in the probe.
read -r ATT APAD < <("$PY" - "$RES" <<'PYEOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
att = [r for r in recs if r.get("kind") == "attention" and "fwd_bwd_ms" in r]
xla = [r["fwd_bwd_ms"] for r in att if r["impl"] == "xla" and r["pad_to"] == 0]
cud = sorted((r["fwd_bwd_ms"], r["pad_to"]) for r in att if r["impl"] == "cudnn")
print(f"cudnn {cud[0][1]}" if cud and (not xla or cud[0][0] < xla[0]) else "xla 0")
PYEOF
)
ATT=${ATT:-xla} APAD=${APAD:-0}
echo "== attention chosen from the probe: $ATT pad $APAD" | tee -a "$LOG"

# Target 1 (ViT-B/16 -> ViT-S/16) with XLA attention, the peer in eager and torch.compile modes.
step b_to_s_xla_and_peer 150 "$PY" -m jkd.bench --teacher $TB --students $SB "${B[@]}" --peak "${PEER_B[@]}"
# Target 2 (ViT-L/16 -> ViT-S/16 + ConvNeXt-T, one step), the probe's attention, peer torch.compile.
step l_to_s_cnt 120 "$PY" -m jkd.bench --teacher $TL --students $SL "${B[@]}" --peak \
  --attention "$ATT" --attention-pad "$APAD" "${PEER_L[@]}"
# Target 1 again with cuDNN attention (the summary compares both with the same peer lines).
if [[ "$ATT" == cudnn ]]; then
  step b_to_s_cudnn 60 "$PY" -m jkd.bench --teacher $TB --students $SB "${B[@]}" --peak --attention cudnn \
    --attention-pad "$APAD"
fi
step l_to_s_cnt_dw_shift 90 "$PY" -m jkd.bench --teacher $TL --students $SL "${B[@]}" \
  --attention "$ATT" --attention-pad "$APAD" --dw-impl shift
step b_to_s_flags 60 "$PY" -m jkd.bench --teacher $TB --students $SB "${B[@]}" \
  --attention "$ATT" --attention-pad "$APAD" --xla-flags=--xla_gpu_enable_triton_gemm=false

"$PY" -m jkd.bench --summary "$RES" | tee "$OUT/summary.md"
echo "total $(( $(date +%s) - T0 )) s"
