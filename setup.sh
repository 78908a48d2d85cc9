#!/usr/bin/env bash
# tunebook setup: a venv that reuses the machine's torch, our pinned packages, a Jupyter kernel, widgets that
# render in the Jupyter server that is already running, and a workspace on the persistent volume.
# Safe to run again: a second run with nothing to do takes seconds.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash setup.sh [--demo | --test] [--help]

  (no flag)  set up: .venv (reusing the machine's torch), packages, the `tunebook` Jupyter kernel,
             widget support in the running Jupyter server, the workspace folder
  --demo     set up, then run the whole pipeline on a tiny offline model (python -m helpers demo)
  --test     set up with test extras, then run the whole test suite; exits with its status

Knobs (environment variables):
  TUNEBOOK_WORKSPACE     workspace root (default /workspace/tunebook if /workspace exists, else ./workspace)
  TUNEBOOK_PYTHON        python used to create .venv (default python3; must be >= 3.10)
  TUNEBOOK_TORCH_SPEC    torch to install when none is importable (default torch==2.13.0)
  TUNEBOOK_SKIP_JUPYTER  1 = do not touch the Jupyter server's environment
  TUNEBOOK_FORCE_INSTALL 1 = reinstall packages even when nothing changed
EOF
}

mode=setup
for arg in "$@"; do
  case "$arg" in
    --demo) mode=demo ;;
    --test) mode=test ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$repo"
venv="$repo/.venv"
py_boot="${TUNEBOOK_PYTHON:-python3}"
torch_spec="${TUNEBOOK_TORCH_SPEC:-torch==2.13.0}"
t0=$SECONDS

say() { printf '\033[1m[tunebook]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[tunebook] error:\033[0m %s\n' "$*" >&2; exit 1; }
trap 'die "setup failed at line $LINENO (command: $BASH_COMMAND). Fix the message above and run bash setup.sh again; it resumes where it stopped."' ERR

# ---- 1. Python and the venv ----------------------------------------------------------------------------
command -v "$py_boot" >/dev/null || die "no '$py_boot' on PATH. Install Python >= 3.10 or set TUNEBOOK_PYTHON."
"$py_boot" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "$("$py_boot" --version 2>&1) is too old: tunebook needs Python >= 3.10 (set TUNEBOOK_PYTHON)."
if [ -n "${COLAB_RELEASE_TAG:-}" ]; then
  # Colab runs notebooks in its own Python and cannot switch kernels: install there, no venv, no kernelspec.
  say "Colab detected: installing into Colab's Python"
  vpy="$(command -v "$py_boot")"; venv="$repo/.colab-state"; mkdir -p "$venv"; TUNEBOOK_SKIP_JUPYTER=1
else
  if [ ! -x "$venv/bin/python" ]; then
    say "creating .venv with --system-site-packages (reuses the image's CUDA torch)"
    "$py_boot" -m venv --system-site-packages "$venv" || die "python -m venv failed: on Debian/Ubuntu run 'apt-get install python3-venv'."
  fi
  vpy="$venv/bin/python"
fi
pip=("$vpy" -m pip --disable-pip-version-check)
# Kernels start in notebooks/ (Jupyter's cwd): a .pth file puts the repo on the path so `import helpers` works.
site_dir="$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
[ "$(cat "$site_dir/tunebook.pth" 2>/dev/null)" = "$repo" ] || echo "$repo" > "$site_dir/tunebook.pth" \
  || die "cannot write $site_dir/tunebook.pth (is that Python's site-packages writable?)"

# ---- 2. torch: keep a working one, install only when none is importable ---------------------------------
torch_version="$("$vpy" - <<'PY' 2>/dev/null || true
import torch
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
print(torch.__version__ if (major, minor) >= (2, 4) else "")
PY
)"
if [ -z "$torch_version" ]; then
  say "no usable torch (>= 2.4) importable: installing $torch_spec"
  "${pip[@]}" install -q "$torch_spec"
  torch_version="$("$vpy" -c 'import torch; print(torch.__version__)')"
fi
# Pin the torch we have so no dependency can swap it for another build.
constraints="$venv/tunebook-constraints.txt"
echo "torch==${torch_version}" > "$constraints"

# ---- 3. Packages (each requirement file is skipped when unchanged since its last successful install) ---
req_files=(requirements.txt)
[ "$mode" = test ] && req_files+=(requirements-test.txt)
stamp_of() { echo "$venv/.tunebook-$(basename "$1" .txt)-$(cat "$1" "$constraints" | sha256sum | cut -c1-16)"; }
todo=()
for f in "${req_files[@]}"; do
  if [ ! -f "$(stamp_of "$f")" ] || [ "${TUNEBOOK_FORCE_INSTALL:-0}" = 1 ]; then todo+=("$f"); fi
