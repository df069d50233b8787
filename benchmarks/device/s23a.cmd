# The queued first call (run's command; carry [".head", ".whl", ".fa3src"]), after
#   FA_GIT=... CUTLASS_GIT=... bash benchmarks/device/prepare.sh
# Replace SHA_OF_HEAD below with `git rev-parse --short HEAD` of the commit .head holds (the device
# copy has no .git, and the rows record this variable). FA3 compiles in the background while
# kernel_bench and the RMSNorm sweep time GPU kernels (their gpu figures, the kernels' device time,
# are what counts: wall times taken while the compiler holds the CPU are not comparable); the rows of
# s23a.txt run after the build. The FA3 wheel comes back in $OUT: keep it as .fa3whl for later calls.
cp -r .whl .fa3src .head/ && cd .head && export STEPBENCH_GIT_COMMIT=SHA_OF_HEAD STEPBENCH_GIT_DIRTY=0 BUILD_FA3=1 DURING_BUILD="python3 benchmarks/kernel_bench.py --providers eager,inductor,triton --ops rms_norm,add_rms_norm --out $OUT/kernels-s23a.jsonl 2>&1 | tail -20; python3 benchmarks/rmsnorm_bwd_sweep.py --out $OUT/rmsnorm-sweep-s23a.jsonl 2>&1 | tail -8" && timeout 575 bash benchmarks/device_rows.sh benchmarks/device/s23a.txt s23a 2>&1 | tee $OUT/log-s23a.txt
