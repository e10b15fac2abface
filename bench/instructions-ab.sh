#!/usr/bin/env bash
# Instructions executed per record of W (keyed-count, p=2, checkpoints off) under
# valgrind's cachegrind, for two flowstate binaries: the marginal count between a
# short and a longer run, so start-up and the final checksum cancel out. Counts do not
# depend on the machine's load (unlike CPU time), so this A/B is usable while other
# work runs; it does not see memory stalls (measure those with bench/side-by-side-ab.sh
# on a quiet machine).
#   BASE=/tmp/flowstate-before NEW=target/release/flowstate bash bench/instructions-ab.sh
BASE=${BASE:?set BASE to the flowstate binary before the change}
NEW=${NEW:-target/release/flowstate}
SHORT=${SHORT:-1000000}; LONG=${LONG:-4000000}
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
refs() {
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
    "$1" run keyed-count --records "$2" --parallelism 2 --checkpoint-interval off --rest off 2>&1 |
    grep -E 'I +refs' | awk '{gsub(",", "", $4); print $4}'
}
for b in base new; do
  bin=$BASE; [ $b = new ] && bin=$NEW
  short=$(refs "$bin" "$SHORT"); long=$(refs "$bin" "$LONG")
  echo "$b instructions_per_record=$(echo "scale=1; ($long - $short) / ($LONG - $SHORT)" | bc)"
done
