#!/bin/bash
# A rootfs with the host's Debian python3.11, its standard library and busybox (no network needed),
# for the test image localhost/orchd-test-python (see images.py).
set -euo pipefail
R=${1:?rootfs dir}
PY=/usr/bin/python3.11
rm -rf "$R"; mkdir -p "$R"/{usr/bin,usr/lib,usr/lib64,etc,tmp,work,root}
ln -s usr/bin "$R/bin"; ln -s usr/lib "$R/lib"; ln -s usr/lib64 "$R/lib64"; ln -s usr/bin "$R/sbin"
chmod 1777 "$R/tmp"
cp /bin/busybox "$R/usr/bin/busybox"
for a in sh ls cat echo env sleep id mkdir rm cp mv nc ip ps kill true false; do ln -sf busybox "$R/usr/bin/$a"; done
cp $PY "$R/usr/bin/python3.11"; ln -s python3.11 "$R/usr/bin/python3"; ln -s python3 "$R/usr/bin/python"
# stdlib (skip tests/idle/tkinter)
tar -C / --exclude='usr/lib/python3.11/test' --exclude='usr/lib/python3.11/idlelib' --exclude='usr/lib/python3.11/tkinter' \
    -cf - usr/lib/python3.11 | tar -C "$R" -xf -
# shared libs needed by python and its extension modules (copy real file, add soname symlink next to it)
{ ldd $PY; for so in /usr/lib/python3.11/lib-dynload/*.so; do ldd "$so"; done; } 2>/dev/null \
  | grep -oE '/[^ ]+\.so[^ ]*' | sort -u | while read -r lib; do
      real=$(readlink -f "$lib"); rd=$(dirname "$real"); mkdir -p "$R$rd"
      cp -n "$real" "$R$real"
      base=$(basename "$lib"); if [ "$base" != "$(basename "$real")" ]; then ln -sfn "$(basename "$real")" "$R$rd/$base"; fi
  done
ln -sfn ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$R/usr/lib64/ld-linux-x86-64.so.2"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
mkdir -p "$R/etc/ssl/certs"; cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/" 2>/dev/null || true
