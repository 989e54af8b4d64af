#!/usr/bin/env bash
# Regenerate the `replace` directives in this module's go.mod.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver,
# k8s.io/client-go, ...) at the placeholder version v0.0.0 and replaces them
# with ./staging/src/... paths, which only work inside the kubernetes repo.
# Consumers must replace each of them with the matching published version
# (k8s v1.X.Y  <->  staging v0.X.Y).  This script derives the list from the
# exact go.mod of the chosen k8s.io/kubernetes version.
#
# Second step: go.etcd.io/etcd/server/v3 (newest 3.6.x) may require newer
# versions of shared dependencies (grpc, otel, golang.org/x/..., ...) than
# kubernetes pins.  Minimal version selection would silently build
# kube-apiserver against those untested versions, so for every module that
# kubernetes requires directly and that ends up selected at a different
# version, a `replace` pinning it back to kubernetes' version is added
# (iterated until stable; go.etcd.io/* is left alone because the etcd
# server/client/api modules must stay in lockstep).  Set PIN_K8S_DEPS=0 to
# skip this and keep plain MVS.
#
# Usage: tests/control-plane/gen-replaces.sh [K8S_VERSION]
#   K8S_VERSION defaults to the k8s.io/kubernetes version required in go.mod.
# The script runs `go mod tidy` itself.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

k8s_version="${1:-}"
if [[ -z "$k8s_version" ]]; then
  k8s_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2; exit }' go.mod)"
fi
if [[ ! "$k8s_version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]]; then
  echo "unsupported or missing k8s.io/kubernetes version: '$k8s_version'" >&2
  exit 1
fi
staging_version="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"

k8s_gomod="$(go mod download -json "k8s.io/kubernetes@${k8s_version}" |
  sed -n 's/^[[:space:]]*"GoMod":[[:space:]]*"\(.*\)",\{0,1\}$/\1/p')"
if [[ ! -f "$k8s_gomod" ]]; then
  echo "could not locate go.mod of k8s.io/kubernetes@${k8s_version}" >&2
  exit 1
fi

# Every module that kubernetes requires at the v0.0.0 placeholder is a staging module.
mapfile -t staging < <(
  awk '$2 == "v0.0.0" && $1 ~ /^k8s\.io\// { print $1 }' "$k8s_gomod" | sort -u
)
if [[ ${#staging[@]} -eq 0 ]]; then
  echo "no staging modules found in $k8s_gomod" >&2
  exit 1
fi

# Drop existing replaces of k8s.io/* modules, then add the fresh set.
args=()
while read -r old; do
  [[ -n "$old" ]] && args+=("-dropreplace=$old")
done < <(go mod edit -json | jq -r '.Replace // [] | .[].Old.Path | select(startswith("k8s.io/"))')
for m in "${staging[@]}"; do
  args+=("-replace=${m}=${m}@${staging_version}")
done
go mod edit "${args[@]}" -require="k8s.io/kubernetes@${k8s_version}"

echo "k8s.io/kubernetes ${k8s_version}: replaced ${#staging[@]} staging modules with ${staging_version}" >&2

# Drop previously generated pins of non-k8s.io modules, then re-derive them.
args=()
while read -r old; do
  [[ -n "$old" ]] && args+=("-dropreplace=$old")
done < <(go mod edit -json | jq -r '.Replace // [] | .[].Old.Path | select(startswith("k8s.io/") | not)')
[[ ${#args[@]} -gt 0 ]] && go mod edit "${args[@]}"
go mod tidy

if [[ "${PIN_K8S_DEPS:-1}" == "1" ]]; then
  # path -> version as required by k8s.io/kubernetes (excluding staging and etcd)
  declare -A k8s_pins=()
  while read -r path version; do
    k8s_pins["$path"]="$version"
  done < <(go mod edit -json "$k8s_gomod" |
    jq -r '.Require[] | select(.Version != "v0.0.0") | select(.Path | startswith("go.etcd.io/") | not) | "\(.Path) \(.Version)"')

  for _ in 1 2 3 4 5 6 7 8; do
    args=()
    while read -r path version; do
      want="${k8s_pins[$path]:-}"
      if [[ -n "$want" && "$version" != "$want" ]]; then
        args+=("-replace=${path}=${path}@${want}")
        echo "pinning ${path} ${version} -> ${want} (kubernetes' version)" >&2
      fi
    done < <(go list -m -json all | jq -r 'select(.Main != true) | select(.Replace == null) | "\(.Path) \(.Version)"')
    [[ ${#args[@]} -eq 0 ]] && break
    go mod edit "${args[@]}"
    go mod tidy
  done
fi
