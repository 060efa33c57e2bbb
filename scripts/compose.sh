# Sourced by the deployment scripts: `compose ARGS` runs the Compose v2 plugin when
# present, else docker-compose v1.
compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose -f "$ROOT/docker-compose.yml" "$@"
  elif command -v docker-compose >/dev/null; then
    docker-compose -f "$ROOT/docker-compose.yml" "$@"
  else
    echo "error: neither 'docker compose' nor 'docker-compose' is installed" >&2
    return 1
  fi
}
