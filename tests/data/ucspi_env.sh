#!/bin/sh
# Print the UCSPI variables this program was given, one NAME=value a line, sorted:
# run under forkserve and under tcpserver, the outputs are compared.
env | grep -E '^(PROTO|TCP)' | LC_ALL=C sort
