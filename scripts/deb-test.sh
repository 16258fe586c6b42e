#!/usr/bin/env bash
# Installs the package `make deb` built and checks what an operator gets from it: the binary on
# the PATH naming its version, commit and features; an example plan that `ferry check` accepts;
# man pages that render; completions where bash, zsh and fish look. Removes the package at the
# end (it replaces an installed ferry package meanwhile). `make deb-test` runs it.
#
# Usage: scripts/deb-test.sh target/debian/ferry_<version>_<arch>.deb   (SUDO=sudo when not root)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
    echo "usage: $0 PACKAGE.deb (exactly one; got: $*)" >&2
    exit 2
fi
deb=$1
SUDO=${SUDO:-}
fail() {
    echo "deb-test: FAIL: $*" >&2
    exit 1
}

echo "deb-test: installing $deb"
$SUDO dpkg -i "$deb" >/dev/null
trap '$SUDO dpkg -r ferry >/dev/null 2>&1 || true' EXIT
dpkg -L ferry >/dev/null

# The binary, on the PATH: `ferry <crate version> (commit <HEAD>, features: …)`.
[ "$(command -v ferry)" = /usr/bin/ferry ] || fail "ferry is not /usr/bin/ferry: $(command -v ferry)"
version_line=$(ferry --version)
echo "deb-test: $version_line"
crate_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
features='features: [a-z0-9, -]+'
[[ "$version_line" =~ ^ferry\ ${crate_version//./\\.}\ \(commit\ ${commit},\ ${features}\)$ ]] ||
    fail "ferry --version: expected 'ferry $crate_version (commit $commit, features: …)', got '$version_line'"

# An example plan, from where the package puts them (it requires common.lua next to it).
examples=/usr/share/doc/ferry/examples
for plan in production.lua staging.lua common.lua demo.lua; do
    [ -f "$examples/$plan" ] || fail "$examples/$plan is missing"
done
ferry check --set SOURCE_URL=redis://127.0.0.1:6379 --set TARGET_URL=redis://127.0.0.1:6380 \
    "$examples/production.lua" >/dev/null || fail "ferry check $examples/production.lua"
echo "deb-test: ferry check $examples/production.lua: ok"

# Man pages: one for ferry and one per command, compressed, rendered by man-db.
man_dir=/usr/share/man/man1
for cmd in ferry ferry-run ferry-check ferry-migrate ferry-monitor ferry-snapshot ferry-verify \
    ferry-backup ferry-completions; do
    page="$man_dir/$cmd.1.gz"
    [ -f "$page" ] || fail "$page is missing"
    text=$(MANWIDTH=100 man -l "$page" 2>/dev/null) || fail "man -l $page failed"
    grep -q "^NAME" <<<"$text" || fail "man -l $page: no NAME section"
    grep -q "^SYNOPSIS" <<<"$text" || fail "man -l $page: no SYNOPSIS section"
done
ls "$man_dir"/ferry-man.1.gz >/dev/null 2>&1 && fail "the hidden 'ferry man' command got a page"
text=$(MANWIDTH=100 man -l "$man_dir/ferry.1.gz")
grep -q "ferry - Move a live Redis dataset" <<<"$text" || fail "ferry(1): NAME does not describe ferry"
grep -q "ferry-migrate(1)" <<<"$text" || fail "ferry(1) does not list ferry-migrate(1)"
text=$(MANWIDTH=100 man -l "$man_dir/ferry-migrate.1.gz")
grep -q -- "--max-monitor-buffer" <<<"$text" || fail "ferry-migrate(1) does not describe --max-monitor-buffer"
[ "$(man -w ferry-migrate 2>/dev/null)" = "$man_dir/ferry-migrate.1.gz" ] ||
    fail "man -w ferry-migrate does not find the page"
echo "deb-test: man pages render ($(ls "$man_dir"/ferry*.1.gz | wc -l) pages)"

# Completions, where each shell looks for them.
bash_completion=/usr/share/bash-completion/completions/ferry
[ -s "$bash_completion" ] || fail "$bash_completion is missing"
bash -c "source $bash_completion && complete -p ferry" >/dev/null ||
    fail "sourcing $bash_completion does not define a completion for ferry"
for file in /usr/share/zsh/vendor-completions/_ferry /usr/share/fish/vendor_completions.d/ferry.fish; do
    [ -s "$file" ] || fail "$file is missing"
done
if command -v zsh >/dev/null; then zsh -n /usr/share/zsh/vendor-completions/_ferry; fi
if command -v fish >/dev/null; then fish -n /usr/share/fish/vendor_completions.d/ferry.fish; fi
echo "deb-test: completions installed for bash, zsh and fish"
echo "deb-test: ok"
