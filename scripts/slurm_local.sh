#!/usr/bin/env bash
# A SLURM cluster of one node on this machine, with accounting, to try EXECUTOR=slurm and to test it:
#
#   sudo scripts/slurm_local.sh start     # prints the line to run: export SLURM_CONF=...
#   EXECUTOR=slurm CLUSTER='gpus_per_run=0 cpus_per_run=1' SLURM_CONF=/tmp/transfer-slurm/slurm.conf scripts/compare.sh ...
#   sudo scripts/slurm_local.sh stop
#
# Partitions: `debug` (the default) and `urgent`, of a higher priority tier: a job in urgent that
# needs the cores of a job in debug preempts it (PreemptType=preempt/partition_prio,
# PreemptMode=REQUEUE, GraceTime=$GRACE_S, 30 s: SIGCONT and SIGTERM to every process of the job,
# SIGKILL after the grace time, then the job is queued again), as on a cluster with a scavenger or
# low-priority partition. ACCOUNTING=none starts no slurmdbd or MariaDB (sacct fails), as on the
# many lab clusters that keep none.
#
# Needs root and Debian's packages (what .ci/run installs):
#   apt-get install munge slurmctld slurmd slurm-client slurmdbd mariadb-server
# Everything it writes is in STATE (default /tmp/transfer-slurm): the configuration, the daemons'
# logs, pid files and spool, MariaDB's data. Without accounting (slurmdbd), sacct knows no job and
# the states submitit reads stay UNKNOWN, so it is started too. Requeue delays are short
# (AuthInfo=cred_expire=10, sched_interval=5), so a preempted job runs again within seconds.
set -euo pipefail
STATE=${STATE:-/tmp/transfer-slurm}
ACCOUNTING=${ACCOUNTING:-slurmdbd}  # or none
GRACE_S=${GRACE_S:-30}
NODE=$(hostname)
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc honours OMP_NUM_THREADS, which the test suite sets
MEMORY_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
export SLURM_CONF="$STATE/slurm.conf"

die() { echo "error: $*" >&2; exit 2; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $(( seconds * 5 ))); do
    if "$@" > /dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what did not come up within $seconds s; its log is in $STATE"
}

start() {
  [ "$(id -u)" = 0 ] || die "slurm_local.sh start needs root (it starts munge, MariaDB and SLURM's daemons)"
  case "$ACCOUNTING" in slurmdbd|none) ;; *) die "ACCOUNTING=$ACCOUNTING is invalid; use slurmdbd (the default) or none";; esac
  for program in munged mariadbd slurmdbd slurmctld slurmd sbatch sacctmgr; do
    command -v "$program" > /dev/null || die "$program is not installed; apt-get install munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
  done
  stop quietly
  for daemon in slurmctld slurmd slurmdbd; do  # another cluster's, or one whose STATE is gone: its ports are taken
    if pid=$(pgrep -x "$daemon"); then
      die "$daemon is already running (pid $(echo $pid)), not from STATE=$STATE; stop it (or run with its STATE) first"
    fi
  done
  rm -rf "$STATE"  # a fresh cluster each time: no jobs, accounts or data of an earlier one
  mkdir -p "$STATE"/{spool,state,log,run,munge,mysql,mysqlrun}
  chmod 755 "$STATE"

  # munge, on its default socket (SLURM's clients look for it there): a running one is used as it is
  if ! munge -n > /dev/null 2>&1; then
    install -o munge -g munge -m 755 -d /run/munge
    munged --force --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" \
           --seed-file="$STATE/munge/munged.seed"
    wait_for 20 munge munge -n
  fi

  if [ "$ACCOUNTING" = slurmdbd ]; then
    # MariaDB for slurmdbd, as root: STATE may be below a folder only root can enter (a test's temp folder)
    mysql_install_db --user=root --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
        > "$STATE/log/mysql_install.log" 2>&1 || die "mysql_install_db failed; see $STATE/log/mysql_install.log"
    (setsid mariadbd --user=root --datadir="$STATE/mysql" --socket="$STATE/mysqlrun/mysql.sock" --pid-file="$STATE/mysqlrun/mysql.pid" \
        --skip-networking=0 --bind-address=127.0.0.1 --port=3307 > "$STATE/log/mariadb.log" 2>&1 &)
    wait_for 60 MariaDB mysql --socket="$STATE/mysqlrun/mysql.sock" -e "select 1"
    mysql --socket="$STATE/mysqlrun/mysql.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
      CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

    cat > "$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurm
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
EOF
    chmod 600 "$STATE/slurmdbd.conf"
  fi

  cat > "$STATE/slurm.conf" <<EOF
ClusterName=transfer
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
$(if [ "$ACCOUNTING" = slurmdbd ]; then
  printf 'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStoragePort=6819\n'
else
  printf 'AccountingStorageType=accounting_storage/none\n'
fi)
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=30
MinJobAge=300
MaxArraySize=1001
NodeName=$NODE CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$(( MEMORY_MB / CPUS )) PriorityTier=1 PreemptMode=REQUEUE GraceTime=$GRACE_S
PartitionName=urgent Nodes=$NODE MaxTime=INFINITE State=UP DefMemPerCPU=$(( MEMORY_MB / CPUS )) PriorityTier=10 PreemptMode=OFF
EOF

  if [ "$ACCOUNTING" = slurmdbd ]; then
    slurmdbd
    wait_for 30 slurmdbd sacctmgr -i list cluster
    sacctmgr -i add cluster transfer > /dev/null 2>&1 || true
  fi
  slurmctld
  slurmd
  wait_for 60 "the node" sh -c "sinfo -h -N -o %T | grep -qx idle"
  echo "SLURM is up (one node, $CPUS CPUs, accounting: $ACCOUNTING): export SLURM_CONF=$SLURM_CONF"
}

stop() {
  if [ -f "$STATE/run/slurmctld.pid" ] && scancel --user "$(id -un)" 2> /dev/null; then  # jobs first: their steps outlive slurmd
    for _ in $(seq 100); do
      [ -z "$(squeue -h -o %i 2> /dev/null)" ] && break
      sleep 0.2
    done
  fi
  local pids=()
  for pid_file in run/slurmd run/slurmctld run/slurmdbd mysqlrun/mysql munge/munged; do
    if [ -f "$STATE/$pid_file.pid" ]; then
      pids+=("$(cat "$STATE/$pid_file.pid")")
    fi
  done
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2> /dev/null || true
    for _ in $(seq 100); do  # until the daemons are gone (their ports free for the next start)
      alive=0
      for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2> /dev/null; then alive=1; fi
      done
      [ $alive = 1 ] || break
      sleep 0.2
    done
    kill -9 "${pids[@]}" 2> /dev/null || true
  fi
  rm -f "$STATE"/run/*.pid "$STATE"/mysqlrun/*.pid "$STATE"/munge/*.pid
  [ "${1:-}" = quietly ] || echo "SLURM stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: scripts/slurm_local.sh start|stop (STATE=$STATE)" >&2; exit 2 ;;
esac
