#!/bin/sh
# Print the UCSPI variables this program was given (UNIX* and any stale TCP* one),
# one NAME=value a line, sorted, then its own pid: run under forkserve and under
# ucspi-unix's unixserver, the outputs are compared.
env | grep -E '^(PROTO|UNIX|TCP)' | LC_ALL=C sort
echo "PID=$$"
