#!/usr/bin/env bash
# The honest-baseline comparison (issue 12): tune the peak LR of every run on a validation split held out of
# the training set, then train each run at its chosen LR with 3 seeds and compare on the test split.
#
#   bash bench/baselines.sh tune cifar10      # OUT=results/baselines/cifar10-jpeg-resnet/tune
#   bash bench/baselines.sh sweep cifar10     # OUT=results/baselines/cifar10-jpeg-resnet (resumes)
#   bash bench/baselines.sh target cifar10    # OUT=results/baselines/cifar10-jpeg-resnet-20ep: fixed 64 and 128
#                                             # tuned and run for 20 epochs, issue 12's 90 % target
#   bash bench/baselines.sh runs cifar10      # the output folder, then the runs it compares, a spec a line
#   bash bench/baselines.sh timing cifar10    # OUT=results/baselines/cifar10-jpeg-resnet-timing: every run once (seed 0)
#                                             # at its tuned LR, so all its times come from one session (resumes)
#   (datasets: cifar10, mnist, fashion-mnist; JOBS=8 trains 8 tuning trials at once)
#
# Every run: SGD with Nesterov momentum 0.9, weight decay 5e-4, warm-up (1 epoch) then linear decay to zero
# over the share of training samples seen, LR scaled by sqrt(B / b_init) as the batch changes, bf16 on CUDA.
# CIFAR-10 also: random crop (4 px) and flip on the GPU, label smoothing 0.1. Label smoothing 0.1 puts a floor
# under the entropy a well-fitted model reaches (labkit.signals.smoothed_target_entropy): H(0.91, 9 x 0.01) =
# 0.50 nats, h = H / ln 10 = 0.22, above the confidence rule's default low=0.2; CIFAR-10's confidence run grows
# below low=0.3 instead. Tuning trials train on 90% of the training set and are scored on the other 10% (never
# the test split). Each fixed batch and each adaptive strategy gets the same tuning budget: 5 peak LRs, x2
# apart, widened by one LR at a time (up to 2) wherever the best sits at an end of its grid. The goodput
# strategy runs twice: with the same sqrt coupling as the others, and as issue 17 designs it, with AdaScale's
# gain (--lr-rule adascale, label goodput-adascale).
set -euo pipefail
step=${1:?usage: baselines.sh tune|sweep|target|timing|runs DATASET}
dataset=${2:?usage: baselines.sh tune|sweep|target|timing|runs DATASET}
JOBS=${JOBS:-8}
STOP_AFTER=${STOP_AFTER:-450}
command -v labkit >/dev/null || labkit() { "${PYTHON:-python3}" -m labkit "$@"; }  # a checkout, not installed

case $dataset in
  cifar10)
    out=results/baselines/cifar10-jpeg-resnet
    common=(--dataset cifar10 --model resnet --epochs 16 --label-smoothing 0.1)
    adaptive=(linear:b_init=64,a=64,max_batch=1024 progressive:b_init=64,target=1024,warmup=8
              loss:b_init=64,delta=ema,alpha=0.3,max_batch=1024 gns:b_init=64,max_batch=1024
              exponential:b_init=64,a=1.2,max_batch=1024 'epoch:b_init=64,milestones=4>128;8>256;12>512'
              goodput:b_init=64,max_batch=1024 loss:b_init=64,delta=variance,window=3,tolerance=0.05,max_batch=1024
              loss:b_init=64,delta=diff,max_batch=1024 cyclical:b_init=64,period=4,max_batch=1024
              confidence:b_init=64,num_classes=10,low=0.3,max_batch=1024) ;;
  mnist|fashion-mnist)
    if [ "$dataset" = mnist ]; then
      out=results/baselines/mnist-mlp; common=(--dataset mnist --model mlp --epochs 10)
    else
      out=results/baselines/fashion-mnist-cnn; common=(--dataset fashion-mnist --model cnn --epochs 10)
    fi
    adaptive=(linear:b_init=64,a=96,max_batch=1024 exponential:b_init=64,a=1.35,max_batch=1024
              cyclical:b_init=64,period=4,max_batch=1024 progressive:b_init=64,target=1024,warmup=5
              'epoch:b_init=64,milestones=3>128;5>256;7>512' loss:b_init=64,delta=diff,max_batch=1024
              loss:b_init=64,delta=ema,alpha=0.3,max_batch=1024
              loss:b_init=64,delta=variance,window=3,tolerance=0.05,max_batch=1024
              confidence:b_init=64,num_classes=10,max_batch=1024 gns:b_init=64,max_batch=1024
              goodput:b_init=64,max_batch=1024) ;;
  *) echo "baselines.sh: dataset '$dataset' is not one of cifar10, mnist, fashion-mnist" >&2; exit 2 ;;
