#!/usr/bin/env bash
# Set up the courierflow broker + manager host (Debian 12). Idempotent: run it again to
# repair or upgrade. Used by the EC2 instance's user data; also runs by hand as root.
#
# Inputs (environment):
#   AMQP_URL                 amqp://USER:PASSWORD@HOST:5672/VHOST, or
#   AMQP_SECRET_PARAMETER    name of an SSM SecureString holding that URL (read with the instance role)
#   COURIERFLOW_SOURCE       wheel, directory or pip requirement for courierflow (default: courierflow)
#   COURIERFLOW_LEDGER_URL   e.g. dynamodb://TABLE (written to the manager's environment)
#   SKIP_COURIERFLOW=1       only set up RabbitMQ (CI checks the broker part this way)
#   RABBITMQCTL              rabbitmqctl command (CI points it at a private node)
set -euo pipefail

log() { echo "[bootstrap] $*"; }
RABBITMQCTL=${RABBITMQCTL:-rabbitmqctl}
HAS_SYSTEMD=0
[ -d /run/systemd/system ] && HAS_SYSTEMD=1

# --- credentials --------------------------------------------------------------------------
if [ -z "${AMQP_URL:-}" ] && [ -n "${AMQP_SECRET_PARAMETER:-}" ]; then
  AMQP_URL=$(aws ssm get-parameter --name "$AMQP_SECRET_PARAMETER" --with-decryption \
    --query Parameter.Value --output text)
fi
[ -n "${AMQP_URL:-}" ] || { echo "set AMQP_URL or AMQP_SECRET_PARAMETER" >&2; exit 2; }
rest=${AMQP_URL#amqp://}
AMQP_USER=${rest%%:*}
rest=${rest#*:}
AMQP_PASSWORD=${rest%%@*}
AMQP_VHOST=${AMQP_URL##*/}
AMQP_VHOST=${AMQP_VHOST:-/}

# --- RabbitMQ from Debian's packages --------------------------------------------------------
if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
  log "installing rabbitmq-server"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
if [ "${SKIP_SYSTEM_CONFIG:-0}" != 1 ]; then
  # management console on localhost only (reach it through an SSH tunnel)
  mkdir -p /etc/rabbitmq
  grep -q "^management.tcp.ip" /etc/rabbitmq/rabbitmq.conf 2>/dev/null \
    || echo "management.tcp.ip = 127.0.0.1" >> /etc/rabbitmq/rabbitmq.conf
  rabbitmq-plugins --offline enable rabbitmq_management >/dev/null
  if [ "$HAS_SYSTEMD" = 1 ]; then
    systemctl enable --now rabbitmq-server
  elif ! $RABBITMQCTL status >/dev/null 2>&1; then
    rabbitmq-server -detached
  fi
fi
for _ in $(seq 1 60); do $RABBITMQCTL await_startup >/dev/null 2>&1 && break; sleep 2; done

# --- user, vhost, no guest ----------------------------------------------------------------
if $RABBITMQCTL list_users --silent | awk '{print $1}' | grep -qx "$AMQP_USER"; then
  $RABBITMQCTL change_password "$AMQP_USER" "$AMQP_PASSWORD" >/dev/null
else
  $RABBITMQCTL add_user "$AMQP_USER" "$AMQP_PASSWORD" >/dev/null
fi
$RABBITMQCTL list_vhosts --silent | grep -qx "$AMQP_VHOST" || $RABBITMQCTL add_vhost "$AMQP_VHOST" >/dev/null
$RABBITMQCTL set_permissions -p "$AMQP_VHOST" "$AMQP_USER" ".*" ".*" ".*" >/dev/null
if $RABBITMQCTL list_users --silent | awk '{print $1}' | grep -qx guest; then
  $RABBITMQCTL delete_user guest >/dev/null
fi
log "RabbitMQ ready: user $AMQP_USER on vhost $AMQP_VHOST, guest removed"

[ "${SKIP_COURIERFLOW:-0}" = 1 ] && exit 0

# --- courierflow and the manager service ------------------------------------------------------
command -v python3 >/dev/null || { apt-get update -qq; apt-get install -y -qq python3; }
apt-get install -y -qq python3-venv >/dev/null 2>&1 || true
python3 -m venv /opt/courierflow
/opt/courierflow/bin/pip install -q -U pip
/opt/courierflow/bin/pip install -q "${COURIERFLOW_SOURCE:-courierflow}"
install -d -m 0750 /etc/courierflow
umask 077
cat > /etc/courierflow/manager.env <<ENV
COURIERFLOW_AMQP_SECRET=${AMQP_SECRET_PARAMETER:-}
COURIERFLOW_LEDGER_URL=${COURIERFLOW_LEDGER_URL:-}
AWS_REGION=${AWS_REGION:-us-east-1}
ENV
[ -z "${AMQP_SECRET_PARAMETER:-}" ] && echo "COURIERFLOW_AMQP_URL=$AMQP_URL" >> /etc/courierflow/manager.env
install -m 0644 "$(dirname "$0")/courierflow-manager.service" /etc/systemd/system/courierflow-manager.service 2>/dev/null \
  || cp /opt/courierflow/share/courierflow-manager.service /etc/systemd/system/ 2>/dev/null || true
if [ "$HAS_SYSTEMD" = 1 ]; then
  systemctl daemon-reload
  systemctl enable --now courierflow-manager
  log "manager running: journalctl -u courierflow-manager -f"
else
  log "no systemd here: start the manager with /opt/courierflow/bin/courierflow manager"
fi
