#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the SLURM test tier (tests/test_slurm_cluster.py)
# and for trying the cluster profile without a cluster. Needs root and Debian's packages:
#   apt-get install -y --no-install-recommends slurm-wlm slurmdbd munge mariadb-server
# Writes every file under $SMT_SLURM_DIR (default /tmp/smt-slurm) and links its configuration
# files into /etc/slurm (refusing when another configuration is there); reads /etc/munge/munge.key. Starts munged, MariaDB (private data
# directory, port $SMT_SLURM_DB_PORT), slurmdbd (the accounting that sacct and the executor plugin
# read), slurmctld and slurmd, with one node `localhost` (this machine's CPUs and memory) in two
# partitions: `cpu` (default) and `gpu`, the latter with a `gpu` GRES of empty placeholder files (no
# device: jobs are routed and accounted as GPU jobs, they run on the CPU). Then waits until sinfo shows the
# node idle. Use the cluster with the printed `export SLURM_CONF=...`; stop it with tools/slurm/stop.sh.
set -euo pipefail
DIR=${SMT_SLURM_DIR:-/tmp/smt-slurm}
DB_PORT=${SMT_SLURM_DB_PORT:-3317}
GPUS=${SMT_SLURM_GPUS:-2}             # the count-only gpu GRES of the node
CLUSTER=${SMT_SLURM_CLUSTER:-smtlocal}
ACCOUNT=${SMT_SLURM_ACCOUNT:-smt}     # an account the submitting user belongs to (the plugin checks it)
WAIT=${SMT_SLURM_WAIT:-120}           # seconds to wait for each daemon
t0=$(date +%s)
die() { echo "tools/slurm/start.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (it starts munged, mariadbd and the SLURM daemons)"
for b in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sinfo sacctmgr; do
  command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || die "$b not found: apt-get install -y --no-install-recommends slurm-wlm slurmdbd munge mariadb-server"
done
export PATH=$PATH:/usr/sbin
[ -e "$DIR/slurmctld.pid" ] && die "$DIR holds a running cluster? run tools/slurm/stop.sh first"
mkdir -p "$DIR"/{etc,log,ctld,spool,mysql,run}
chmod 755 "$DIR"
waitfor() {  # seconds, description, command...
  local n=$1 what=$2; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "$what did not come up in $n s (logs: $DIR/log)"
}

# --- munge (authentication between the daemons and the commands)
[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null;
                                  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  waitfor "$WAIT" munged sh -c 'munge -n | unmunge'
fi

# --- MariaDB for slurmdbd (private data directory and port)
if [ ! -d "$DIR/mysql/mysql" ]; then
  mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
    || die "mariadb-install-db failed (log: $DIR/log/mariadb-install.log)"
fi
mariadbd --user=root --datadir="$DIR/mysql" --socket="$DIR/run/mysqld.sock" --port="$DB_PORT" \
  --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadbd.pid" --log-error="$DIR/log/mariadb.log" \
  --innodb-buffer-pool-size=64M --skip-log-bin &
waitfor "$WAIT" MariaDB mariadb --socket="$DIR/run/mysqld.sock" -e 'select 1'
mariadb --socket="$DIR/run/mysqld.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"

# --- configuration
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))   # MB; 10 % left to the OS
cat >"$DIR/etc/slurm.conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
SchedulerType=sched/backfill
SchedulerParameters=defer_batch=0
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
GresTypes=gpu
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:$GPUS State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONF
# Slurm 22.05's gres/gpu drops a GPU without File= ("Removing file-less GPU"), so each GPU is an
# empty placeholder file: nothing opens it (no device cgroup), it only makes the count stick.
mkdir -p "$DIR/dev"; files=()
for i in $(seq 0 $((GPUS - 1))); do : >"$DIR/dev/gpu$i"; files+=("$DIR/dev/gpu$i"); done
: >"$DIR/etc/gres.conf"
for f in "${files[@]}"; do echo "Name=gpu File=$f Count=1" >>"$DIR/etc/gres.conf"; done
cat >"$DIR/etc/cgroup.conf" <<CONF
CgroupPlugin=autodetect
CONF
cat >"$DIR/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
chmod 600 "$DIR/etc/slurmdbd.conf"
# The commands inside a job (srun, run by the executor plugin's job step) read the default
# /etc/slurm/slurm.conf: slurmd does not hand SLURM_CONF to the job ("fetch_config: DNS SRV lookup
# failed"). So the files are linked there, unless another cluster's configuration is in the way.
for f in slurm.conf gres.conf cgroup.conf slurmdbd.conf; do
  if [ -e "/etc/slurm/$f" ] && [ "$(readlink "/etc/slurm/$f")" != "$DIR/etc/$f" ]; then
    case "$(readlink "/etc/slurm/$f")" in
      */etc/"$f") ;;   # a link left by an earlier cluster of this script: replaced
      *) die "/etc/slurm/$f exists and is not this script's: this machine has its own SLURM configuration";;
    esac
  fi
done
mkdir -p /etc/slurm
for f in slurm.conf gres.conf cgroup.conf slurmdbd.conf; do ln -sfn "$DIR/etc/$f" "/etc/slurm/$f"; done
export SLURM_CONF=$DIR/etc/slurm.conf

# --- daemons: slurmdbd, the cluster and account in it, slurmctld, slurmd
slurmdbd
waitfor "$WAIT" slurmdbd sacctmgr -n list cluster
sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=smt-test Organization=smt >/dev/null 2>&1 || true
sacctmgr -i add user "$(id -un)" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null 2>&1 || true
for u in ${SUDO_USER:-}; do sacctmgr -i add user "$u" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null 2>&1 || true; done
slurmctld
waitfor "$WAIT" slurmctld scontrol ping
slurmd -N localhost
waitfor "$WAIT" "node localhost (idle)" sh -c 'sinfo -h -N -o "%N %t" | grep -q "^localhost idle"'
sinfo
echo "tools/slurm/start.sh: cluster $CLUSTER up in $(( $(date +%s) - t0 )) s; account $ACCOUNT; use it with:"
echo "export SLURM_CONF=$SLURM_CONF"
