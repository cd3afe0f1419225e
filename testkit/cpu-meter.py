#!/usr/bin/env python3
"""CPU used by the processes of one network namespace, and by the whole machine.

    testkit/cpu-meter.py NETNS OUT

Every second: the CPU time of every process in network namespace NETNS (an e2e lane: its
libvirtd, guests' qemu, kvmprov runs, ssh, ansible, the mirror), summed over all processes seen
since the start (an exited one counts with its last sample), and the machine's busy CPU time
since the start (/proc/stat), written to OUT as "LANE_SECONDS MACHINE_SECONDS". Processes that
live less than a second are missed: a lower bound. Ends when the namespace is removed. By name,
not by a process in it: the machine's libvirtd (one lane) is restarted by some scenarios."""
import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def named(name):
    """The namespace `ip netns add NAME` made, as /proc/PID/ns/net reads it; None once removed."""
    try:
        return f"net:[{os.stat(f'/run/netns/{name}').st_ino}]"
    except OSError:
        return None


def netns(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def machine_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: all but idle and iowait
    return (sum(v[:8]) - v[3] - v[4]) / TICK


def main():
    name, out = sys.argv[1], sys.argv[2]
    want = named(name)
    seen = {}  # (pid, start time) -> CPU ticks at the last sample
    busy0 = machine_busy()
    while want is not None and named(name) == want:
        for p in os.listdir("/proc"):
            if not p.isdigit() or netns(p) != want:
                continue
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # After "(comm)": fields[0] is stat field 3 (state); utime, stime, starttime are 14, 15, 22.
            seen[(p, fields[19])] = int(fields[11]) + int(fields[12])
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{sum(seen.values()) / TICK:.1f} {machine_busy() - busy0:.1f}\n")
        os.replace(tmp, out)
        time.sleep(1)


if __name__ == "__main__":
    main()
