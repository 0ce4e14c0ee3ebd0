# Sourced by compare.sh and demo.sh: PYTHON is the interpreter that has this project installed
# (python3 on PATH unless set, e.g. PYTHON=venv/bin/python for an environment not activated).
PYTHON=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
# (accelerate found, not imported: importing it takes about 2 s, a planning command needs none of it)
if ! "$PYTHON" -c 'import importlib.util, transfer; assert importlib.util.find_spec("accelerate")' 2>/dev/null; then
  echo "error: PYTHON=$PYTHON cannot import this project (transfer, accelerate); run 'pip install -e .' in its environment, or set PYTHON=/path/to/venv/bin/python" >&2
  exit 2
fi
