#!/usr/bin/env bash
# Set up the courierflow host on Debian 12: RabbitMQ from Debian's packages, a broker user
# with generated credentials, and the manager as a systemd service. Idempotent: running it
# again repairs or upgrades and changes nothing else. The EC2 user data runs it as root.
#
# Usage: bootstrap.sh [--no-systemd] [--skip-install] [--skip-rabbitmq] [--nat CIDR] [--help]
#   --no-systemd     start RabbitMQ with `rabbitmq-server -detached` and do not enable the
#                    manager unit (auto-selected when /run/systemd/system is absent); the
#                    NAT rules are written but not applied
#   --skip-install   do not build the courierflow venv (CI checks the broker part only)
#   --skip-rabbitmq  the SQS transport: no broker here, only the manager
#   --nat CIDR       forward and masquerade traffic from CIDR (the publisher's subnets reach
#                    SSM through this instance: the template's PrivateAccess nat-instance)
#
# Inputs (environment):
#   AMQP_URL               amqp://USER:PASSWORD@HOST:PORT/VHOST, or
#   AMQP_SECRET_PARAMETER  name of the SSM SecureString that holds it (read with the instance
#                          role; also handed to the manager, which reads it itself)
#   COURIERFLOW_SOURCE     wheel, folder or requirement to pip install (default: courierflow)
#   COURIERFLOW_ENV        extra KEY=VALUE lines for the manager's environment file
#   COURIERFLOW_ROOT       a folder that stands for / (default: /; a rehearsal installs
#                          into a scratch folder, and then systemd is never used); the two
#                          below are under it
#   COURIERFLOW_PREFIX     venv folder (default $COURIERFLOW_ROOT/opt/courierflow)
#   COURIERFLOW_ETC        env file folder (default $COURIERFLOW_ROOT/etc/courierflow)
#   RABBITMQ_BIN           folder of rabbitmq-server/rabbitmqctl (default /usr/sbin; a private
#                          node run as root uses /usr/lib/rabbitmq/bin to keep its HOME)
#   RABBITMQ_CONFIG_FILE   config file without .conf (default /etc/rabbitmq/rabbitmq)
#   RABBITMQ_MANAGEMENT_PORT  console port, bound to 127.0.0.1 only (default 15672)
#   RABBITMQ_NODENAME, RABBITMQ_NODE_PORT, RABBITMQ_MNESIA_BASE, RABBITMQ_LOG_BASE,
#   RABBITMQ_ENABLED_PLUGINS_FILE, ERL_EPMD_PORT, HOME: passed through to RabbitMQ, so a
#   test can run the whole broker part against a private node on a free port.
set -euo pipefail

log() { echo "[bootstrap] $*"; }
die() { echo "[bootstrap] error: $*" >&2; exit 2; }

#: seconds to wait for the broker to answer after starting it
STARTUP_TIMEOUT_S=${STARTUP_TIMEOUT_S:-120}

USE_SYSTEMD=auto
INSTALL_COURIERFLOW=1
SETUP_RABBITMQ=1
NAT_CIDR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-systemd) USE_SYSTEMD=0 ;;
    --skip-install) INSTALL_COURIERFLOW=0 ;;
    --skip-rabbitmq) SETUP_RABBITMQ=0 ;;
    --nat) shift; NAT_CIDR=${1:-}; [ -n "$NAT_CIDR" ] || die "--nat needs a CIDR" ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
if [ -n "${COURIERFLOW_ROOT:-}" ]; then
  USE_SYSTEMD=0  # a scratch root (a rehearsal) never touches the machine's services
elif [ "$USE_SYSTEMD" = auto ]; then
  if [ -d /run/systemd/system ]; then USE_SYSTEMD=1; else USE_SYSTEMD=0; fi
fi

RABBITMQ_BIN=${RABBITMQ_BIN:-/usr/sbin}
export RABBITMQ_CONFIG_FILE=${RABBITMQ_CONFIG_FILE:-/etc/rabbitmq/rabbitmq}
MANAGEMENT_PORT=${RABBITMQ_MANAGEMENT_PORT:-15672}
ROOT=${COURIERFLOW_ROOT:-}
PREFIX=${COURIERFLOW_PREFIX:-$ROOT/opt/courierflow}
ETC=${COURIERFLOW_ETC:-$ROOT/etc/courierflow}
HERE=$(cd "$(dirname "$0")" && pwd)

