#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for tests/test_slurm_live.py.
#   sudo apt-get install -y slurmctld slurmd slurm-client munge     # once (root)
#   eval "$(scripts/slurm/local_cluster.sh start DIR)"               # prints: export SLURM_CONF=DIR/slurm.conf
#   sbatch / srun / squeue ... ; python train.py -m hydra/launcher=submitit_slurm ...
#   scripts/slurm/local_cluster.sh stop DIR
# Everything (config, state, logs, pid files) lives in DIR; munged runs with its own key and socket there.
# The node is this host with all its CPUs and no GPU; jobs run as the calling user (root in CI / sessions).
set -euo pipefail

cmd="${1:?usage: local_cluster.sh start|stop DIR}"
dir="$(mkdir -p "${2:?usage: local_cluster.sh start|stop DIR}" && cd "$2" && pwd)"
host="$(hostname -s)"
sock="$dir/munge/munge.socket"

stop() {
  for pidfile in "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/munge/munged.pid; do
    [[ -f "$pidfile" ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
}

if [[ "$cmd" == stop ]]; then
  stop
  exit 0
fi
[[ "$cmd" == start ]] || { echo "local_cluster.sh: unknown command '$cmd' (allowed: start, stop)" >&2; exit 2; }
for exe in munged slurmctld slurmd sbatch; do
  command -v "$exe" >/dev/null || { echo "local_cluster.sh: $exe not found (apt-get install slurmctld slurmd slurm-client munge)" >&2; exit 3; }
done

mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
chmod 700 "$dir/munge"
[[ -f "$dir/munge/munge.key" ]] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$sock" --pid-file="$dir/munge/munged.pid" \
  --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"

cpus="$(nproc)"
mem_mb="$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))"
user="$(id -un)"
plugin_dir="/usr/lib/$(uname -m)-linux-gnu/slurm-wlm"
cat > "$dir/slurm.conf" <<EOF
ClusterName=wan2local
SlurmctldHost=$host
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
PluginDir=$plugin_dir
JobRequeue=1
MaxJobCount=1000
InactiveLimit=0
KillWait=10
SchedulerType=sched/backfill
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
  if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 1
done
echo "local_cluster.sh: the node did not come up; logs in $dir/log" >&2
stop
exit 1