esac
fixed=(fixed:b_init=64 fixed:b_init=256 fixed:b_init=1024)
adascale=(--lr-rule adascale --runs goodput-adascale=goodput:b_init=64,max_batch=1024)

case $step in
  tune)   # one grid per starting batch: x2 apart, centred where the linear scaling rule puts it
    labkit tune "${common[@]}" --jobs "$JOBS" --widen 2 --no-progress --out "$out/tune" \
      --lrs 0.0125 0.025 0.05 0.1 0.2 --runs fixed:b_init=64 "${adaptive[@]}"
    labkit tune "${common[@]}" --jobs "$JOBS" --widen 2 --no-progress --out "$out/tune" \
      --lrs 0.0125 0.025 0.05 0.1 0.2 "${adascale[@]}"
    labkit tune "${common[@]}" --jobs "$JOBS" --widen 2 --no-progress --out "$out/tune" \
      --lrs 0.025 0.05 0.1 0.2 0.4 --runs fixed:b_init=256
    labkit tune "${common[@]}" --jobs "$JOBS" --widen 2 --no-progress --out "$out/tune" \
      --lrs 0.05 0.1 0.2 0.4 0.8 --runs fixed:b_init=1024 ;;
  sweep|timing)   # timing: one seed of every run, back to back, so that their times share a session
    seeds=(0 1 2); dest=$out
    [ "$step" = timing ] && { seeds=(0); dest=$out-timing; }
    labkit sweep "${common[@]}" --tuned "$out/tune" --seeds "${seeds[@]}" --no-progress --out "$dest" \
      --stop-after "$STOP_AFTER" --runs "${fixed[@]}" "${adaptive[@]}"
    labkit sweep "${common[@]}" --tuned "$out/tune" --seeds "${seeds[@]}" --no-progress --out "$dest" \
      --stop-after "$STOP_AFTER" "${adascale[@]}" ;;
  target)   # the same recipe for 20 epochs: does the best tuned fixed batch reach 90 %?
    [ "$dataset" = cifar10 ] || { echo "baselines.sh: the target step is for cifar10, not '$dataset'" >&2; exit 2; }
    out=$out-20ep
    labkit tune "${common[@]}" --epochs 20 --jobs "$JOBS" --widen 2 --no-progress --out "$out/tune" \
      --lrs 0.0125 0.025 0.05 0.1 0.2 --runs fixed:b_init=64
    labkit tune "${common[@]}" --epochs 20 --jobs "$JOBS" --widen 2 --no-progress --out "$out/tune" \
      --lrs 0.025 0.05 0.1 0.2 0.4 --runs fixed:b_init=128
    labkit sweep "${common[@]}" --epochs 20 --tuned "$out/tune" --seeds 0 1 2 --no-progress --out "$out" \
      --stop-after "$STOP_AFTER" --runs fixed:b_init=64 fixed:b_init=128 ;;
  runs)
    printf '%s\n' "$out" "${fixed[@]}" "${adaptive[@]}" "${adascale[3]}" ;;
  *) echo "baselines.sh: step '$step' is not one of tune, sweep, target, timing, runs" >&2; exit 2 ;;
esac