# run a RabbitMQ CLI tool against our node: rmq TOOL ARGS...
rmq() {
  local tool=$1
  shift
  if [ -n "${RABBITMQ_NODENAME:-}" ]; then
    "$RABBITMQ_BIN/$tool" -n "$RABBITMQ_NODENAME" "$@"
  else
    "$RABBITMQ_BIN/$tool" "$@"
  fi
}
ctl() { rmq rabbitmqctl "$@"; }

# --- credentials -------------------------------------------------------------------------
if [ -z "${AMQP_URL:-}" ] && [ -n "${AMQP_SECRET_PARAMETER:-}" ] && [ "$SETUP_RABBITMQ" = 1 ]; then
  command -v aws >/dev/null || die "the aws CLI is needed to read $AMQP_SECRET_PARAMETER"
  AMQP_URL=$(aws ssm get-parameter --name "$AMQP_SECRET_PARAMETER" --with-decryption \
    --query Parameter.Value --output text)
fi

setup_rabbitmq() {
  [ -n "${AMQP_URL:-}" ] || die "set AMQP_URL or AMQP_SECRET_PARAMETER"
  local rest user password vhost
  rest=${AMQP_URL#amqp://}
  rest=${rest#amqps://}
  user=${rest%%:*}
  rest=${rest#*:}
  password=${rest%%@*}
  vhost=${AMQP_URL##*/}
  vhost=${vhost//%2F//}
  vhost=${vhost:-/}
  case "$AMQP_URL" in
    amqp://*:*@* | amqps://*:*@*) ;;
    *) die "AMQP_URL has no user:password (amqp://USER:PASSWORD@HOST:PORT/VHOST)" ;;
  esac

  if [ ! -x "$RABBITMQ_BIN/rabbitmq-server" ]; then
    log "installing rabbitmq-server from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  fi

  # The management console listens on 127.0.0.1 only: reach it through an SSH tunnel.
  local conf="$RABBITMQ_CONFIG_FILE.conf" wanted changed=0
  mkdir -p "$(dirname "$conf")"
  touch "$conf"
  wanted=$(grep -v '^management\.tcp\.\(ip\|port\)' "$conf" || true)
  wanted=$(printf '%s\nmanagement.tcp.ip = 127.0.0.1\nmanagement.tcp.port = %s\n' \
    "$wanted" "$MANAGEMENT_PORT" | sed '/^$/d')
  if [ "$wanted" != "$(cat "$conf")" ]; then
    printf '%s\n' "$wanted" > "$conf"
    changed=1
  fi

  if ctl status >/dev/null 2>&1; then
    rmq rabbitmq-plugins enable rabbitmq_management >/dev/null
    if [ "$changed" = 1 ] && [ "$USE_SYSTEMD" = 1 ]; then
      log "configuration changed: restarting RabbitMQ"
      systemctl restart rabbitmq-server
    elif [ "$changed" = 1 ]; then
      log "configuration changed: restart the node to apply it"
    fi
  else
    rmq rabbitmq-plugins --offline enable rabbitmq_management >/dev/null
    if [ "$USE_SYSTEMD" = 1 ]; then
      systemctl enable --now rabbitmq-server
    else
      "$RABBITMQ_BIN/rabbitmq-server" -detached
    fi
  fi
  # await_startup fails at once while the node is not yet registered: poll until it answers
  local deadline=$((SECONDS + STARTUP_TIMEOUT_S))
  until ctl await_startup --timeout 10 >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "RabbitMQ did not start within ${STARTUP_TIMEOUT_S}s"
    sleep 1
  done

  # "--" ends rabbitmqctl's options: a password may begin with "-"
  if ctl list_users --silent | awk '{print $1}' | grep -qxF "$user"; then
    ctl change_password -- "$user" "$password" >/dev/null
  else
    ctl add_user -- "$user" "$password" >/dev/null
  fi
  ctl list_vhosts --silent | grep -qxF "$vhost" || ctl add_vhost "$vhost" >/dev/null
  ctl set_permissions -p "$vhost" "$user" ".*" ".*" ".*" >/dev/null
  ctl set_user_tags "$user" management >/dev/null
  if ctl list_users --silent | awk '{print $1}' | grep -qx guest; then
    ctl delete_user guest >/dev/null
  fi
  log "RabbitMQ ready: user $user on vhost $vhost, guest removed, console on 127.0.0.1:$MANAGEMENT_PORT"
}

install_manager() {
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  [ -x "$PREFIX/bin/pip" ] || python3 -m venv "$PREFIX"
  local source=${COURIERFLOW_SOURCE:-courierflow}
  "$PREFIX/bin/pip" install -q --upgrade "$source"
  if [ -f "$source" ]; then
    # a rebuilt wheel keeps its version number: pip calls it installed and keeps the old
    # code, so the package itself (not its dependencies) is installed again
    "$PREFIX/bin/pip" install -q --force-reinstall --no-deps "$source"
  fi

  install -d -m 0750 "$ETC"
  (
    umask 077
    {
      echo "# written by bootstrap.sh; the manager reads it (systemd EnvironmentFile)"
      # botocore reads AWS_DEFAULT_REGION, not AWS_REGION, for a client's region
      echo "AWS_REGION=${AWS_REGION:-us-east-1}"
      echo "AWS_DEFAULT_REGION=${AWS_REGION:-us-east-1}"
      # the broker's secret only with a broker: with SQS there is none (deploy stores no
      # secret), and a manager told to read one would fail at start
      if [ "$SETUP_RABBITMQ" = 0 ]; then
        :
      elif [ -n "${AMQP_SECRET_PARAMETER:-}" ]; then
        echo "COURIERFLOW_AMQP_SECRET=$AMQP_SECRET_PARAMETER"
      elif [ -n "${AMQP_URL:-}" ]; then
        echo "COURIERFLOW_AMQP_URL=$AMQP_URL"
      fi
      if [ -n "${COURIERFLOW_ENV:-}" ]; then printf '%s\n' "$COURIERFLOW_ENV"; fi
    } > "$ETC/manager.env.tmp"
    mv "$ETC/manager.env.tmp" "$ETC/manager.env"
  )

  if [ "$USE_SYSTEMD" = 1 ]; then
    install -m 0644 "$HERE/courierflow-manager.service" /etc/systemd/system/courierflow-manager.service
    systemctl daemon-reload
    systemctl enable courierflow-manager
    systemctl restart courierflow-manager
    log "manager running: journalctl -u courierflow-manager -f"
  else
    log "no systemd: start the manager with: env \$(cat $ETC/manager.env | grep -v '^#') $PREFIX/bin/courierflow manager"
  fi
}

# The publisher in the private subnets reaches SSM through this instance: forward and
# masquerade what comes from NAT_CIDR (the instance's SourceDestCheck is off for this).
setup_nat() {
  local sysctl_conf="$ROOT/etc/sysctl.d/60-courierflow-nat.conf"
  local nft_conf="$ROOT/etc/courierflow/nat.nft"
  mkdir -p "$(dirname "$sysctl_conf")" "$(dirname "$nft_conf")"
  echo "net.ipv4.ip_forward = 1" > "$sysctl_conf"
  local out
  out=$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' | head -1)
  cat > "$nft_conf" <<NFT
table ip courierflow_nat
delete table ip courierflow_nat
table ip courierflow_nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $NAT_CIDR oifname "${out:-eth0}" masquerade
  }
}
NFT
  if [ "$USE_SYSTEMD" = 1 ]; then
    command -v nft >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null
    sysctl -q -p "$sysctl_conf"
    nft -f "$nft_conf"
    log "forwarding $NAT_CIDR through ${out:-eth0} (NAT for the publisher)"
  else
    log "NAT rules written to $nft_conf and $sysctl_conf; not applied without systemd"
  fi
}

if [ -n "$NAT_CIDR" ]; then setup_nat; fi
if [ "$SETUP_RABBITMQ" = 1 ]; then setup_rabbitmq; fi
if [ "$INSTALL_COURIERFLOW" = 1 ]; then install_manager; fi
log "done"
