#!/bin/sh
# Run a budget measurement at nice -10 in a session of its own. With the kernel's autogroups
# (sched_autogroup_enabled=1) the CPU is shared between sessions first, so a plain `nice`
# only ranks a process within its own session: the session's autogroup gets the nice value.
# Needs root. Usage: bench/prioritised.sh .venv/bin/python -m bench.bench_aggregator
set -e
if [ -w /proc/self/autogroup ]; then
    echo -10 > /proc/self/autogroup
fi
exec nice -n -10 "$@"
