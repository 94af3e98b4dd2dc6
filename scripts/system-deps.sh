#!/usr/bin/env bash
# Install the system packages courierflow needs (Debian/Ubuntu): RabbitMQ for the local
# broker, Chromium for the browser tests. Idempotent: does nothing when both are there.
set -euo pipefail
need=()
command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || need+=(rabbitmq-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing ${need[*]} with apt-get ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts a system-wide broker on install; courierflow runs its own private node
# when nothing answers on COURIERFLOW_AMQP_URL, so the system one may stay or go.
