# Source at the start of a call on a lent GPU machine, which has PyTorch but no network:
#
#   source training/recipes/device-setup.sh && OD="python3 -m OrthoDiffusionLib" bash training/recipes/gpu-session.sh ...
#
# It installs the wheels carried in .whl/ (SimpleITK, pydicom, MONAI: what the machine's image lacks) and this
# checkout (no dependencies, no build isolation, nothing fetched) into /tmp/site, and puts /tmp/site on PYTHONPATH and
# its bin/ on PATH. Preparing .whl/ (here, once) and the whole call are in docs/gpu-session.md.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
        --target /tmp/site . \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH" \
    && python3 -c "import SimpleITK, pydicom, monai, OrthoDiffusionLib; print('device setup: ok')"
