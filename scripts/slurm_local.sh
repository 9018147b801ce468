#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on loopback, to try the launchers and to test them.
#
#   bash scripts/slurm_local.sh start          # munged + slurmctld + slurmd, all state under $SLURM_LOCAL_DIR
#   export SLURM_CONF=$SLURM_LOCAL_DIR/etc/slurm.conf   # every client command (sbatch, squeue, ...) needs it
#   bash scripts/slurm_local.sh wait JOBID [TIMEOUT_S]  # until the job (array) leaves the queue; 0 iff all COMPLETED
#   bash scripts/slurm_local.sh stop           # stops the three daemons by their recorded PIDs
#   bash scripts/slurm_local.sh status
#
# Needs root and the Debian packages (bash .ci/install_slurm.sh): slurmctld slurmd slurm-client munge.
# Settings: SLURM_LOCAL_DIR (default /tmp/projprune-slurm), SLURM_LOCAL_PORT (controller port, default
# 6817; slurmd uses the next one), SLURM_LOCAL_GPUS (fake GPUs so --gres=gpu:N jobs schedule; default 0,
# otherwise submit with SBATCH_GRES=none).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/projprune-slurm}
NODE=$(hostname -s)
CTLD_PORT=${SLURM_LOCAL_PORT:-6817}
GPUS=${SLURM_LOCAL_GPUS:-0}
export SLURM_CONF=$DIR/etc/slurm.conf
SOCKET=$DIR/munge/sock/munge.socket

is_running() {  # PID alive and not a zombie
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ -n $state && $state != Z* ]]
}

retry() {  # retry N_TIMES SLEEP_S command...: until the command succeeds
  local n=$1 pause=$2
  shift 2
  for ((i = 0; i < n; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep "$pause"; done
  return 1
}

write_config() {
  local cpus mem gres_line="" node_gres=""
  cpus=$(nproc)
  # leave 1 GB to the machine, but never ask for less than 512 MB
  mem=$(awk '/MemAvailable/ {m = int($2 / 1024) - 1024; print (m < 512 ? 512 : m)}' /proc/meminfo)
  # slurmd loads a cgroup plugin whatever the task plugin; v2 autodetection wants systemd, so pin v1.
  echo "CgroupPlugin=cgroup/v1" > "$DIR/etc/cgroup.conf"
  rm -f "$DIR/etc/gres.conf"
  if ((GPUS > 0)); then
    gres_line="GresTypes=gpu"
    node_gres="Gres=gpu:$GPUS"
    mkdir -p "$DIR/fakegpu"
    for ((i = 0; i < GPUS; i++)); do
      # slurmd drops GPUs without a device file; a char device like /dev/null passes its check
      [[ -e $DIR/fakegpu/nvidia$i ]] || mknod "$DIR/fakegpu/nvidia$i" c 1 3 2>/dev/null || touch "$DIR/fakegpu/nvidia$i"
      echo "NodeName=$NODE Name=gpu File=$DIR/fakegpu/nvidia$i" >> "$DIR/etc/gres.conf"
    done
  fi
  cat > "$SLURM_CONF" <<EOF
ClusterName=projprune
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# impossible requests fail at submission instead of pending for ever
EnforcePartLimits=ALL
ReturnToService=2
InactiveLimit=0
KillWait=5
Waittime=0
# finished jobs stay visible to 'scontrol show job' for 5 minutes (there is no accounting)
MinJobAge=300
$gres_line
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $node_gres State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
}

adopt_pidfile() {  # the daemon's own PID file wins over $! (in case setsid had to fork)
  [[ -s $2 ]] && cp "$2" "$DIR/run/$1.ours" || true
}

munge_ok() { munge -S "$SOCKET" -n | unmunge -S "$SOCKET"; }
ctld_up() { scontrol ping | grep -q ' is UP'; }
node_ready() { sinfo -h -n "$NODE" -o '%T' | grep -qE '^(idle|mixed|allocated)'; }

fail() {
  echo "slurm_local: $1; logs in $DIR/log" >&2
  tail -n 20 "$DIR/log/$2" >&2 2>/dev/null || true
  stop
  exit 1
}

start() {
  for tool in munged mungekey slurmctld slurmd sbatch; do
    command -v "$tool" >/dev/null || { echo "slurm_local: $tool not found (run .ci/install_slurm.sh)" >&2; exit 3; }
  done
  [[ $(id -u) == 0 ]] || { echo "slurm_local: must run as root (the daemons run as root here)" >&2; exit 3; }
  stop  # a previous cluster in the same folder
  mkdir -p "$DIR"/{etc,state,spool,log,run,munge/sock}
  chmod 711 "$DIR/munge"  # munged insists that everyone may traverse to its socket
  chmod 755 "$DIR/munge/sock"
  [[ -s $DIR/munge/munge.key ]] || mungekey --create --keyfile="$DIR/munge/munge.key" --force
  chmod 600 "$DIR/munge/munge.key"
  write_config

  setsid munged --foreground --key-file="$DIR/munge/munge.key" --socket="$SOCKET" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed" \
    >"$DIR/log/munged.out" 2>&1 </dev/null &
  echo $! > "$DIR/run/munged.ours"
  retry 40 0.25 munge_ok || fail "munged did not start" munged.out
  adopt_pidfile munged "$DIR/munge/munged.pid"

  setsid slurmctld -D -c >"$DIR/log/slurmctld.out" 2>&1 </dev/null &
  echo $! > "$DIR/run/slurmctld.ours"
  retry 60 0.5 ctld_up || fail "slurmctld did not answer" slurmctld.out
  adopt_pidfile slurmctld "$DIR/run/slurmctld.pid"

  setsid slurmd -D -N "$NODE" >"$DIR/log/slurmd.out" 2>&1 </dev/null &
  echo $! > "$DIR/run/slurmd.ours"
  retry 60 0.5 node_ready || fail "node $NODE did not become idle" slurmd.out
  adopt_pidfile slurmd "$DIR/run/slurmd.pid"
  echo "slurm_local: up ($(nproc) CPUs, $GPUS fake GPUs); export SLURM_CONF=$SLURM_CONF"
}

stop() {
  local pid
  for daemon in slurmd slurmctld munged; do
    [[ -s $DIR/run/$daemon.ours ]] || continue
    pid=$(cat "$DIR/run/$daemon.ours")
    if is_running "$pid"; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 40); do is_running "$pid" || break; sleep 0.25; done
      is_running "$pid" && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/run/$daemon.ours"
  done
}

wait_job() {
  local job=$1 limit=${2:-600} began=$SECONDS states
  while [[ -n $(squeue -h -j "$job" 2>/dev/null) ]]; do
    if ((SECONDS - began > limit)); then
      echo "slurm_local: job $job still queued after $limit s" >&2
      squeue -j "$job" >&2
      return 1
    fi
    sleep 0.5
  done
  states=$(scontrol show job -o "$job" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | sort | uniq -c)
  echo "$states"
  [[ -n $states ]] && ! grep -qv 'JobState=COMPLETED' <<<"$states"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  wait) wait_job "${2:?usage: wait JOBID [TIMEOUT_S]}" "${3:-600}" ;;
  status) scontrol ping && sinfo -N -l ;;
  *) echo "usage: $0 start|stop|status|wait JOBID [TIMEOUT_S]" >&2; exit 2 ;;
esac
