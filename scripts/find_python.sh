# Sourced by compare.sh and demo.sh: PYTHON is the interpreter that has this project installed
# (python3 on PATH unless set, e.g. PYTHON=venv/bin/python for an environment not activated).
PYTHON=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
if ! "$PYTHON" -c 'import transfer, accelerate' 2>/dev/null; then
  echo "error: PYTHON=$PYTHON cannot import this project (transfer, accelerate); run 'pip install -e .' in its environment, or set PYTHON=/path/to/venv/bin/python" >&2
  exit 2
fi
