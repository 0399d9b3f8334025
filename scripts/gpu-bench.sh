#!/usr/bin/env bash
# Times lstm-lm on wgpu against PyTorch with cuDNN on a GPU machine that has no Rust toolchain
# (the lent NVIDIA machine), in one call.
#
#   scripts/gpu-bench.sh pack [LABEL=BINARY ...]   # here: fill .gpu/ and .gl/
#   scripts/gpu-bench.sh run                       # there: unpack, list adapters, time
#
# `pack` builds the wgpu binary and xtask (or takes built binaries, each under a label, e.g.
# `nofusion=/tmp/lstm-lm-old` to compare builds in the same call), strips and gzips them into
# .gpu/ with the reference trainer and the text, and downloads the Vulkan loader's Debian
# packages into .gl/ (the GPU machine's image has the NVIDIA driver but no loader). Both folders
# are git-ignored through .git/info/exclude; carry them: `carry: [".gl", ".gpu"]`.
#
# `run` unpacks the loader when none is installed, points Vulkan at the NVIDIA driver when its
# manifest is where the lent machines keep it, shows the adapters wgpu sees, then runs
# `xtask bench` with the first packed binary (`main` when packed by default) beside PyTorch,
# then with it once more with `--composed` (Burn's composed ops instead of the LSTM layer
# kernels) on COMPOSED_CONFIGS, then with each other binary (OTHER_ROUNDS rounds, no PyTorch;
# one that fails does not stop the others), and copies the tables to $OUT as they are written
# (a run cut short still returns what it measured).
# Environment overrides, with their defaults: CONFIGS=seed,small,medium,zaremba-large ROUNDS=2
# OTHER_ROUNDS=1 STEPS=50 WARMUP=5 REFERENCE_DEVICE=cuda PYTHON=python3 THREADS=$(nproc)
# COMPOSED_CONFIGS=medium (empty: skip).
set -euo pipefail
cd "$(dirname "$0")/.."

pack() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lstm-lm-target}"
    local binaries=("$@")
    if [ ${#binaries[@]} -eq 0 ]; then
        cargo build --release --locked --features wgpu --bin lstm-lm
        binaries=("main=$CARGO_TARGET_DIR/release/lstm-lm")
    fi
    cargo build --release --locked --manifest-path xtask/Cargo.toml
    for ignored in /.gpu/ /.gl/; do
        grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >>.git/info/exclude
    done
    rm -rf .gpu && mkdir -p .gpu .gl
    for entry in "${binaries[@]}"; do
        local label="${entry%%=*}" path="${entry#*=}"
        if [ "$label" = "$entry" ] || [ ! -x "$path" ]; then
            echo "error: '$entry' is not LABEL=PATH to a built lstm-lm" >&2
            exit 2
        fi
        if "$path" --list-devices 2>&1 | grep 'no GPU support' >/dev/null; then
            echo "error: $path was built without GPU support: build it with" \
                "\`cargo build --release --features wgpu --bin lstm-lm\`" >&2
            exit 2
        fi
        strip -o ".gpu/lstm-lm-$label" "$path"
        gzip -9 ".gpu/lstm-lm-$label"
    done
    strip -o .gpu/xtask "$CARGO_TARGET_DIR/release/xtask"
    # The benchmark text: PTB's validation split (`cargo xtask fetch-data --dataset ptb`), or
    # any PTB-format file named by BENCH_TEXT.
    local text="${BENCH_TEXT:-data/ptb/ptb.valid.txt}"
    if [ ! -f "$text" ]; then
        echo "error: no benchmark text at $text: run \`cargo xtask fetch-data --dataset ptb\`" \
            "or set BENCH_TEXT=FILE" >&2
        exit 2
    fi
    cp reference/torch_lm.py .gpu/
    cp "$text" .gpu/ptb.valid.txt
    if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
        # Debian packages for amd64 whatever this machine is (the device README's recipe).
        local apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64
            -oDir::State::Lists=/tmp/amd64)
        mkdir -p /tmp/amd64/partial
        apt-get "${apt_opts[@]}" update -qq
        (cd .gl && apt-get "${apt_opts[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 \
            libgl1 libglx0 libgles2)
    fi
    local size
    size=$(du -scm .gpu .gl | tail -1 | cut -f1)
    echo "packed $(ls .gpu | tr '\n' ' ')and $(ls .gl | wc -l) packages: ${size} MiB (limit 64 with the tree)"
    [ "$size" -lt 60 ] || { echo "error: too large to carry" >&2; exit 2; }
}

run() {
    local out="${OUT:-/tmp/gpu-bench-out}"
    mkdir -p "$out"
    if ! ldconfig -p | grep 'libvulkan.so.1' >/dev/null; then
        for deb in .gl/*.deb; do dpkg -x "$deb" /; done
        ldconfig
    fi
    local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    if [ -z "${VK_DRIVER_FILES:-}" ] && [ -e "$icd" ]; then
        export VK_DRIVER_FILES="$icd"
        export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    fi
    local dir=/tmp/gpu-bench
    rm -rf "$dir" && mkdir -p "$dir"
    # `main` first: it is the one timed beside PyTorch.
    local labels=()
    [ -e .gpu/lstm-lm-main.gz ] && labels+=(main)
    for packed in .gpu/lstm-lm-*.gz; do
        local label="${packed#.gpu/lstm-lm-}"
        label="${label%.gz}"
        [ "$label" = main ] || labels+=("$label")
    done
    for label in "${labels[@]}"; do
        gunzip -c ".gpu/lstm-lm-$label.gz" >"$dir/lstm-lm-$label"
        chmod +x "$dir/lstm-lm-$label"
    done
    {
        date -u '+%Y-%m-%d %H:%M UTC'
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
        nproc
        "$dir/lstm-lm-${labels[0]}" --list-devices 2>&1 || true
    } | tee "$out/machine.txt"
    bench() {
        local binary="$1" configs="$2"
        shift 2
        .gpu/xtask bench --binary "$dir/lstm-lm-$binary" --device wgpu --configs "$configs" \
            --rounds "${ROUNDS:-2}" --steps "${STEPS:-50}" --warmup "${WARMUP:-5}" \
            --text .gpu/ptb.valid.txt --threads "${THREADS:-$(nproc)}" "$@" 2>&1
    }
    local configs="${CONFIGS:-seed,small,medium,zaremba-large}"
    echo "== lstm-lm-${labels[0]} beside PyTorch =="
    bench "${labels[0]}" "$configs" --python "${PYTHON:-python3}" --reference .gpu/torch_lm.py \
        --reference-device "${REFERENCE_DEVICE:-cuda}" | tee "$out/bench-${labels[0]}.txt"
    if [ -n "${COMPOSED_CONFIGS-medium}" ]; then
        echo "== lstm-lm-${labels[0]} --composed =="
        bench "${labels[0]}" "${COMPOSED_CONFIGS-medium}" --no-reference --composed |
            tee "$out/bench-${labels[0]}-composed.txt"
    fi
    # Last, and allowed to fail: an experimental build that crashes must not cost the tables
    # above.
    local failed=0
    for label in "${labels[@]:1}"; do
        echo "== lstm-lm-$label =="
        ROUNDS="${OTHER_ROUNDS:-1}" bench "$label" "$configs" --no-reference |
            tee "$out/bench-$label.txt" || { failed=1; echo "lstm-lm-$label failed"; }
    done
    return "$failed"
}

case "${1:-}" in
    pack) shift; pack "$@" ;;
    run) run ;;
    *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
