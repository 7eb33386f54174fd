#!/bin/sh
# Stand-in for GoReplay that exercises the bench's GoReplay variant where no GoReplay
# binary exists (nothing downloads one): it checks that it is called the way the bench
# calls GoReplay, then waits to be stopped, capturing nothing.
#   GOR=xtask/src/bench/goreplay-standin.sh cargo xtask bench --sizes 100 --repeats 1 --no-kafka --no-https
case "$1 $2 $3 $4 $5" in
    "--input-raw :"[0-9]*" --input-raw-track-response --output-stdout ") exec sleep 3600 ;;
    *) echo "goreplay-standin: unexpected arguments: $*" >&2; exit 2 ;;
esac
