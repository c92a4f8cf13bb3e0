#!/usr/bin/env python3
"""CPU time of PostgreSQL and smtp-sink on this machine, for bench/send.sh.

  cpu.py snap FILE          record every process's CPU ticks (and each process's
                            reaped children's) into FILE
  cpu.py diff BEFORE AFTER  print "postgres=S smtp-sink=S": seconds of CPU each used
                            between the two snapshots

PostgreSQL's backends are short-lived: one that exits between the snapshots is counted
through the postmaster's total of reaped children (less what it had used before the first
snapshot). Only a server on this machine is seen. Linux /proc only.
"""
import json
import os
import sys

TICK = os.sysconf("SC_CLK_TCK")
NAMES = ("postgres", "smtp-sink")


def snapshot():
    procs = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm not in NAMES:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        # Fields 4 (ppid), 14-17 (utime, stime, cutime, cstime) of proc(5), from field 3 on.
        ppid = int(rest[1])
        own = int(rest[11]) + int(rest[12])
        children = int(rest[13]) + int(rest[14])
        procs[pid] = {"comm": comm, "ppid": ppid, "own": own, "children": children}
    return procs


def diff(before, after):
    used = {name: 0 for name in NAMES}
    for pid, p in after.items():
        used[p["comm"]] += p["own"] - before.get(pid, {"own": 0})["own"]
    # The postmaster: the one postgres process whose parent is not postgres.
    for pid, p in after.items():
        if p["comm"] == "postgres" and after.get(str(p["ppid"]), {}).get("comm") != "postgres":
            if pid in before:
                used["postgres"] += p["children"] - before[pid]["children"]
                gone = [q for qpid, q in before.items()
                        if q["comm"] == "postgres" and q["ppid"] == int(pid) and qpid not in after]
                used["postgres"] -= sum(q["own"] for q in gone)
    return " ".join(f"{name}={used[name] / TICK:.2f}" for name in NAMES)


if __name__ == "__main__":
    if sys.argv[1:2] == ["snap"] and len(sys.argv) == 3:
        with open(sys.argv[2], "w") as f:
            json.dump(snapshot(), f)
    elif sys.argv[1:2] == ["diff"] and len(sys.argv) == 4:
        with open(sys.argv[2]) as a, open(sys.argv[3]) as b:
            print(diff(json.load(a), json.load(b)))
    else:
        sys.exit(__doc__)
