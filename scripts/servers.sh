#!/usr/bin/env bash
# Builds the engine matrix's servers (Redis 4.0 … 7.4, Valkey 7.2 and 8.0) from the source
# tarballs of ../shared/servers/ once, into a cache outside the repository, and reuses them.
#
#   FERRY_SERVERS_SRC    the tarball directory; default ../shared/servers next to the repository,
#                        else /work/shared/servers
#   FERRY_SERVERS_CACHE  where the binaries go; default ~/.cache/ferry/servers
#   FERRY_SERVERS_JOBS   make -j for each build; default 2
#
# Each engine ends up as <cache>/<name>/ holding only <engine>-server, <engine>-cli and a stamp
# (the tarball's sha256 and the build flags); a directory whose stamp matches is reused. The
# engine tests (tests/it/support/engines.rs) look the binaries up there. Debian's redis-server
# (7.0) is not built here: `make deps` installs it.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"

# The engines of the matrix, as their tarballs name them (tests/it/support/engines.rs has the same list).
ENGINES=(
    redis-4.0.14
    redis-5.0.14
    redis-6.0.20
    redis-6.2.16
    redis-7.2.6
    redis-7.4.1
    valkey-7.2.7
    valkey-8.0.1
)
FLAGS="MALLOC=libc"
JOBS="${FERRY_SERVERS_JOBS:-2}"

if [ -n "${FERRY_SERVERS_SRC:-}" ]; then
    src="$FERRY_SERVERS_SRC"
    if [ ! -d "$src" ]; then
        echo "make servers: FERRY_SERVERS_SRC=$src is not a directory; point it at the Redis/Valkey source tarballs (../shared/servers, git archive of each release tag)" >&2
        exit 1
    fi
elif [ -d "$root/../shared/servers" ]; then
    src="$(cd "$root/../shared/servers" && pwd)"
elif [ -d /work/shared/servers ]; then
    src=/work/shared/servers
else
    echo "make servers: no server tarballs: neither $root/../shared/servers nor /work/shared/servers exists; it holds the Redis/Valkey source tarballs (git archive of each release tag, see its README.md); set FERRY_SERVERS_SRC to their directory" >&2
    exit 1
fi

cache="${FERRY_SERVERS_CACHE:-$HOME/.cache/ferry/servers}"
mkdir -p "$cache"

# Two `make servers` at once (two worktrees, CI and a shell) would build the same engine twice
# into the same place: the second waits for the first, then finds everything cached.
if command -v flock >/dev/null; then
    exec 9>"$cache/.lock"
    flock 9
fi

for name in "${ENGINES[@]}"; do
    tarball="$src/$name.tar.gz"
    if [ ! -f "$tarball" ]; then
        echo "make servers: $name.tar.gz is missing from $src, the Redis/Valkey source tarballs (git archive of the $name release tag, see ../shared/servers/README.md)" >&2
        exit 1
    fi
    engine="${name%%-*}" # redis or valkey
    server="$engine-server"
    cli="$engine-cli"
    dest="$cache/$name"
    stamp="source=$name.tar.gz sha256=$(sha256sum "$tarball" | cut -d' ' -f1) flags=$FLAGS"

    if [ -x "$dest/$server" ] && [ -x "$dest/$cli" ] && [ -f "$dest/stamp" ] &&
        [ "$(cat "$dest/stamp")" = "$stamp" ]; then
        echo "$name: cached ($dest/$server)"
        continue
    fi

    started=$SECONDS
    build="$(mktemp -d "$cache/.build-$name.XXXXXX")"
    # Remove the half-built tree however the build ends.
    trap 'rm -rf "$build"' EXIT
    tar xzf "$tarball" -C "$build"
    if ! make -C "$build/$name" -j"$JOBS" $FLAGS >"$build/build.log" 2>&1; then
        echo "make servers: building $name failed (make -j$JOBS $FLAGS in $build/$name); last lines of the build log:" >&2
        tail -n 30 "$build/build.log" >&2
        exit 1
    fi
    for bin in "$server" "$cli"; do
        if [ ! -x "$build/$name/src/$bin" ]; then
            echo "make servers: building $name produced no src/$bin" >&2
            exit 1
        fi
    done
    # Replace the cached copy in one rename, so a reader never sees half an engine.
    mkdir "$build/out"
    cp "$build/$name/src/$server" "$build/$name/src/$cli" "$build/out/"
    echo "$stamp" >"$build/out/stamp"
    rm -rf "$dest"
    mv "$build/out" "$dest"
    rm -rf "$build"
    trap - EXIT
    echo "$name: built in $((SECONDS - started)) s ($dest/$server)"
done