done
if [ ${#todo[@]} -eq 0 ]; then
  say "packages up to date (${req_files[*]})"
else
  say "installing ${todo[*]} (torch $torch_version kept)"
  args=()
  for f in "${todo[@]}"; do args+=(-r "$f"); done
  "${pip[@]}" install -q -c "$constraints" "${args[@]}"
  "$vpy" -c 'import diffusers, transformers, safetensors, ipywidgets' \
    || die "packages installed but do not import; see the pip output above."
  for f in "${todo[@]}"; do touch "$(stamp_of "$f")"; done
fi
# On a CUDA machine the WD tagger wants onnxruntime's CUDA build (same version; the two cannot coexist).
ort_gpu="onnxruntime-gpu==$(sed -n 's/^onnxruntime==\([^ ]*\).*/\1/p' requirements.txt)"
if "$vpy" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
   && ! "$vpy" -m pip show -q onnxruntime-gpu >/dev/null 2>&1; then
  say "CUDA GPU found: switching onnxruntime to $ort_gpu for GPU tagging"
  "${pip[@]}" uninstall -q -y onnxruntime || true
  "${pip[@]}" install -q -c "$constraints" "$ort_gpu" || die "installing $ort_gpu failed; the tagger will say what to do."
fi
# spandrel (more upscaler architectures) only where torchvision already imports: see requirements-gpu.txt.
if "$vpy" -c 'import torchvision' >/dev/null 2>&1; then
  gpu_stamp="$(stamp_of requirements-gpu.txt)"
  if [ ! -f "$gpu_stamp" ] || [ "${TUNEBOOK_FORCE_INSTALL:-0}" = 1 ]; then
    say "torchvision imports: installing requirements-gpu.txt (spandrel upscaler architectures)"
    "${pip[@]}" install -q -c "$constraints" -r requirements-gpu.txt \
      && "$vpy" -c 'import spandrel' && touch "$gpu_stamp" \
      || say "spandrel not installed (upscaling still works with tunebook's own ESRGAN loaders)"
  fi
else
  say "no importable torchvision: spandrel skipped (tunebook's own ESRGAN / Real-ESRGAN loaders are used)"
fi
"$vpy" -c "import torch; assert torch.__version__ == '$torch_version'" \
  || die "torch changed during install (expected $torch_version). Report this: a dependency asked for another torch."

# ---- 4. Workspace and caches on the persistent volume ---------------------------------------------------
if [ -n "${TUNEBOOK_WORKSPACE:-}" ]; then ws="$TUNEBOOK_WORKSPACE"
elif [ -d /workspace ] && [ -w /workspace ]; then ws=/workspace/tunebook
else ws="$repo/workspace"; fi
mkdir -p "$ws" || die "cannot create workspace '$ws': set TUNEBOOK_WORKSPACE to a writable folder."
ws="$(cd "$ws" && pwd)"
"$vpy" -m helpers.workspace init "$ws" --remember >/dev/null
# The venv's activate script exports the workspace and a Hugging Face cache inside it (rented boxes have a
# small root disk; /workspace is the volume that persists).
mkdir -p "$venv/bin"; activate_extra="$venv/bin/tunebook-env.sh"
cat > "$activate_extra" <<EOF
export HF_HOME="\${HF_HOME:-$ws/cache/huggingface}"
EOF
[ -f "$venv/bin/activate" ] && { grep -q tunebook-env.sh "$venv/bin/activate" || echo ". \"$activate_extra\"" >> "$venv/bin/activate"; }
# shellcheck disable=SC1090
. "$activate_extra"

# ---- 5. Jupyter: our kernel, and widget support in the server that is already running -------------------
kernel_note=""
if [ "${TUNEBOOK_SKIP_JUPYTER:-0}" != 1 ]; then
  "$vpy" -m helpers.environment register-kernel --workspace "$ws" >/dev/null \
    || die "could not register the 'tunebook' Jupyter kernel (python -m ipykernel install failed)."
  kernel_note="$("$vpy" -m helpers.environment fix-widgets --venv "$venv")" \
    || die "could not prepare widgets for the running Jupyter server: $kernel_note"
fi

# ---- 6. Summary ---------------------------------------------------------------------------------------
"$vpy" -m helpers.environment summary --workspace "$ws"
[ -n "$kernel_note" ] && say "$kernel_note"
say "setup done in $((SECONDS - t0)) s. Next: open notebooks/00_setup.ipynb with the 'tunebook' kernel."

case "$mode" in
  demo) say "running the demo"; exec "$vpy" -m helpers demo ;;
  test)
    say "installing what the browser tests need (Debian chromium, Playwright driver, a separate Jupyter env)"
    bash "$repo/tests/browser/install.sh"
    say "running the test suite"
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    exec "$vpy" -m pytest -q tests ;;
esac
