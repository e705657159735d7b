#!/bin/sh
# How docker-compose.yml starts the gateway (docker/ is mounted at /etc/fuhu). `exec` keeps node as PID 1, so
# it still gets SIGTERM itself; the node flags are the image's CMD (see Dockerfile).
#
# Demo mode, so that `docker compose --profile demo up` needs no .env: when UPSTREAM_API_KEY is not set AND the
# demo profile's simulator answers at DEMO_UPSTREAM_BASE_URL (default: docker/demo.env's UPSTREAM_BASE_URL,
# http://simulator:8090/replicate/v1) with docker/demo.env's key, docker/demo.env's settings fill in whatever is
# unset and the upstream is the simulator. Without the demo profile nothing answers there ("simulator" does not
# resolve), and the gateway exits at once with "invalid configuration: UPSTREAM_API_KEY is required".
# A set UPSTREAM_API_KEY or UPSTREAMS_FILE (from .env or the shell) always means a normal start: demo mode never
# replaces a key.
set -eu
DEMO_ENV=/etc/fuhu/demo.env

if [ -z "${UPSTREAM_API_KEY:-}" ] && [ -z "${UPSTREAMS_FILE:-}" ] && [ -r "$DEMO_ENV" ]; then
  # Prints the demo settings as shell assignments when the simulator answers; exits 1 (printing nothing) if not.
  # Only a refused connection is waited for (the name resolves, so the simulator is still starting), up to 30 s.
  # shellcheck disable=SC2016
  if demo=$(node -e '
    const { readFileSync } = require("node:fs");
    const demo = require("node:util").parseEnv(readFileSync(process.argv[1], "utf8"));
    const base = (process.env.DEMO_UPSTREAM_BASE_URL || demo.UPSTREAM_BASE_URL || "").replace(/\/+$/, "");
    const key = demo.UPSTREAM_API_KEY;
    if (!base || !key) process.exit(1);
    const deadline = Date.now() + 30_000;
    async function answers() {
      for (;;) {
        try {
          const r = await fetch(base + "/predictions", { headers: { authorization: "Bearer " + key }, signal: AbortSignal.timeout(3000) });
          return r.ok;
        } catch (err) {
          if (err?.cause?.code !== "ECONNREFUSED" || Date.now() > deadline) return false;
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    }
    answers().then((ok) => {
      if (!ok) process.exit(1);
      const q = (v) => "\x27" + String(v).replaceAll("\x27", "\x27\\\x27\x27") + "\x27";
      const lines = [];
      for (const [k, v] of Object.entries(demo)) {
        if (!/^[A-Z][A-Z0-9_]*$/.test(k)) continue;
        if (k === "UPSTREAM_BASE_URL") lines.push("export UPSTREAM_BASE_URL=" + q(base));
        else if (k === "UPSTREAM_API_KEY" || !process.env[k]) lines.push("export " + k + "=" + q(v));
      }
      console.error("fuhu-gateway: demo mode: no UPSTREAM_API_KEY is set and the demo simulator answers at " + base +
        ", so docker/demo.env fills in the settings. Never run a real deployment like this.");
      console.log(lines.join("\n"));
    });
  ' "$DEMO_ENV"); then
    eval "$demo"
  fi
fi

exec node --max-semi-space-size=32 dist/server.js
